//! Batch k-means over embedding vectors: the offline baseline an online clustering is scored
//! against.
//!
//! Lloyd's algorithm on squared Euclidean distance, seeded by greedy k-means++ (as
//! scikit-learn's `KMeans` does: each new centre is the best of `2 + ln k` D²-sampled
//! candidates), restarted `n_init` times keeping the lowest inertia. A cluster left empty is
//! re-seeded with the point farthest from its centre. Everything runs on one thread from one
//! seeded ChaCha8 stream, so a seed always gives the same labels.
//!
//! The vectors are one row-major `&[f32]`, as the cluster index keeps centroids, and distances
//! come from [`dot`]: `|x − c|² = |x|² + |c|² − 2·x·c`, which for unit vectors against unit
//! centres is `2 − 2·x·c`. Centres are means and so not unit length; the norms keep the distance
//! exact anyway. The hot loop is one contiguous dot product per (point, centre), and Elkan's
//! triangle-inequality bounds skip most of those once clusters settle (same labels as plain
//! Lloyd, about 3× less work at 4,500 × 384, k = 150), which keeps eval-sized runs to seconds
//! in a debug build.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::cluster::index::dot;

/// Why a k-means run could not start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KMeansError {
    #[error("the vector dimension must be at least 1")]
    ZeroDimension,
    #[error("{floats} floats do not divide into rows of dimension {dimension}")]
    RaggedRows { floats: usize, dimension: usize },
    #[error("k must be at least 1")]
    ZeroClusters,
    #[error("cannot make {k} clusters from {points} points")]
    TooFewPoints { k: usize, points: usize },
    #[error("k = {k} does not fit the u32 cluster labels")]
    TooManyClusters { k: usize },
}

/// Clusters `vectors` (row-major, `dimension` floats per row) into `k` clusters and returns one
/// label in `0..k` per row.
///
/// Runs `n_init` restarts (at least one) of k-means++ seeding followed by up to `max_iter`
/// Lloyd iterations, stopping early once no assignment changes, and keeps the restart with the
/// lowest inertia. The same arguments always give the same labels.
pub fn kmeans(
    vectors: &[f32],
    dimension: usize,
    k: usize,
    seed: u64,
    n_init: usize,
    max_iter: usize,
) -> Result<Vec<u32>, KMeansError> {
    let points = Points::new(vectors, dimension)?;
    if k == 0 {
        return Err(KMeansError::ZeroClusters);
    }
    if k > points.len() {
        return Err(KMeansError::TooFewPoints {
            k,
            points: points.len(),
        });
    }
    if u32::try_from(k).is_err() {
        return Err(KMeansError::TooManyClusters { k });
    }

    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut best: Option<Fit> = None;
    for _ in 0..n_init.max(1) {
        let fit = fit_once(&points, k, max_iter, &mut rng);
        // Strictly lower: on a tie the earlier restart wins, which keeps the choice stable.
        if best.as_ref().is_none_or(|kept| fit.inertia < kept.inertia) {
            best = Some(fit);
        }
    }
    Ok(best.map(|fit| fit.labels).unwrap_or_default())
}

/// The rows and their squared norms, computed once.
struct Points<'a> {
    rows: &'a [f32],
    dimension: usize,
    squared_norms: Vec<f32>,
}

impl<'a> Points<'a> {
    fn new(rows: &'a [f32], dimension: usize) -> Result<Self, KMeansError> {
        if dimension == 0 {
            return Err(KMeansError::ZeroDimension);
        }
        if rows.len() % dimension != 0 {
            return Err(KMeansError::RaggedRows {
                floats: rows.len(),
                dimension,
            });
        }
        let squared_norms = rows
            .chunks_exact(dimension)
            .map(|row| dot(row, row))
            .collect();
        Ok(Self {
            rows,
            dimension,
            squared_norms,
        })
    }

    fn len(&self) -> usize {
        self.squared_norms.len()
    }

    fn row(&self, index: usize) -> &[f32] {
        &self.rows[index * self.dimension..(index + 1) * self.dimension]
    }

    fn iter(&self) -> std::slice::ChunksExact<'a, f32> {
        self.rows.chunks_exact(self.dimension)
    }

    /// Squared Euclidean distance from every point to point `center`, into `out`.
    fn distances_to_point(&self, center: usize, out: &mut [f32]) {
        let center_row = self.row(center);
        let center_norm = self.squared_norms[center];
        for ((distance, row), norm) in out.iter_mut().zip(self.iter()).zip(&self.squared_norms) {
            *distance = squared_distance(*norm, center_norm, dot(row, center_row));
        }
    }
}

/// `|x − c|²` from the norms and the dot product, clamped at zero against rounding.
fn squared_distance(point_norm: f32, center_norm: f32, dot_product: f32) -> f32 {
    (point_norm + center_norm - 2.0 * dot_product).max(0.0)
}

/// One restart's result.
struct Fit {
    labels: Vec<u32>,
    /// Sum of squared distances from each point to its centre.
    inertia: f64,
    /// Lloyd iterations run (for tests and timing).
    #[cfg_attr(not(test), allow(dead_code))]
    iterations: usize,
}

fn fit_once(points: &Points, k: usize, max_iter: usize, rng: &mut ChaCha8Rng) -> Fit {
    let centers = kmeans_plus_plus(points, k, rng);
    lloyd(points, k, centers, max_iter)
}

/// Greedy k-means++: the first centre is a uniformly random point; each next one is the best (by
/// resulting inertia) of `2 + ⌊ln k⌋` candidates drawn with probability proportional to their
/// squared distance from the nearest centre so far.
fn kmeans_plus_plus(points: &Points, k: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let count = points.len();
    let trials = 2 + (k as f64).ln() as usize;
    let mut centers = Vec::with_capacity(k * points.dimension);

    let first = rng.gen_range(0..count);
    centers.extend_from_slice(points.row(first));
    let mut closest = vec![0f32; count];
    points.distances_to_point(first, &mut closest);
    let mut potential = sum(&closest);

    let mut candidate_distances = vec![0f32; count];
    let mut best_distances = vec![0f32; count];
    for _ in 1..k {
        let mut best: Option<(usize, f64)> = None;
        for _ in 0..trials {
            let candidate = sample_by_weight(&closest, potential, rng);
            points.distances_to_point(candidate, &mut candidate_distances);
            for (distance, &current) in candidate_distances.iter_mut().zip(&closest) {
                *distance = distance.min(current);
            }
            let candidate_potential = sum(&candidate_distances);
            if best.is_none_or(|(_, kept)| candidate_potential < kept) {
                best = Some((candidate, candidate_potential));
                std::mem::swap(&mut best_distances, &mut candidate_distances);
            }
        }
        // `trials` >= 2, so a candidate was always drawn.
        if let Some((chosen, chosen_potential)) = best {
            centers.extend_from_slice(points.row(chosen));
            std::mem::swap(&mut closest, &mut best_distances);
            potential = chosen_potential;
        }
    }
    centers
}

/// An index drawn with probability `weights[i] / total`; uniform when every weight is zero
/// (all points coincide with a centre already).
fn sample_by_weight(weights: &[f32], total: f64, rng: &mut ChaCha8Rng) -> usize {
    if total <= 0.0 {
        return rng.gen_range(0..weights.len());
    }
    let target = rng.gen::<f64>() * total;
    let mut cumulative = 0.0;
    let mut last_positive = 0;
    for (index, &weight) in weights.iter().enumerate() {
        if weight > 0.0 {
            cumulative += f64::from(weight);
            last_positive = index;
            if cumulative > target {
                return index;
            }
        }
    }
    // Rounding left the cumulative sum a hair short of `target`.
    last_positive
}

/// Lloyd's algorithm from the given centres, with Elkan's bounds (2003) to skip most distance
/// computations: the labels are those of plain Lloyd (up to float rounding in exact ties), but
/// once clusters settle most (point, centre) pairs are ruled out by a comparison instead of a
/// dot product, which is what keeps 100 iterations affordable in a debug build.
///
/// Each point keeps an upper bound on the distance to its own centre and a lower bound on the
/// distance to every centre (plain Euclidean, so a bound moves by at most how far its centre
/// moved). Centre `c` cannot take the point while the upper bound is below its lower bound for
/// `c` or below half the distance between the two centres (triangle inequality). Hamerly's
/// single lower bound would save the `n × k` bounds, but in 384 dimensions the runner-up centre
/// is nearly as close as the nearest and it prunes little. The bounds cost `4·n·k` bytes
/// (2.7 MB for 4,500 points and k = 150).
fn lloyd(points: &Points, k: usize, mut centers: Vec<f32>, max_iter: usize) -> Fit {
    let dimension = points.dimension;
    let count = points.len();
    let mut center_norms = norms(&centers, dimension);
    let distance = |row: &[f32], point_norm: f32, center: usize, centers: &[f32], norms: &[f32]| {
        let center_row = &centers[center * dimension..][..dimension];
        squared_distance(point_norm, norms[center], dot(row, center_row)).sqrt()
    };

    // First assignment: every distance is computed, so every bound starts exact.
    let mut labels = vec![0u32; count];
    let mut upper = vec![0f32; count];
    let mut lower = vec![0f32; count * k];
    for (index, (row, &point_norm)) in points.iter().zip(&points.squared_norms).enumerate() {
        let bounds = &mut lower[index * k..][..k];
        for (center, bound) in bounds.iter_mut().enumerate() {
            *bound = distance(row, point_norm, center, &centers, &center_norms);
        }
        let nearest = nearest_index(bounds);
        labels[index] = nearest as u32;
        upper[index] = bounds[nearest];
    }

    let mut previous_centers = centers.clone();
    let mut iterations = 0;
    while iterations < max_iter {
        iterations += 1;
        previous_centers.copy_from_slice(&centers);
        let reseeded = update_centers(points, k, &mut labels, &center_norms, &mut centers);
        center_norms = norms(&centers, dimension);

        let drift: Vec<f32> = centers
            .chunks_exact(dimension)
            .zip(previous_centers.chunks_exact(dimension))
            .map(|(now, before)| {
                now.iter()
                    .zip(before)
                    .map(|(a, b)| (a - b) * (a - b))
                    .sum::<f32>()
                    .sqrt()
            })
            .collect();
        for (index, bounds) in lower.chunks_exact_mut(k).enumerate() {
            upper[index] += drift[labels[index] as usize];
            for (bound, &moved) in bounds.iter_mut().zip(&drift) {
                *bound = (*bound - moved).max(0.0);
            }
        }
        for point in reseeded {
            // Moved by hand: its upper bound describes another cluster, so make it re-measure.
            upper[point] = f32::INFINITY;
        }

        let half_gaps = half_gaps_between_centers(&centers, &center_norms, dimension);
        let nearest_half_gap: Vec<f32> = half_gaps
            .chunks_exact(k)
            .enumerate()
            .map(|(center, gaps)| {
                gaps.iter()
                    .enumerate()
                    .filter(|&(other, _)| other != center)
                    .map(|(_, &gap)| gap)
                    .fold(f32::INFINITY, f32::min)
            })
            .collect();

        let mut changed = 0;
        for (index, (row, &point_norm)) in points.iter().zip(&points.squared_norms).enumerate() {
            let original = labels[index] as usize;
            // Closer to its centre than half the gap to any other: nothing to check.
            if upper[index] * (1.0 + BOUND_SLACK) <= nearest_half_gap[original] {
                continue;
            }
            let bounds = &mut lower[index * k..][..k];
            let mut label = original;
            let mut upper_is_exact = false;
            for center in 0..k {
                if center == label
                    || rules_out(upper[index], bounds[center], half_gaps[label * k + center])
                {
                    continue;
                }
                if !upper_is_exact {
                    let own = distance(row, point_norm, label, &centers, &center_norms);
                    upper[index] = own;
                    bounds[label] = own;
                    upper_is_exact = true;
                    if rules_out(own, bounds[center], half_gaps[label * k + center]) {
                        continue;
                    }
                }
                let candidate = distance(row, point_norm, center, &centers, &center_norms);
                bounds[center] = candidate;
                if candidate < upper[index] {
                    label = center;
                    upper[index] = candidate;
                }
            }
            if label != original {
                labels[index] = label as u32;
                changed += 1;
            }
        }
        if changed == 0 {
            break;
        }
    }

    // The bounds skipped exact distances; inertia needs them, once.
    let inertia = points
        .iter()
        .zip(&points.squared_norms)
        .zip(&labels)
        .map(|((row, &point_norm), &label)| {
            let own = distance(row, point_norm, label as usize, &centers, &center_norms);
            f64::from(own) * f64::from(own)
        })
        .sum();
    Fit {
        labels,
        inertia,
        iterations,
    }
}

/// Whether a centre cannot be nearer than the point's own, given an upper bound on the distance
/// to its own centre, a lower bound on the distance to the other, and half the gap between them.
/// The bounds carry f32 rounding from every update, so a centre within a relative
/// [`BOUND_SLACK`] of the own centre is always measured rather than ruled out; near-ties then
/// fall the same way as in plain Lloyd.
fn rules_out(upper: f32, lower_bound: f32, half_gap: f32) -> bool {
    let guarded = upper * (1.0 + BOUND_SLACK);
    guarded <= lower_bound || guarded <= half_gap
}

/// Relative margin on bound comparisons, far above the f32 rounding the bounds accumulate over
/// 100 iterations and far below the gaps that let the bounds skip work.
const BOUND_SLACK: f32 = 1e-4;

/// Index of the smallest distance; the lowest index wins a tie.
fn nearest_index(distances: &[f32]) -> usize {
    let mut nearest = 0;
    for (index, &distance) in distances.iter().enumerate() {
        if distance < distances[nearest] {
            nearest = index;
        }
    }
    nearest
}

/// Half the distance between every pair of centres, as a row-major `k × k` matrix: a point
/// closer than that to its own centre is closer to it than to the other (triangle inequality).
fn half_gaps_between_centers(centers: &[f32], center_norms: &[f32], dimension: usize) -> Vec<f32> {
    let k = center_norms.len();
    let mut half_gaps = vec![0f32; k * k];
    for first in 0..k {
        let first_row = &centers[first * dimension..][..dimension];
        for second in first + 1..k {
            let second_row = &centers[second * dimension..][..dimension];
            let squared = squared_distance(
                center_norms[first],
                center_norms[second],
                dot(first_row, second_row),
            );
            let half_gap = squared.sqrt() / 2.0;
            half_gaps[first * k + second] = half_gap;
            half_gaps[second * k + first] = half_gap;
        }
    }
    half_gaps
}

/// Moves each centre to the mean of its points, and returns the points it moved by hand: a
/// cluster with no points takes the point farthest from its current centre, from a cluster
/// that can spare one, so k clusters stay k.
fn update_centers(
    points: &Points,
    k: usize,
    labels: &mut [u32],
    center_norms: &[f32],
    centers: &mut [f32],
) -> Vec<usize> {
    let dimension = points.dimension;
    // f64 sums: thousands of f32 additions per coordinate would otherwise lose digits.
    let mut sums = vec![0f64; k * dimension];
    let mut counts = vec![0usize; k];
    for (row, &label) in points.iter().zip(labels.iter()) {
        let cluster = label as usize;
        counts[cluster] += 1;
        add_row(&mut sums[cluster * dimension..][..dimension], row, 1.0);
    }

    let mut reseeded = Vec::new();
    let empty: Vec<usize> = (0..k).filter(|&cluster| counts[cluster] == 0).collect();
    if !empty.is_empty() {
        // Rare, so exact distances to the current centres are computed only here.
        let distances: Vec<f32> = points
            .iter()
            .zip(&points.squared_norms)
            .zip(labels.iter())
            .map(|((row, &point_norm), &label)| {
                let label = label as usize;
                let center = &centers[label * dimension..][..dimension];
                squared_distance(point_norm, center_norms[label], dot(row, center))
            })
            .collect();
        let mut farthest_first: Vec<usize> = (0..points.len()).collect();
        farthest_first.sort_by(|&a, &b| distances[b].total_cmp(&distances[a]).then(a.cmp(&b)));
        let mut donors = farthest_first.into_iter();
        for cluster in empty {
            // With k <= points there is always a cluster of two or more while one is empty.
            let Some(point) = donors.find(|&point| counts[labels[point] as usize] > 1) else {
                break;
            };
            let donor_cluster = labels[point] as usize;
            let row = points.row(point);
            counts[donor_cluster] -= 1;
            add_row(
                &mut sums[donor_cluster * dimension..][..dimension],
                row,
                -1.0,
            );
            counts[cluster] = 1;
            add_row(&mut sums[cluster * dimension..][..dimension], row, 1.0);
            labels[point] = cluster as u32;
            reseeded.push(point);
        }
    }

    for ((center, sum), &count) in centers
        .chunks_exact_mut(dimension)
        .zip(sums.chunks_exact(dimension))
        .zip(&counts)
    {
        // A cluster still empty (only possible with fewer distinct points than k) keeps its
        // old centre.
        if count > 0 {
            for (coordinate, &total) in center.iter_mut().zip(sum) {
                *coordinate = (total / count as f64) as f32;
            }
        }
    }
    reseeded
}

/// `sums += sign · row`, in f64.
fn add_row(sums: &mut [f64], row: &[f32], sign: f64) {
    for (sum, &value) in sums.iter_mut().zip(row) {
        *sum += sign * f64::from(value);
    }
}

fn norms(centers: &[f32], dimension: usize) -> Vec<f32> {
    centers
        .chunks_exact(dimension)
        .map(|center| dot(center, center))
        .collect()
}

fn sum(values: &[f32]) -> f64 {
    values.iter().map(|&value| f64::from(value)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::metrics;

    fn normalize(vector: &mut [f32]) {
        let norm = dot(vector, vector).sqrt();
        for value in vector.iter_mut() {
            *value /= norm;
        }
    }

    fn random_unit_vector(dimension: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
        let mut vector: Vec<f32> = (0..dimension).map(|_| rng.gen_range(-1.0..1.0)).collect();
        normalize(&mut vector);
        vector
    }

    /// `blobs` random unit centres with `per_blob` unit vectors each, every coordinate jittered
    /// by up to ±`noise`; returns the rows and each row's blob, rows interleaved across blobs so
    /// that order gives nothing away.
    fn unit_blobs(
        blobs: usize,
        per_blob: usize,
        dimension: usize,
        noise: f32,
        seed: u64,
    ) -> (Vec<f32>, Vec<u32>) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let centers: Vec<Vec<f32>> = (0..blobs)
            .map(|_| random_unit_vector(dimension, &mut rng))
            .collect();
        let mut rows = Vec::with_capacity(blobs * per_blob * dimension);
        let mut truth = Vec::with_capacity(blobs * per_blob);
        for _ in 0..per_blob {
            for (blob, center) in centers.iter().enumerate() {
                let mut point: Vec<f32> = center
                    .iter()
                    .map(|&value| value + rng.gen_range(-noise..noise))
                    .collect();
                normalize(&mut point);
                rows.extend_from_slice(&point);
                truth.push(blob as u32);
            }
        }
        (rows, truth)
    }

    #[test]
    fn recovers_well_separated_blobs() {
        let (rows, truth) = unit_blobs(8, 40, 32, 0.05, 7);
        for seed in 0..4 {
            let labels = kmeans(&rows, 32, 8, seed, 1, 100).expect("valid input");
            let ami = metrics::adjusted_mutual_info(&truth, &labels).expect("same length");
            assert_eq!(ami, 1.0, "seed {seed}");
        }
    }

    #[test]
    fn same_seed_gives_same_labels() {
        // Noisy, overlapping blobs, so the result depends on the seeding.
        let (rows, _) = unit_blobs(12, 30, 24, 0.6, 11);
        let first = kmeans(&rows, 24, 12, 42, 3, 100).expect("valid input");
        let second = kmeans(&rows, 24, 12, 42, 3, 100).expect("valid input");
        assert_eq!(first, second);
        assert!(first.iter().all(|&label| label < 12));
    }

    #[test]
    fn more_restarts_never_raise_inertia() {
        let (rows, _) = unit_blobs(10, 20, 16, 0.8, 5);
        let points = Points::new(&rows, 16).expect("valid input");
        // Restarts draw from one stream, so the first restart of a longer run is the single run.
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let restarts: Vec<Fit> = (0..4)
            .map(|_| fit_once(&points, 10, 100, &mut rng))
            .collect();
        let best_inertia = restarts
            .iter()
            .map(|fit| fit.inertia)
            .fold(f64::INFINITY, f64::min);
        let best_labels = kmeans(&rows, 16, 10, 9, 4, 100).expect("valid input");
        let best_fit = restarts
            .iter()
            .find(|fit| fit.inertia == best_inertia)
            .expect("four restarts");
        assert_eq!(best_labels, best_fit.labels);
        assert!(best_inertia <= restarts[0].inertia);
    }

    #[test]
    fn as_many_clusters_as_points_gives_each_point_its_own() {
        let (rows, _) = unit_blobs(2, 6, 8, 0.3, 4);
        let mut labels = kmeans(&rows, 8, 12, 3, 1, 50).expect("valid input");
        labels.sort_unstable();
        assert_eq!(labels, (0..12).collect::<Vec<u32>>());
    }

    #[test]
    fn empty_cluster_takes_the_farthest_point() {
        // Cluster 1 (centre far away) has no points; point 2 is the farthest from its centre,
        // and cluster 0 can spare it.
        let rows = [1.0, 0.0, 0.9, 0.1, 0.0, 1.0];
        let points = Points::new(&rows, 2).expect("valid input");
        let mut labels = vec![0, 0, 0];
        let mut centers = vec![1.0, 0.0, 5.0, 5.0];
        let center_norms = norms(&centers, 2);
        let reseeded = update_centers(&points, 2, &mut labels, &center_norms, &mut centers);
        assert_eq!(reseeded, vec![2]);
        assert_eq!(labels, vec![0, 0, 1]);
        assert_eq!(&centers[2..], &[0.0, 1.0]);
        assert!((centers[0] - 0.95).abs() < 1e-6 && (centers[1] - 0.05).abs() < 1e-6);
    }

    /// Lloyd without bounds: every point against every centre, every iteration.
    fn plain_lloyd(points: &Points, k: usize, mut centers: Vec<f32>, max_iter: usize) -> Vec<u32> {
        let assign_all = |centers: &[f32]| -> Vec<u32> {
            let center_norms = norms(centers, points.dimension);
            points
                .iter()
                .zip(&points.squared_norms)
                .map(|(row, &point_norm)| {
                    let distances: Vec<f32> = centers
                        .chunks_exact(points.dimension)
                        .zip(&center_norms)
                        .map(|(center, &center_norm)| {
                            squared_distance(point_norm, center_norm, dot(row, center)).sqrt()
                        })
                        .collect();
                    nearest_index(&distances) as u32
                })
                .collect()
        };
        let mut labels = assign_all(&centers);
        for _ in 0..max_iter {
            let center_norms = norms(&centers, points.dimension);
            update_centers(points, k, &mut labels, &center_norms, &mut centers);
            let next = assign_all(&centers);
            if next == labels {
                break;
            }
            labels = next;
        }
        labels
    }

    #[test]
    fn bounds_give_the_same_labels_as_plain_lloyd() {
        let (rows, _) = unit_blobs(12, 30, 24, 0.5, 13);
        let points = Points::new(&rows, 24).expect("valid input");
        for (k, seed) in [(12, 1), (12, 2), (20, 3), (5, 4)] {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let centers = kmeans_plus_plus(&points, k, &mut rng);
            let bounded = lloyd(&points, k, centers.clone(), 100);
            let plain = plain_lloyd(&points, k, centers, 100);
            assert_eq!(bounded.labels, plain, "k {k}, seed {seed}");
            assert!(
                bounded.iterations > 1,
                "k {k}, seed {seed}: nothing to skip"
            );
        }
    }

    #[test]
    fn rejects_unusable_input() {
        let rows = [1.0, 0.0, 0.0, 1.0];
        assert_eq!(
            kmeans(&rows, 0, 1, 0, 1, 10),
            Err(KMeansError::ZeroDimension)
        );
        assert_eq!(
            kmeans(&rows, 3, 1, 0, 1, 10),
            Err(KMeansError::RaggedRows {
                floats: 4,
                dimension: 3
            })
        );
        assert_eq!(
            kmeans(&rows, 2, 0, 0, 1, 10),
            Err(KMeansError::ZeroClusters)
        );
        assert_eq!(
            kmeans(&rows, 2, 3, 0, 1, 10),
            Err(KMeansError::TooFewPoints { k: 3, points: 2 })
        );
        assert_eq!(
            kmeans(&[], 2, 1, 0, 1, 10),
            Err(KMeansError::TooFewPoints { k: 1, points: 0 })
        );
    }

    #[test]
    fn zero_restarts_and_iterations_still_label_every_point() {
        let (rows, _) = unit_blobs(3, 5, 8, 0.05, 3);
        let labels = kmeans(&rows, 8, 3, 0, 0, 0).expect("valid input");
        assert_eq!(labels.len(), 15);
        assert!(labels.iter().all(|&label| label < 3));
    }

    /// The eval-sized run: 4,500 × 384, k = 150, three restarts, on overlapping blobs that take
    /// 20-30 Lloyd iterations to settle. Ignored by default (seconds, not milliseconds, in a
    /// debug build); run with `cargo test --lib eval::kmeans -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn eval_sized_run_timing() {
        let (rows, truth) = unit_blobs(150, 30, 384, 0.25, 1);
        let started = std::time::Instant::now();
        let labels = kmeans(&rows, 384, 150, 0, 3, 100).expect("valid input");
        let elapsed = started.elapsed();
        let ami = metrics::adjusted_mutual_info(&truth, &labels).expect("same length");
        println!("4500x384, k=150, n_init=3, max_iter=100: {elapsed:?}, AMI {ami:.4}");
        assert!(elapsed < std::time::Duration::from_secs(60));
    }

    /// The bounds must not change the answer at eval size either, where near-ties are many.
    /// Ignored by default: plain Lloyd takes seconds in a debug build.
    #[test]
    #[ignore]
    fn bounds_give_the_same_labels_as_plain_lloyd_at_eval_size() {
        let (rows, _) = unit_blobs(150, 30, 384, 0.25, 1);
        let points = Points::new(&rows, 384).expect("valid input");
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        for restart in 0..2 {
            let centers = kmeans_plus_plus(&points, 150, &mut rng);
            let bounded_started = std::time::Instant::now();
            let bounded = lloyd(&points, 150, centers.clone(), 100);
            let bounded_elapsed = bounded_started.elapsed();
            let plain_started = std::time::Instant::now();
            let plain = plain_lloyd(&points, 150, centers, 100);
            println!(
                "restart {restart}: {} iterations; with bounds {bounded_elapsed:?}, plain {:?}",
                bounded.iterations,
                plain_started.elapsed()
            );
            assert_eq!(bounded.labels, plain, "restart {restart}");
        }
    }
}
