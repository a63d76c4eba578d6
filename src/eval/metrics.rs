//! Agreement between a ground-truth labeling and a predicted clustering: NMI, AMI, ARI, purity.
//!
//! The first three reproduce scikit-learn 1.x defaults (`normalized_mutual_info_score` and
//! `adjusted_mutual_info_score` with `average_method="arithmetic"`, `adjusted_rand_score`),
//! special cases included, so a number printed by `clusterwatch eval clustering` can be set
//! next to one from a Python notebook or a paper. The tests pin values computed by
//! scikit-learn itself.
//!
//! Every score is computed from one sparse contingency table, built once per pair of labelings
//! in `O(n log n)`. Labels are opaque `u32` values: only equality matters, they need not be dense
//! or start at zero.
//!
//! AMI needs the expected mutual information of two random labelings with the same cluster
//! sizes (hypergeometric model). scikit-learn sums over every (true class, predicted cluster)
//! pair; here pairs are grouped by cluster *size*, since the expectation depends only on the two
//! sizes, and ln-factorials come from one table. With 150 classes, 3,000 clusters and 20,000
//! items there are at most a few hundred distinct sizes per side, so the sum is milliseconds
//! even in a debug build.

use serde::Serialize;

/// The two labelings given to a metric do not label the same number of items.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "the labelings differ in length: {truth} true labels but {predicted} predicted labels; \
     both must label the same items in the same order"
)]
pub struct LengthMismatch {
    pub truth: usize,
    pub predicted: usize,
}

/// Every score of a predicted clustering against the ground truth.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ClusteringScores {
    /// Normalized mutual information (arithmetic mean of the entropies), in [0, 1].
    pub nmi: f64,
    /// Mutual information adjusted for chance; about 0 for a random clustering, 1 for a perfect one.
    pub ami: f64,
    /// Adjusted Rand index; about 0 for a random clustering, 1 for a perfect one.
    pub ari: f64,
    /// Share of items whose predicted cluster's majority true label is their own.
    pub purity: f64,
    /// Number of distinct predicted labels.
    pub clusters: usize,
}

/// All scores at once, sharing one contingency table.
pub fn score(truth: &[u32], predicted: &[u32]) -> Result<ClusteringScores, LengthMismatch> {
    let table = Contingency::new(truth, predicted)?;
    Ok(ClusteringScores {
        nmi: table.normalized_mutual_info(),
        ami: table.adjusted_mutual_info(),
        ari: table.adjusted_rand_index(),
        purity: table.purity(),
        clusters: table.column_sizes.len(),
    })
}

/// scikit-learn's `normalized_mutual_info_score(truth, predicted)` (arithmetic mean).
pub fn normalized_mutual_info(truth: &[u32], predicted: &[u32]) -> Result<f64, LengthMismatch> {
    Ok(Contingency::new(truth, predicted)?.normalized_mutual_info())
}

/// scikit-learn's `adjusted_mutual_info_score(truth, predicted)` (arithmetic mean).
pub fn adjusted_mutual_info(truth: &[u32], predicted: &[u32]) -> Result<f64, LengthMismatch> {
    Ok(Contingency::new(truth, predicted)?.adjusted_mutual_info())
}

/// scikit-learn's `adjusted_rand_score(truth, predicted)`.
pub fn adjusted_rand_index(truth: &[u32], predicted: &[u32]) -> Result<f64, LengthMismatch> {
    Ok(Contingency::new(truth, predicted)?.adjusted_rand_index())
}

/// Sum over predicted clusters of their most common true label's count, divided by the number
/// of items. Not symmetric: one cluster per item scores 1.0. Empty labelings score 1.0, like
/// scikit-learn's scores for empty input.
pub fn purity(truth: &[u32], predicted: &[u32]) -> Result<f64, LengthMismatch> {
    Ok(Contingency::new(truth, predicted)?.purity())
}

/// Sparse contingency table: rows are true classes, columns predicted clusters, both numbered
/// densely in ascending label order (as `np.unique` does).
struct Contingency {
    items: u64,
    /// Items per true class (scikit-learn's `a`).
    row_sizes: Vec<u64>,
    /// Items per predicted cluster (scikit-learn's `b`).
    column_sizes: Vec<u64>,
    /// Non-zero cells in row-major order.
    cells: Vec<Cell>,
}

struct Cell {
    row: usize,
    column: usize,
    count: u64,
}

impl Contingency {
    fn new(truth: &[u32], predicted: &[u32]) -> Result<Self, LengthMismatch> {
        if truth.len() != predicted.len() {
            return Err(LengthMismatch {
                truth: truth.len(),
                predicted: predicted.len(),
            });
        }
        let (rows, row_count) = dense_ids(truth);
        let (columns, column_count) = dense_ids(predicted);

        let mut row_sizes = vec![0u64; row_count];
        let mut column_sizes = vec![0u64; column_count];
        for (&row, &column) in rows.iter().zip(&columns) {
            row_sizes[row] += 1;
            column_sizes[column] += 1;
        }

        // Sorting (row, column) keys turns equal cells into runs, in row-major order.
        let mut keys: Vec<(usize, usize)> = rows.into_iter().zip(columns).collect();
        keys.sort_unstable();
        let mut cells: Vec<Cell> = Vec::new();
        for (row, column) in keys {
            match cells.last_mut() {
                Some(cell) if cell.row == row && cell.column == column => cell.count += 1,
                _ => cells.push(Cell {
                    row,
                    column,
                    count: 1,
                }),
            }
        }

        Ok(Self {
            items: truth.len() as u64,
            row_sizes,
            column_sizes,
            cells,
        })
    }

    /// scikit-learn's special case: neither labeling splits the data (one cluster each, or no
    /// data at all), which counts as a perfect match.
    fn neither_splits(&self) -> bool {
        self.row_sizes.len() == self.column_sizes.len() && self.row_sizes.len() <= 1
    }

    /// Mutual information in nats, term for term as `mutual_info_score`.
    fn mutual_info(&self) -> f64 {
        // MI <= min(H(U), H(V)), and a single cluster has zero entropy.
        if self.row_sizes.len() <= 1 || self.column_sizes.len() <= 1 {
            return 0.0;
        }
        let total = self.items as f64;
        let log_total = total.ln();
        let mut sum = 0.0;
        for cell in &self.cells {
            let count = cell.count as f64;
            let share = count / total;
            let outer =
                u128::from(self.row_sizes[cell.row]) * u128::from(self.column_sizes[cell.column]);
            let log_outer = -(outer as f64).ln() + log_total + log_total;
            let term = share * (count.ln() - log_total) + share * log_outer;
            // scikit-learn zeroes terms below machine epsilon before summing.
            if term.abs() >= f64::EPSILON {
                sum += term;
            }
        }
        sum.max(0.0)
    }

    fn normalized_mutual_info(&self) -> f64 {
        if self.neither_splits() {
            return 1.0;
        }
        let mutual_info = self.mutual_info();
        // Not a perfect match (handled above), so no shared information means a score of 0
        // whatever the normalisation.
        if mutual_info == 0.0 {
            return 0.0;
        }
        mutual_info / self.mean_entropy()
    }

    fn adjusted_mutual_info(&self) -> f64 {
        if self.neither_splits() {
            return 1.0;
        }
        if self.row_sizes.len() == 1 || self.column_sizes.len() == 1 {
            return 0.0;
        }
        let mutual_info = self.mutual_info();
        let expected = self.expected_mutual_info();
        // As scikit-learn: floating-point error can put the expectation a hair above the
        // normaliser (or the MI); keep the sign and stay clear of 0/0 for a perfect match.
        let denominator = away_from_zero(self.mean_entropy() - expected);
        let numerator = away_from_zero(mutual_info - expected);
        numerator / denominator
    }

    fn mean_entropy(&self) -> f64 {
        (entropy(&self.row_sizes, self.items) + entropy(&self.column_sizes, self.items)) / 2.0
    }

    /// Expected mutual information of two independent random labelings with these class and
    /// cluster sizes (Vinh, Epps & Bailey 2010), the same sum as scikit-learn's
    /// `expected_mutual_information`, grouped by (row size, column size).
    fn expected_mutual_info(&self) -> f64 {
        if self.row_sizes.len() <= 1 || self.column_sizes.len() <= 1 {
            return 0.0;
        }
        let items = self.items;
        let ln_factorial = ln_factorials(items);
        let total = items as f64;
        let log_total = total.ln();
        let row_groups = size_counts(&self.row_sizes);
        let column_groups = size_counts(&self.column_sizes);

        let mut expected = 0.0;
        for &(row_size, rows_of_size) in &row_groups {
            for &(column_size, columns_of_size) in &column_groups {
                let pair_term = expected_cell_info(
                    row_size,
                    column_size,
                    items,
                    total,
                    log_total,
                    &ln_factorial,
                );
                expected += (rows_of_size * columns_of_size) as f64 * pair_term;
            }
        }
        expected
    }

    /// `adjusted_rand_score` from the pair confusion matrix, in exact integer arithmetic (i128:
    /// the products reach n⁴) and the same final float division as scikit-learn.
    fn adjusted_rand_index(&self) -> f64 {
        let items = i128::from(self.items);
        let mut sum_squares: i128 = 0;
        let mut row_weighted: i128 = 0;
        let mut column_weighted: i128 = 0;
        for cell in &self.cells {
            let count = i128::from(cell.count);
            sum_squares += count * count;
            row_weighted += count * i128::from(self.row_sizes[cell.row]);
            column_weighted += count * i128::from(self.column_sizes[cell.column]);
        }
        // Pairs of items (ordered, as scikit-learn counts them): together in both labelings,
        // apart in truth but together in the prediction, and so on.
        let together_in_both = sum_squares - items;
        let false_together = column_weighted - sum_squares;
        let false_apart = row_weighted - sum_squares;
        let apart_in_both = items * items - false_together - false_apart - sum_squares;
        if false_apart == 0 && false_together == 0 {
            return 1.0;
        }
        let numerator = together_in_both * apart_in_both - false_apart * false_together;
        let denominator = (together_in_both + false_apart) * (false_apart + apart_in_both)
            + (together_in_both + false_together) * (false_together + apart_in_both);
        2.0 * numerator as f64 / denominator as f64
    }

    fn purity(&self) -> f64 {
        if self.items == 0 {
            return 1.0;
        }
        let mut majority = vec![0u64; self.column_sizes.len()];
        for cell in &self.cells {
            majority[cell.column] = majority[cell.column].max(cell.count);
        }
        majority.iter().sum::<u64>() as f64 / self.items as f64
    }
}

/// Renumbers labels densely in ascending label order; returns the ids and how many there are.
fn dense_ids(labels: &[u32]) -> (Vec<usize>, usize) {
    let mut order: Vec<usize> = (0..labels.len()).collect();
    order.sort_unstable_by_key(|&index| labels[index]);
    let mut ids = vec![0usize; labels.len()];
    let mut distinct = 0;
    let mut previous: Option<u32> = None;
    for index in order {
        let label = labels[index];
        if previous != Some(label) {
            distinct += 1;
            previous = Some(label);
        }
        ids[index] = distinct - 1;
    }
    (ids, distinct)
}

/// Entropy in nats of a labeling with these cluster sizes, as scikit-learn's `_entropy`.
fn entropy(sizes: &[u64], items: u64) -> f64 {
    if sizes.len() <= 1 {
        return 0.0;
    }
    let total = items as f64;
    let log_total = total.ln();
    -sizes
        .iter()
        .map(|&size| {
            let size = size as f64;
            (size / total) * (size.ln() - log_total)
        })
        .sum::<f64>()
}

/// Distinct sizes and how many clusters have each, in ascending size order.
fn size_counts(sizes: &[u64]) -> Vec<(u64, u64)> {
    let mut sorted = sizes.to_vec();
    sorted.sort_unstable();
    let mut counts: Vec<(u64, u64)> = Vec::new();
    for size in sorted {
        match counts.last_mut() {
            Some((last, count)) if *last == size => *count += 1,
            _ => counts.push((size, 1)),
        }
    }
    counts
}

/// `ln(k!)` for `k` in `0..=max`. Summed with Neumaier compensation so that ln(20000!) ≈ 1.8e5
/// carries no more rounding error than `lgamma` would: AMI exponentiates differences of nine
/// such values, and a drifting table would show up in the ninth decimal.
fn ln_factorials(max: u64) -> Vec<f64> {
    let mut table = Vec::with_capacity(max as usize + 1);
    table.push(0.0);
    let mut sum = 0.0f64;
    let mut compensation = 0.0f64;
    for k in 1..=max {
        let term = (k as f64).ln();
        let next = sum + term;
        compensation += if sum.abs() >= term.abs() {
            (sum - next) + term
        } else {
            (term - next) + sum
        };
        sum = next;
        table.push(sum + compensation);
    }
    table
}

/// One (true class of `row_size`, predicted cluster of `column_size`) pair's contribution to
/// the expected mutual information: the sum over every possible overlap `nij` of
/// `nij/N · ln(N·nij / (a·b)) · P(nij)`, where `P` is hypergeometric.
fn expected_cell_info(
    row_size: u64,
    column_size: u64,
    items: u64,
    total: f64,
    log_total: f64,
    ln_factorial: &[f64],
) -> f64 {
    let (a, b, n) = (row_size, column_size, items);
    // The overlap must leave room for the rest of both clusters: nij >= a + b - N, and >= 1
    // since a zero overlap contributes nothing.
    let first = (a + b).saturating_sub(n).max(1);
    let last = a.min(b);
    let log_ab = (a as f64).ln() + (b as f64).ln();
    // ln(a! b! (N-a)! (N-b)! / N!), the part of ln P(nij) that does not depend on nij.
    let fixed = ln_factorial[a as usize]
        + ln_factorial[b as usize]
        + ln_factorial[(n - a) as usize]
        + ln_factorial[(n - b) as usize]
        - ln_factorial[n as usize];
    let mut sum = 0.0;
    for overlap in first..=last {
        let overlap_f = overlap as f64;
        let log_probability = fixed
            - ln_factorial[overlap as usize]
            - ln_factorial[(a - overlap) as usize]
            - ln_factorial[(b - overlap) as usize]
            - ln_factorial[(n + overlap - a - b) as usize];
        let log_ratio = log_total + overlap_f.ln() - log_ab;
        sum += (overlap_f / total) * log_ratio * log_probability.exp();
    }
    sum
}

/// Pushes a value at least one machine epsilon away from zero, keeping its sign (zero counts as
/// positive), as scikit-learn does to AMI's numerator and denominator.
fn away_from_zero(value: f64) -> f64 {
    if value < 0.0 {
        value.min(-f64::EPSILON)
    } else {
        value.max(f64::EPSILON)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Reference values below came from scikit-learn 1.9.1 (numpy 2.4.6, Python 3.11); purity
    // from its `contingency_matrix` as `c.max(axis=0).sum() / n`. The labelings are generated,
    // not pasted, by the same LCG on both sides; the Python side was:
    //
    //     class Lcg:
    //         def __init__(self, seed): self.state = seed % 2**64
    //         def next_below(self, bound):
    //             self.state = (self.state * 6364136223846793005 + 1442695040888963407) % 2**64
    //             return (self.state >> 33) % bound
    //     def random_labels(seed, n, k):
    //         g = Lcg(seed); return [g.next_below(k) for _ in range(n)]
    //     def noisy_copy(seed, labels, k, noise_percent):
    //         g = Lcg(seed)
    //         return [g.next_below(k) if g.next_below(100) < noise_percent else l for l in labels]
    //     t = random_labels(1, 200, 10)
    //     print(repr(adjusted_mutual_info_score(t, noisy_copy(3, t, 15, 30))))  # etc.
    const TOLERANCE: f64 = 1e-9;

    /// 64-bit LCG (Knuth's MMIX constants); the Python script that produced the reference
    /// values uses the identical generator, so the labelings need not be pasted here.
    struct Lcg(u64);

    impl Lcg {
        fn next_below(&mut self, bound: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) % bound
        }
    }

    fn random_labels(seed: u64, items: usize, distinct: u64) -> Vec<u32> {
        let mut generator = Lcg(seed);
        (0..items)
            .map(|_| generator.next_below(distinct) as u32)
            .collect()
    }

    /// Copies `labels`, replacing `noise_percent`% of them with a random label below `distinct`.
    fn noisy_copy(seed: u64, labels: &[u32], distinct: u64, noise_percent: u64) -> Vec<u32> {
        let mut generator = Lcg(seed);
        labels
            .iter()
            .map(|&label| {
                if generator.next_below(100) < noise_percent {
                    generator.next_below(distinct) as u32
                } else {
                    label
                }
            })
            .collect()
    }

    struct Expected {
        nmi: f64,
        ami: f64,
        ari: f64,
        purity: f64,
        clusters: usize,
    }

    fn assert_scores(case: &str, truth: &[u32], predicted: &[u32], expected: Expected) {
        let scores = score(truth, predicted).expect("equal lengths");
        let checks = [
            ("nmi", scores.nmi, expected.nmi),
            ("ami", scores.ami, expected.ami),
            ("ari", scores.ari, expected.ari),
            ("purity", scores.purity, expected.purity),
        ];
        for (metric, actual, wanted) in checks {
            assert!(
                (actual - wanted).abs() <= TOLERANCE,
                "{case}: {metric} = {actual:.17}, scikit-learn says {wanted:.17}"
            );
        }
        assert_eq!(scores.clusters, expected.clusters, "{case}: clusters");
    }

    #[test]
    fn matches_sklearn_docstring_example() {
        assert_scores(
            "doc_example",
            &[0, 1, 1, 0, 1, 0],
            &[0, 1, 0, 0, 1, 1],
            Expected {
                nmi: 0.08170416594551037,
                ami: -0.1111111111111109,
                ari: -0.1111111111111111,
                purity: 0.6666666666666666,
                clusters: 2,
            },
        );
    }

    #[test]
    fn discordant_labelings_score_below_zero() {
        assert_scores(
            "anti",
            &[0, 0, 1, 1],
            &[0, 1, 0, 1],
            Expected {
                nmi: 0.0,
                ami: -0.49999999999999944,
                ari: -0.5,
                purity: 0.5,
                clusters: 2,
            },
        );
    }

    #[test]
    fn independent_random_labelings_score_near_zero() {
        let truth = random_labels(1, 200, 10);
        let predicted = random_labels(2, 200, 15);
        assert_scores(
            "random_10_vs_15",
            &truth,
            &predicted,
            Expected {
                nmi: 0.16991467416040848,
                ami: 0.021873445432272674,
                ari: 0.011366159618044276,
                purity: 0.285,
                clusters: 15,
            },
        );
    }

    #[test]
    fn noisy_copy_matches_sklearn() {
        let truth = random_labels(1, 200, 10);
        let predicted = noisy_copy(3, &truth, 15, 30);
        assert_scores(
            "noisy_10_to_15",
            &truth,
            &predicted,
            Expected {
                nmi: 0.5681752377948499,
                ami: 0.494853495028095,
                ari: 0.44215714937360345,
                purity: 0.69,
                clusters: 15,
            },
        );
    }

    #[test]
    fn perfect_match_with_sparse_labels_scores_one() {
        let truth = random_labels(1, 200, 10);
        let renamed: Vec<u32> = truth.iter().map(|&label| label * 7919 + 3).collect();
        let perfect = Expected {
            nmi: 1.0,
            ami: 1.0,
            ari: 1.0,
            purity: 1.0,
            clusters: 10,
        };
        assert_scores("perfect_sparse", &truth, &renamed, perfect);
    }

    #[test]
    fn permuted_labels_score_one() {
        let truth = random_labels(1, 200, 10);
        let permuted: Vec<u32> = truth.iter().map(|&label| (label * 3 + 7) % 10).collect();
        let perfect = Expected {
            nmi: 1.0,
            ami: 1.0,
            ari: 1.0,
            purity: 1.0,
            clusters: 10,
        };
        assert_scores("permuted", &truth, &permuted, perfect);
    }

    #[test]
    fn one_cluster_against_many_scores_zero() {
        let many = random_labels(2, 200, 15);
        let one = vec![0u32; 200];
        assert_scores(
            "single_vs_random15",
            &one,
            &many,
            Expected {
                nmi: 0.0,
                ami: 0.0,
                ari: 0.0,
                purity: 1.0,
                clusters: 15,
            },
        );
        assert_scores(
            "random15_vs_single",
            &many,
            &vec![4_000_000_000u32; 200],
            Expected {
                nmi: 0.0,
                ami: 0.0,
                ari: 0.0,
                purity: 0.085,
                clusters: 1,
            },
        );
        assert_scores(
            "one_vs_singletons",
            &[0, 0, 0, 0],
            &[0, 1, 2, 3],
            Expected {
                nmi: 0.0,
                ami: 0.0,
                ari: 0.0,
                purity: 1.0,
                clusters: 4,
            },
        );
    }

    #[test]
    fn both_single_cluster_is_a_perfect_match() {
        assert_scores(
            "both_single",
            &[5, 5, 5],
            &[9, 9, 9],
            Expected {
                nmi: 1.0,
                ami: 1.0,
                ari: 1.0,
                purity: 1.0,
                clusters: 1,
            },
        );
    }

    /// Eval-sized input: 150 classes, ~3,000 clusters, 20,000 items. Checks the ln-factorial
    /// table holds AMI's precision at this size, and (in a debug build) that the expected
    /// mutual information stays cheap.
    #[test]
    fn large_contingency_matches_sklearn() {
        let truth = random_labels(4, 20_000, 150);
        let offsets = random_labels(5, 20_000, 20);
        let split: Vec<u32> = truth
            .iter()
            .zip(&offsets)
            .map(|(&label, &offset)| label * 20 + offset)
            .collect();
        let predicted = noisy_copy(6, &split, 3000, 40);
        let started = std::time::Instant::now();
        assert_scores(
            "big_150_vs_3000",
            &truth,
            &predicted,
            Expected {
                nmi: 0.6122502927798675,
                ami: 0.2632893326682048,
                ari: 0.03409490124294601,
                purity: 0.60785,
                clusters: 2996,
            },
        );
        let elapsed = started.elapsed();
        assert!(
            elapsed < std::time::Duration::from_secs(5),
            "scoring 20,000 items took {elapsed:?}"
        );
        // The same AMI summed in 40-digit arithmetic (mpmath) is 0.2632893326606194;
        // scikit-learn's float64 sum is 7.6e-12 off it, this one 8e-13.
        let ami = adjusted_mutual_info(&truth, &predicted).expect("equal lengths");
        assert!((ami - 0.2632893326606194).abs() < 3e-12, "ami = {ami:.17}");
    }

    #[test]
    fn empty_labelings_score_as_sklearn() {
        let scores = score(&[], &[]).expect("equal lengths");
        assert_eq!(scores.nmi, 1.0);
        assert_eq!(scores.ami, 1.0);
        assert_eq!(scores.ari, 1.0);
        assert_eq!(scores.purity, 1.0);
        assert_eq!(scores.clusters, 0);
    }

    #[test]
    fn different_lengths_are_an_error() {
        let error = LengthMismatch {
            truth: 3,
            predicted: 2,
        };
        assert_eq!(score(&[0, 1, 2], &[0, 1]), Err(error));
        assert_eq!(normalized_mutual_info(&[0, 1, 2], &[0, 1]), Err(error));
        assert_eq!(adjusted_mutual_info(&[0, 1, 2], &[0, 1]), Err(error));
        assert_eq!(adjusted_rand_index(&[0, 1, 2], &[0, 1]), Err(error));
        assert_eq!(purity(&[0, 1, 2], &[0, 1]), Err(error));
    }

    #[test]
    fn single_metric_functions_agree_with_score() {
        let truth = random_labels(1, 200, 10);
        let predicted = noisy_copy(3, &truth, 15, 30);
        let all = score(&truth, &predicted).expect("equal lengths");
        assert_eq!(normalized_mutual_info(&truth, &predicted), Ok(all.nmi));
        assert_eq!(adjusted_mutual_info(&truth, &predicted), Ok(all.ami));
        assert_eq!(adjusted_rand_index(&truth, &predicted), Ok(all.ari));
        assert_eq!(purity(&truth, &predicted), Ok(all.purity));
    }

    #[test]
    fn ln_factorials_match_direct_sums() {
        let table = ln_factorials(170);
        // 170! is the largest factorial an f64 holds.
        let mut factorial = 1.0f64;
        for (k, &ln_value) in table.iter().enumerate().skip(1) {
            factorial *= k as f64;
            assert!(
                (ln_value - factorial.ln()).abs() <= 1e-12 * ln_value.max(1.0),
                "ln({k}!)"
            );
        }
    }
}
