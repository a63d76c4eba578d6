//! The levels above micro-clusters: topics group micro-clusters, domains group topics.
//!
//! A level is built by weighted agglomeration of the level below's centroids: items are taken
//! largest first, each joins the most similar group whose centroid is within the level's cosine
//! threshold or starts a new one, and a few refinement rounds then move every item to its nearest
//! group centroid (weighted k-means seeded by that pass). Largest-first makes the result depend on
//! the state, not on arrival order, and weighting by conversations keeps one big cluster from
//! being outvoted by a cloud of singletons.
//!
//! A rebuild reads a copy of what it needs ([`HierarchyInputs`]) and returns a [`HierarchyBuild`],
//! so it can run on its own thread (`hierarchy_job.rs`) while the cluster stage goes on.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::ctfidf::{ClassTerms, TermWeights};
use super::index::exact::ExactScanIndex;
use super::index::CentroidIndex;
use super::micro::ReservoirItem;
use super::ClusterId;
use crate::config::HierarchySettings;

/// One item of a level: an id, its unit centroid, and its weight (conversations).
pub struct LevelItem<'a> {
    pub id: u64,
    pub centroid: &'a [f32],
    pub weight: f64,
}

/// The groups of one level.
#[derive(Debug, Clone)]
pub struct Grouping {
    /// Item id → group index.
    pub group_of: BTreeMap<u64, u32>,
    /// Unit centroids of the groups, one row per group.
    pub centroids: Vec<Vec<f32>>,
    pub weights: Vec<f64>,
}

/// Groups `items` at cosine `threshold`, then refines for `rounds` rounds.
///
/// The nearest-group searches go through the exact index, so from a few hundred groups on they
/// are screened in int8 first (`index/screen.rs`); the answers, ties included, are those of the
/// plain scan, which the tests check by running both.
pub fn agglomerate(items: &[LevelItem<'_>], threshold: f32, rounds: usize) -> Grouping {
    agglomerate_with(items, threshold, rounds, true)
}

/// [`agglomerate`], with the int8 screen switched off when `screen` is false (the baseline
/// `bench clustering --hierarchy` measures against).
pub(crate) fn agglomerate_with(
    items: &[LevelItem<'_>],
    threshold: f32,
    rounds: usize,
    screen: bool,
) -> Grouping {
    let mut order: Vec<usize> = (0..items.len()).collect();
    // Largest first; ties by id so the result is reproducible.
    order.sort_by(|&a, &b| {
        items[b]
            .weight
            .total_cmp(&items[a].weight)
            .then(items[a].id.cmp(&items[b].id))
    });
    let dimension = items.first().map_or(0, |i| i.centroid.len());
    let mut sums: Vec<Vec<f64>> = Vec::new();
    let mut centroids: Vec<Vec<f32>> = Vec::new();
    let mut assignment = vec![0u32; items.len()];
    // Group g is row g of the index (rows are only ever appended), so ties between equally
    // similar groups go to the lower index, as they always have.
    let mut index = ExactScanIndex::new(dimension).with_screen(screen);
    for &i in &order {
        let item = &items[i];
        let group = match index.scan(item.centroid, None) {
            Some((g, sim)) if sim >= threshold => g as usize,
            _ => {
                sums.push(vec![0.0; dimension]);
                centroids.push(item.centroid.to_vec());
                sums.len() - 1
            }
        };
        for (s, x) in sums[group].iter_mut().zip(item.centroid) {
            *s += item.weight * f64::from(*x);
        }
        centroids[group] = unit(&sums[group]);
        index.upsert(group as ClusterId, &centroids[group]);
        assignment[i] = group as u32;
    }
    for _ in 0..rounds {
        let mut changed = false;
        let mut index = ExactScanIndex::new(dimension).with_screen(screen);
        for (g, c) in centroids.iter().enumerate() {
            index.upsert(g as ClusterId, c);
        }
        for (i, item) in items.iter().enumerate() {
            if let Some((g, _)) = index.scan(item.centroid, None) {
                if assignment[i] != g as u32 {
                    assignment[i] = g as u32;
                    changed = true;
                }
            }
        }
        sums.iter_mut()
            .for_each(|s| s.iter_mut().for_each(|x| *x = 0.0));
        for (i, item) in items.iter().enumerate() {
            for (s, x) in sums[assignment[i] as usize].iter_mut().zip(item.centroid) {
                *s += item.weight * f64::from(*x);
            }
        }
        for (c, s) in centroids.iter_mut().zip(&sums) {
            if s.iter().any(|x| *x != 0.0) {
                *c = unit(s);
            }
        }
        if !changed {
            break;
        }
    }
    // Drop groups the refinement emptied and renumber densely.
    let mut weights = vec![0.0; centroids.len()];
    for (i, item) in items.iter().enumerate() {
        weights[assignment[i] as usize] += item.weight;
    }
    let mut renumber = vec![u32::MAX; centroids.len()];
    let mut kept_centroids = Vec::new();
    let mut kept_weights = Vec::new();
    for (g, w) in weights.iter().enumerate() {
        if *w > 0.0 {
            renumber[g] = kept_centroids.len() as u32;
            kept_centroids.push(centroids[g].clone());
            kept_weights.push(*w);
        }
    }
    Grouping {
        group_of: items
            .iter()
            .zip(&assignment)
            .map(|(item, g)| (item.id, renumber[*g as usize]))
            .collect(),
        centroids: kept_centroids,
        weights: kept_weights,
    }
}

/// Topic ids that survive rebuilds: each rebuild's groups inherit the id of the previous topic
/// they share the most weight with (each old id goes to at most one new group, best overlap
/// first); unmatched groups get fresh ids. Engineers can then follow "topic 17" across rebuilds.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct TopicTracker {
    topic_of: BTreeMap<ClusterId, u64>,
    next_id: u64,
    rebuilds: u64,
}

impl TopicTracker {
    /// The topic of micro-cluster `id` as of the last rebuild (`None` for clusters born since).
    pub fn topic_of(&self, id: ClusterId) -> Option<u64> {
        self.topic_of.get(&id).copied()
    }

    pub fn topics(&self) -> usize {
        let mut ids: Vec<u64> = self.topic_of.values().copied().collect();
        ids.sort_unstable();
        ids.dedup();
        ids.len()
    }

    pub fn rebuilds(&self) -> u64 {
        self.rebuilds
    }

    /// Regroups `items` (micro-clusters) and carries topic ids over from the previous grouping.
    pub fn rebuild(&mut self, items: &[LevelItem<'_>], threshold: f32, rounds: usize) {
        let grouping = agglomerate(items, threshold, rounds);
        let weight_of: BTreeMap<u64, f64> = items.iter().map(|i| (i.id, i.weight)).collect();
        // Weight shared by (new group, old topic).
        let mut overlap: BTreeMap<(u32, u64), f64> = BTreeMap::new();
        for (id, group) in &grouping.group_of {
            if let Some(old) = self.topic_of.get(id) {
                *overlap.entry((*group, *old)).or_default() += weight_of[id];
            }
        }
        let mut pairs: Vec<((u32, u64), f64)> = overlap.into_iter().collect();
        pairs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let mut id_of_group: BTreeMap<u32, u64> = BTreeMap::new();
        let mut taken: std::collections::BTreeSet<u64> = Default::default();
        for ((group, old), _) in pairs {
            if !id_of_group.contains_key(&group) && taken.insert(old) {
                id_of_group.insert(group, old);
            }
        }
        let mut groups: Vec<u32> = grouping.group_of.values().copied().collect();
        groups.sort_unstable();
        groups.dedup();
        for group in groups {
            id_of_group.entry(group).or_insert_with(|| {
                self.next_id += 1;
                self.next_id
            });
        }
        self.topic_of = grouping
            .group_of
            .iter()
            .map(|(id, group)| (*id, id_of_group[group]))
            .collect();
        self.rebuilds += 1;
    }
}

/// What a hierarchy rebuild reads from the cluster state, copied out at the rebuild point so
/// the build can run on another thread while the cluster stage goes on.
pub struct HierarchyInputs {
    pub settings: HierarchySettings,
    pub dimension: usize,
    /// Live micro-clusters in id order: their (centred) unit vector, weight (conversations) and
    /// reservoir of summaries (for the c-TF-IDF labels).
    pub members: Vec<HierarchyMember>,
    /// The levels as of the previous rebuild, whose ids the new groups inherit.
    pub topics: TopicTracker,
    pub domains: TopicTracker,
}

pub struct HierarchyMember {
    pub id: ClusterId,
    pub vector: Vec<f32>,
    pub weight: f64,
    pub reservoir: Vec<ReservoirItem>,
}

/// The result of one rebuild: both levels, the term weights fitted over the topics, and the
/// candidate labels they gave. A function of [`HierarchyInputs`] alone, so a replay (or a
/// restart from a snapshot holding a finished build) applies exactly the same hierarchy.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HierarchyBuild {
    pub topics: TopicTracker,
    pub domains: TopicTracker,
    pub term_weights: TermWeights,
    pub topic_labels: BTreeMap<u64, String>,
    pub domain_labels: BTreeMap<u64, String>,
    /// Seconds the build took (reported as the `hierarchy` stage; not part of the result).
    #[serde(skip)]
    pub took_secs: f64,
}

impl HierarchyInputs {
    /// Rebuilds topics (groups of micro-clusters) and domains (groups of topics), carrying ids
    /// over from the previous rebuild, then refits c-TF-IDF over the topics and labels every
    /// topic and domain.
    pub fn build(self) -> HierarchyBuild {
        let started = std::time::Instant::now();
        let HierarchyInputs {
            settings: h,
            dimension,
            members,
            mut topics,
            mut domains,
        } = self;
        let items: Vec<LevelItem<'_>> = members
            .iter()
            .map(|m| LevelItem {
                id: m.id,
                centroid: &m.vector,
                weight: m.weight,
            })
            .collect();
        topics.rebuild(&items, h.topic_threshold, h.refine_rounds);

        // Topic centroids: the conversation-weighted mean of their micro-clusters' centroids.
        let mut topic_sums: BTreeMap<u64, (Vec<f64>, f64)> = BTreeMap::new();
        let mut topic_terms: BTreeMap<u64, ClassTerms> = BTreeMap::new();
        for m in &members {
            let Some(topic) = topics.topic_of(m.id) else {
                continue;
            };
            let (sum, weight) = topic_sums
                .entry(topic)
                .or_insert_with(|| (vec![0.0; dimension], 0.0));
            for (s, x) in sum.iter_mut().zip(&m.vector) {
                *s += m.weight * f64::from(*x);
            }
            *weight += m.weight;
            let terms = topic_terms.entry(topic).or_default();
            m.reservoir.iter().for_each(|item| terms.add(item));
        }
        let topic_centroids: Vec<(u64, Vec<f32>, f64)> = topic_sums
            .into_iter()
            .map(|(id, (sum, weight))| (id, unit(&sum), weight))
            .collect();
        let topic_items: Vec<LevelItem<'_>> = topic_centroids
            .iter()
            .map(|(id, centroid, weight)| LevelItem {
                id: *id,
                centroid,
                weight: *weight,
            })
            .collect();
        domains.rebuild(&topic_items, h.domain_threshold, h.refine_rounds);

        let classes: Vec<ClassTerms> = topic_terms.into_values().collect();
        let term_weights = TermWeights::fit(&classes);
        let topic_labels = topic_centroids
            .iter()
            .zip(&classes)
            .map(|((id, _, _), class)| (*id, term_weights.label(class)))
            .collect();
        let mut domain_terms: BTreeMap<u64, ClassTerms> = BTreeMap::new();
        for m in &members {
            if let Some(domain) = topics.topic_of(m.id).and_then(|t| domains.topic_of(t)) {
                let terms = domain_terms.entry(domain).or_default();
                m.reservoir.iter().for_each(|item| terms.add(item));
            }
        }
        let domain_labels = domain_terms
            .iter()
            .map(|(id, class)| (*id, term_weights.label(class)))
            .collect();
        HierarchyBuild {
            topics,
            domains,
            term_weights,
            topic_labels,
            domain_labels,
            took_secs: started.elapsed().as_secs_f64(),
        }
    }
}

/// `sum` normalised to unit length, as `f32`.
pub(crate) fn unit(sum: &[f64]) -> Vec<f32> {
    let norm = sum
        .iter()
        .map(|x| x * x)
        .sum::<f64>()
        .sqrt()
        .max(f64::MIN_POSITIVE);
    sum.iter().map(|x| (x / norm) as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::index::tests::unit as unit_f32;

    /// Enough groups for the int8 screen to engage (it screens from 512 rows), and weights with
    /// ties, so that any difference in the nearest group or in tie-breaking would show.
    #[test]
    fn the_screened_search_groups_exactly_as_the_plain_scan() {
        let drawn = crate::bench::synthetic::TopicSpace::new(900, 64, 0.8, 5).level_items(2_500, 5);
        let items: Vec<LevelItem<'_>> = drawn.iter().map(|i| i.as_level_item()).collect();
        let screened = agglomerate_with(&items, 0.5, 5, true);
        let plain = agglomerate_with(&items, 0.5, 5, false);
        // Far fewer groups than items (so items do join groups), yet enough to be screened.
        assert!(
            (600..2_000).contains(&plain.centroids.len()),
            "{} groups: the screen was not exercised",
            plain.centroids.len()
        );
        assert_eq!(screened.group_of, plain.group_of);
        assert_eq!(screened.centroids, plain.centroids);
        assert_eq!(screened.weights, plain.weights);
    }

    #[test]
    fn near_items_share_a_group_and_far_ones_do_not() {
        let a1 = unit_f32(&[1.0, 0.1, 0.0]);
        let a2 = unit_f32(&[1.0, 0.0, 0.1]);
        let b = unit_f32(&[0.0, 1.0, 0.0]);
        let items = [
            LevelItem {
                id: 10,
                centroid: &a1,
                weight: 5.0,
            },
            LevelItem {
                id: 11,
                centroid: &a2,
                weight: 1.0,
            },
            LevelItem {
                id: 12,
                centroid: &b,
                weight: 3.0,
            },
        ];
        let g = agglomerate(&items, 0.8, 3);
        assert_eq!(g.group_of[&10], g.group_of[&11]);
        assert_ne!(g.group_of[&10], g.group_of[&12]);
        assert_eq!(g.centroids.len(), 2);
        assert_eq!(g.weights.iter().sum::<f64>(), 9.0);
    }

    #[test]
    fn topic_ids_survive_a_rebuild_and_new_topics_get_new_ids() {
        let a1 = unit_f32(&[1.0, 0.1, 0.0]);
        let a2 = unit_f32(&[1.0, 0.0, 0.1]);
        let b = unit_f32(&[0.0, 1.0, 0.0]);
        let c = unit_f32(&[0.0, 0.0, 1.0]);
        let mut tracker = TopicTracker::default();
        tracker.rebuild(
            &[
                LevelItem {
                    id: 1,
                    centroid: &a1,
                    weight: 5.0,
                },
                LevelItem {
                    id: 2,
                    centroid: &b,
                    weight: 3.0,
                },
            ],
            0.8,
            2,
        );
        let topic_a = tracker.topic_of(1).unwrap();
        let topic_b = tracker.topic_of(2).unwrap();
        tracker.rebuild(
            &[
                LevelItem {
                    id: 7,
                    centroid: &c,
                    weight: 9.0,
                },
                LevelItem {
                    id: 2,
                    centroid: &b,
                    weight: 3.0,
                },
                LevelItem {
                    id: 3,
                    centroid: &a2,
                    weight: 1.0,
                },
                LevelItem {
                    id: 1,
                    centroid: &a1,
                    weight: 6.0,
                },
            ],
            0.8,
            2,
        );
        assert_eq!(tracker.topic_of(1), Some(topic_a));
        assert_eq!(
            tracker.topic_of(3),
            Some(topic_a),
            "joined the existing topic"
        );
        assert_eq!(tracker.topic_of(2), Some(topic_b));
        let topic_c = tracker.topic_of(7).unwrap();
        assert!(topic_c != topic_a && topic_c != topic_b);
        assert_eq!(tracker.topics(), 3);
        assert_eq!(tracker.rebuilds(), 2);
    }
}
