//! The k-anonymous cluster table: what `--clusters-out` writes and the demo prints.
//!
//! Only clusters that pass the privacy gate appear, with counts, facet breakdowns and an audited
//! label. Everything below the gate is folded into totals.
//!
//! Each row also carries a 2-D map position (`x`, `y`) for the explorer page: the centroid
//! projected onto the top two principal components of the visible centroids. The projection is
//! computed here, by a plain power iteration in a fixed order, so the same state always gives the
//! same positions and `--clusters-out` stays byte-identical across replays.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::alert::{format_event_time, round4};
use crate::cluster::{ClusterId, ClusterState};
use crate::privacy::PrivacyGate;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterTable {
    /// Event time the table reflects.
    pub event_time: String,
    pub totals: Totals,
    /// Gate-passing clusters, largest first.
    pub clusters: Vec<ClusterRow>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    pub events_clustered: u64,
    pub live_clusters: usize,
    pub visible_clusters: usize,
    pub hidden_clusters: usize,
    pub conversations_in_hidden_clusters: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterRow {
    pub cluster_id: ClusterId,
    /// The audited label: an LLM name when one is configured, c-TF-IDF keywords otherwise.
    pub label: String,
    /// The LLM's two-sentence description, when the cluster has an audited LLM name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The cluster's topic and domain as of the last hierarchy rebuild, with their audited
    /// c-TF-IDF labels (null before the first rebuild).
    pub topic_id: Option<u64>,
    pub topic_label: Option<String>,
    pub domain_id: Option<u64>,
    pub domain_label: Option<String>,
    pub conversations: u64,
    pub accounts: usize,
    pub orgs: usize,
    pub tightness: f64,
    pub born: String,
    pub last_seen: String,
    pub refusal_rate: f64,
    pub mean_concern: f64,
    pub classifier_flag_rate: f64,
    pub surfaces: BTreeMap<String, u64>,
    pub languages: BTreeMap<String, u64>,
    pub tasks: BTreeMap<String, u64>,
    /// Map position: the centroid on the first two principal components of the visible
    /// centroids, scaled together into [-1, 1] (one scale for both axes, so distances keep their
    /// proportions). Only relative positions within one table mean anything: the axes are refitted
    /// every time the table is built.
    pub x: f64,
    pub y: f64,
}

impl ClusterTable {
    pub fn build(state: &ClusterState, gate: &PrivacyGate) -> Self {
        let mut rows: Vec<(ClusterRow, &[f32])> = Vec::new();
        let mut hidden = 0usize;
        let mut hidden_conversations = 0u64;
        for c in state.clusters() {
            if !gate.admits(c) {
                hidden += 1;
                hidden_conversations += c.count;
                continue;
            }
            let (label, description, _) = state.shown_label_of(c);
            let topic_id = state.topic_of(c.id);
            let domain_id = state.domain_of(c.id);
            rows.push((
                ClusterRow {
                    cluster_id: c.id,
                    label,
                    description,
                    topic_id,
                    topic_label: topic_id.and_then(|t| state.shown_topic_label(t)),
                    domain_id,
                    domain_label: domain_id.and_then(|d| state.shown_domain_label(d)),
                    conversations: c.count,
                    accounts: c.accounts.count(),
                    orgs: c.orgs.count(),
                    tightness: round4(c.tightness()),
                    born: format_event_time(c.born_ms),
                    last_seen: format_event_time(c.last_seen_ms),
                    refusal_rate: round4(c.refusal_rate()),
                    mean_concern: round4(c.mean_concern()),
                    classifier_flag_rate: round4(
                        c.classifier_flagged as f64 / c.count.max(1) as f64,
                    ),
                    surfaces: c.surfaces.clone(),
                    languages: c.languages.clone(),
                    tasks: c.tasks.clone(),
                    x: 0.0,
                    y: 0.0,
                },
                c.centroid.as_slice(),
            ));
        }
        rows.sort_by(|(a, _), (b, _)| {
            b.conversations
                .cmp(&a.conversations)
                .then(a.cluster_id.cmp(&b.cluster_id))
        });
        let centroids: Vec<&[f32]> = rows.iter().map(|(_, c)| *c).collect();
        let positions = map_positions(&centroids);
        let rows: Vec<ClusterRow> = rows
            .into_iter()
            .zip(positions)
            .map(|((mut row, _), (x, y))| {
                row.x = x;
                row.y = y;
                row
            })
            .collect();
        ClusterTable {
            event_time: format_event_time(state.watermark_ms().max(0)),
            totals: Totals {
                events_clustered: state.clustered_events(),
                live_clusters: state.live_clusters(),
                visible_clusters: rows.len(),
                hidden_clusters: hidden,
                conversations_in_hidden_clusters: hidden_conversations,
            },
            clusters: rows,
        }
    }
}

/// The clusters whose centroids fit the map's axes: the largest ones (rows come sorted). Each
/// power-iteration step costs O(n · dimension), and the table is rebuilt at every maintenance pass
/// on the cluster stage's thread; the rest are only projected, one dot product per axis.
const MAP_BASIS_CLUSTERS: usize = 1000;
/// Upper bound on power-iteration steps per axis. Close eigenvalues converge slowly; past this the
/// axis is good enough for a picture, and the bound keeps the cost predictable.
const POWER_ITERATIONS: usize = 100;

/// 2-D positions of `centroids` on their top two principal components, in input order, scaled
/// together into [-1, 1] and rounded to four decimals (so they survive a JSON round trip exactly).
///
/// Hand-written rather than a linear-algebra crate: two axes of a few hundred dimensions need
/// nothing more, and every operation runs in a fixed order, so the result is deterministic.
fn map_positions(centroids: &[&[f32]]) -> Vec<(f64, f64)> {
    let Some(first) = centroids.first() else {
        return Vec::new();
    };
    let dimension = first.len();
    let basis = &centroids[..centroids.len().min(MAP_BASIS_CLUSTERS)];
    let mut mean = vec![0.0f64; dimension];
    for c in basis {
        for (m, v) in mean.iter_mut().zip(c.iter()) {
            *m += f64::from(*v);
        }
    }
    for m in &mut mean {
        *m /= basis.len() as f64;
    }
    let centred = |c: &[f32]| -> Vec<f64> {
        c.iter()
            .zip(&mean)
            .map(|(v, m)| f64::from(*v) - m)
            .collect()
    };
    let data: Vec<Vec<f64>> = basis.iter().map(|c| centred(c)).collect();
    let first_axis = principal_axis(&data, None);
    let second_axis = principal_axis(&data, Some(&first_axis));
    let mut positions: Vec<(f64, f64)> = centroids
        .iter()
        .map(|c| {
            let v = centred(c);
            (dot(&v, &first_axis), dot(&v, &second_axis))
        })
        .collect();
    let extent = positions
        .iter()
        .fold(0.0f64, |m, (x, y)| m.max(x.abs()).max(y.abs()));
    for (x, y) in &mut positions {
        if extent > 0.0 {
            *x = round4(*x / extent);
            *y = round4(*y / extent);
        } else {
            (*x, *y) = (0.0, 0.0);
        }
    }
    positions
}

/// The unit direction of greatest variance of `data` (rows already centred), orthogonal to
/// `orthogonal_to` when given; the zero vector when nothing varies in such a direction.
fn principal_axis(data: &[Vec<f64>], orthogonal_to: Option<&[f64]>) -> Vec<f64> {
    let dimension = data.first().map_or(0, Vec::len);
    let zero = vec![0.0; dimension];
    // A fixed, irregular start: a constant vector could be orthogonal to the axis sought, and a
    // random one would make the map differ between identical runs.
    let mut axis: Vec<f64> = (0..dimension)
        .map(|j| ((j as f64 + 1.0) * 0.618_033_988_749_895).fract() - 0.5)
        .collect();
    if let Some(other) = orthogonal_to {
        remove_component(&mut axis, other);
    }
    if !normalise(&mut axis) {
        return zero;
    }
    for _ in 0..POWER_ITERATIONS {
        // next = Xᵀ X axis, without forming the covariance matrix (dimension² per step).
        let mut next = vec![0.0; dimension];
        for row in data {
            let p = dot(row, &axis);
            for (n, r) in next.iter_mut().zip(row) {
                *n += p * r;
            }
        }
        if let Some(other) = orthogonal_to {
            remove_component(&mut next, other);
        }
        if !normalise(&mut next) {
            return zero;
        }
        let settled = 1.0 - dot(&next, &axis) < 1e-12;
        axis = next;
        if settled {
            break;
        }
    }
    // An eigenvector's sign is arbitrary: fix it so the map does not mirror between rebuilds of
    // nearly the same state.
    let largest = axis
        .iter()
        .copied()
        .fold(0.0f64, |m, v| if v.abs() > m.abs() { v } else { m });
    if largest < 0.0 {
        for v in &mut axis {
            *v = -*v;
        }
    }
    axis
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn remove_component(v: &mut [f64], unit: &[f64]) {
    let p = dot(v, unit);
    for (x, u) in v.iter_mut().zip(unit) {
        *x -= p * u;
    }
}

/// Scales `v` to unit length; false (and `v` untouched) when it is numerically zero.
fn normalise(v: &mut [f64]) -> bool {
    let norm = dot(v, v).sqrt();
    if norm < 1e-12 {
        return false;
    }
    for x in v.iter_mut() {
        *x /= norm;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(v: &[f32]) -> Vec<f32> {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter().map(|x| x / n).collect()
    }

    #[test]
    fn the_first_axis_follows_the_largest_spread() {
        // Points spread widely along one direction and a little along another.
        let points: Vec<Vec<f32>> = (0..9)
            .map(|i| {
                let t = i as f32 - 4.0;
                unit(&[10.0, t, 0.1 * (i % 3) as f32, 0.0])
            })
            .collect();
        let refs: Vec<&[f32]> = points.iter().map(Vec::as_slice).collect();
        let positions = map_positions(&refs);
        let spread = |f: fn(&(f64, f64)) -> f64| {
            let v: Vec<f64> = positions.iter().map(f).collect();
            v.iter().cloned().fold(f64::MIN, f64::max) - v.iter().cloned().fold(f64::MAX, f64::min)
        };
        assert!(spread(|p| p.0) > 5.0 * spread(|p| p.1), "{positions:?}");
        assert!(positions
            .iter()
            .all(|(x, y)| x.abs() <= 1.0 && y.abs() <= 1.0));
        assert_eq!(positions, map_positions(&refs), "deterministic");
    }

    #[test]
    fn degenerate_inputs_give_the_origin() {
        assert!(map_positions(&[]).is_empty());
        let one = unit(&[1.0, 2.0, 3.0]);
        assert_eq!(map_positions(&[&one]), vec![(0.0, 0.0)]);
        assert_eq!(map_positions(&[&one, &one]), vec![(0.0, 0.0); 2]);
    }

    #[test]
    fn two_directions_of_spread_give_two_axes() {
        let points: Vec<Vec<f32>> = [(-2.0, 0.0), (2.0, 0.0), (0.0, -1.0), (0.0, 1.0)]
            .iter()
            .map(|(a, b)| unit(&[5.0, *a, *b]))
            .collect();
        let refs: Vec<&[f32]> = points.iter().map(Vec::as_slice).collect();
        let positions = map_positions(&refs);
        // The wide pair lies on x, the narrow pair on y.
        assert!(
            positions[0].1.abs() < 1e-3 && positions[1].1.abs() < 1e-3,
            "{positions:?}"
        );
        assert!(
            positions[2].0.abs() < 1e-3 && positions[3].0.abs() < 1e-3,
            "{positions:?}"
        );
        assert!(positions[2].1.abs() > 0.1, "{positions:?}");
    }
}
