//! An int8 copy of the exact index's rows, used to screen out rows that cannot win before any
//! full-precision dot product is taken.
//!
//! Why: with a few thousand live clusters the exact scan reads every centroid for every event
//! (4 MB at 4,000 clusters of 256 floats), which no longer fits in cache; profiles of `bench
//! soak` and `bench clustering` put nearly all of the cluster stage's time in that scan. The int8
//! rows are a quarter of the size, and an int8 × int8 dot product takes a quarter of the
//! instructions of the `f32` one.
//!
//! The screen never changes a result. A row `r` is stored as `codes · scale` with
//! `|r_i − code_i · scale| ≤ scale / 2`, and the query is coded the same way. The integer dot
//! product of the codes is exact, so the screened score lies within a bound of the exact one
//! that follows from the two coding errors and from float rounding ([`Screen::scores`]). A row
//! whose screened score plus its bound is below the best (or k-th best) screened score minus its
//! bound cannot beat that row in the exact comparison; every other row is rescored with the same
//! exact `dot` as before. So the screened scan returns exactly what the full scan returns, ties
//! included (tests here and in `exact.rs` compare the two).
//!
//! In front of that pass sits a cheaper one over the first [`PREFIX_DIMS`] codes of each row,
//! kept contiguous ([`Screen::prefix_bounds`]), for rows of at least twice that. The rest of the dot product is bounded by
//! Cauchy–Schwarz, `|q_tail · r_tail| ≤ ‖q_tail‖ · ‖r_tail‖`. The static embedder's dimensions
//! are principal components, largest variance first, so the tail norms are small and most rows
//! fall provably short of a known floor (the join or merge threshold, or the exact score of the
//! row with the best prefix) after reading half of their codes.

/// Largest code magnitude: a symmetric range, so negating a vector negates its codes, and the
/// AVX2 kernel's `|a| · b` pairs never saturate (2 · 127 · 127 < 32,767).
const CODE_MAX: f32 = 127.0;

/// Leading dimensions read by the prefix pass: four 32-code vector steps, half of the static
/// embedder's 256-dimension rows. Measured on `bench soak` traffic (~2,000 live clusters), the
/// share of rows whose prefix bound still reaches the floor was 48 % after 64 dimensions and
/// 15 % after 128 against the best exact score; against the join threshold (0.62 there) or that
/// score, whichever is higher, 25 % and 1 %. On `bench clustering --traffic-events 60000`, 64
/// measured slower than the screen alone (the survivors' second pass cost more than it saved);
/// 96 and 128 measured 1.06–1.22× faster than it.
pub const PREFIX_DIMS: usize = 128;

/// int8 rows, row-major like the exact index's `f32` rows, with one scale per row.
#[derive(Default)]
pub struct Screen {
    dimension: usize,
    codes: Vec<i8>,
    scales: Vec<f32>,
    /// Σ|code| of each row, for the bound.
    code_l1: Vec<f32>,
    /// The first [`PREFIX_DIMS`] codes of each row, contiguous, for the prefix pass; empty when
    /// the rows are too short for one to pay ([`Screen::has_prefix`]).
    prefix_codes: Vec<i8>,
    /// Σ|code| over each row's prefix.
    prefix_l1: Vec<f32>,
    /// ‖row[PREFIX_DIMS..]‖₂ of each `f32` row: the Cauchy–Schwarz bound of the tail.
    tail_norms: Vec<f32>,
}

/// A query coded for the screen.
pub struct ScreenQuery {
    codes: Vec<i8>,
    scale: f32,
    code_l1: f32,
    /// ‖q‖₁ of the `f32` query, for the rounding term.
    l1: f32,
    /// Σ|code| over the query's prefix.
    prefix_l1: f32,
    /// ‖q[PREFIX_DIMS..]‖₂.
    tail_norm: f32,
}

/// What the prefix pass knows of each row: its integer prefix dot product (the full pass adds
/// the rest), the screened prefix score, and an upper bound of the exact score.
pub struct PrefixBounds {
    pub dots: Vec<i32>,
    pub scores: Vec<f32>,
    pub upper: Vec<f32>,
}

impl Screen {
    pub fn new(dimension: usize) -> Self {
        Screen {
            dimension,
            ..Default::default()
        }
    }

    /// Whether rows are long enough for the prefix pass: the tail must be most of the row.
    pub fn has_prefix(&self) -> bool {
        self.dimension >= 2 * PREFIX_DIMS
    }

    /// Appends the code of `row` as the last row.
    pub fn push(&mut self, row: &[f32]) {
        let start = self.codes.len();
        self.codes.resize(start + self.dimension, 0);
        self.scales.push(0.0);
        self.code_l1.push(0.0);
        if self.has_prefix() {
            self.prefix_codes
                .resize(self.prefix_codes.len() + PREFIX_DIMS, 0);
            self.prefix_l1.push(0.0);
            self.tail_norms.push(0.0);
        }
        self.set(self.scales.len() - 1, row);
    }

    /// Replaces row `index` with the code of `row`.
    pub fn set(&mut self, index: usize, row: &[f32]) {
        let d = self.dimension;
        let has_prefix = self.has_prefix();
        let codes = &mut self.codes[index * d..(index + 1) * d];
        let (scale, l1) = quantise(row, codes);
        self.scales[index] = scale;
        self.code_l1[index] = l1;
        if has_prefix {
            let (head, tail) = (&codes[..PREFIX_DIMS], &row[PREFIX_DIMS..]);
            let p = PREFIX_DIMS;
            self.prefix_codes[index * p..(index + 1) * p].copy_from_slice(head);
            self.prefix_l1[index] = code_l1(head);
            self.tail_norms[index] = l2_norm(tail);
        }
    }

    /// Moves the last row into `index` and drops the last row (the exact index's swap-remove).
    pub fn swap_remove(&mut self, index: usize) {
        let d = self.dimension;
        let last = self.scales.len() - 1;
        if index != last {
            self.codes.copy_within(last * d..(last + 1) * d, index * d);
            self.scales[index] = self.scales[last];
            self.code_l1[index] = self.code_l1[last];
            if self.has_prefix() {
                let p = PREFIX_DIMS;
                self.prefix_codes
                    .copy_within(last * p..(last + 1) * p, index * p);
                self.prefix_l1[index] = self.prefix_l1[last];
                self.tail_norms[index] = self.tail_norms[last];
            }
        }
        self.codes.truncate(last * d);
        self.scales.pop();
        self.code_l1.pop();
        if self.has_prefix() {
            self.prefix_codes.truncate(last * PREFIX_DIMS);
            self.prefix_l1.pop();
            self.tail_norms.pop();
        }
    }

    /// Codes `query` for [`Self::scores`]; `None` when a component is not finite (no bound
    /// holds; callers scan exactly).
    pub fn query(&self, query: &[f32]) -> Option<ScreenQuery> {
        let l1: f32 = query.iter().map(|x| x.abs()).sum();
        if !l1.is_finite() || query.len() != self.dimension {
            return None;
        }
        let mut codes = vec![0i8; query.len()];
        let (scale, all_l1) = quantise(query, &mut codes);
        let (prefix_l1, tail_norm) = if self.has_prefix() {
            (
                code_l1(&codes[..PREFIX_DIMS]),
                l2_norm(&query[PREFIX_DIMS..]),
            )
        } else {
            (0.0, 0.0)
        };
        Some(ScreenQuery {
            codes,
            scale,
            code_l1: all_l1,
            l1,
            prefix_l1,
            tail_norm,
        })
    }

    /// The prefix pass: for each row, an upper bound of its exact score read from the first
    /// [`PREFIX_DIMS`] codes alone. `None` when the rows have no prefix.
    ///
    /// The prefix part is bounded as in [`Self::scores`], with the prefix's code sums and
    /// length; the rest of the exact dot product is at most `‖q_tail‖ · ‖r_tail‖` in real
    /// arithmetic (Cauchy–Schwarz). The rounding of the exact `dot` over the whole row is the
    /// same term as the full pass's. The sum is then widened by 0.01 %, far more than the few
    /// float roundings of the norms and of this sum can take away.
    pub fn prefix_bounds(&self, query: &ScreenQuery) -> Option<PrefixBounds> {
        if !self.has_prefix() {
            return None;
        }
        let dots = dot_codes_rows(&self.prefix_codes, &query.codes[..PREFIX_DIMS]);
        let n = self.dimension as f32;
        let rounding = 2.5 * n * f32::EPSILON * query.l1 * (CODE_MAX + 1.0);
        let shared = 0.505 * query.prefix_l1 + 0.26 * PREFIX_DIMS as f32;
        let rows = dots.len();
        let mut scores = vec![0f32; rows];
        let mut upper = vec![0f32; rows];
        let (scales, prefix_l1, tail_norms) = (
            &self.scales[..rows],
            &self.prefix_l1[..rows],
            &self.tail_norms[..rows],
        );
        for i in 0..rows {
            let product = query.scale * scales[i];
            let score = dots[i] as f32 * product;
            let bound = product * (shared + 0.505 * prefix_l1[i])
                + rounding * scales[i]
                + 4.0 * f32::EPSILON * score.abs()
                + query.tail_norm * tail_norms[i];
            scores[i] = score;
            upper[i] = score + bound * (1.0 + 1e-4);
        }
        Some(PrefixBounds {
            dots,
            scores,
            upper,
        })
    }

    /// The lower and upper bounds (as [`Self::bounds`] gives them) of the rows `rows`, given
    /// every row's prefix dot product from [`Self::prefix_bounds`]: of each row only the codes
    /// after the prefix are read.
    pub fn bounds_of_rows(
        &self,
        query: &ScreenQuery,
        rows: &[usize],
        prefix_dots: &[i32],
    ) -> (Vec<f32>, Vec<f32>) {
        let d = self.dimension;
        let query_rest = &query.codes[PREFIX_DIMS..];
        let dots: Vec<i32> = rows
            .iter()
            .map(|&i| {
                let rest = &self.codes[i * d + PREFIX_DIMS..(i + 1) * d];
                prefix_dots[i] + dot_codes(rest, query_rest)
            })
            .collect();
        let scales: Vec<f32> = rows.iter().map(|&i| self.scales[i]).collect();
        let code_l1: Vec<f32> = rows.iter().map(|&i| self.code_l1[i]).collect();
        self.fill_bounds(
            query,
            RowTerms {
                dots: &dots,
                scales: &scales,
                code_l1: &code_l1,
            },
        )
    }

    /// For each row, `(screened score, bound)`: the exact dot product of the row with the query,
    /// as computed by `index::dot`, lies within `bound` of the screened score.
    ///
    /// With `q = q̂ + e` and `r = r̂ + d` (the coded vectors and their errors, each component at
    /// most half a step, widened by 1 % for the rounding of `x / scale` itself):
    /// `q·r − q̂·r̂ = q̂·d + e·r̂ + e·d`, bounded by `0.505 · s_q · s_r · (Σ|q codes| + Σ|r codes|)`
    /// plus `0.26 · n · s_q · s_r`. `q̂·r̂` is an exact integer times `s_q · s_r` (two float
    /// roundings). The exact `dot` itself sums `n` products, off by at most
    /// `n · ε · ‖q‖₁ · max|r_i|` with `max|r_i| = 127 · s_r`; that term is taken 2.5 times.
    pub fn scores<'a>(&'a self, query: &'a ScreenQuery) -> impl Iterator<Item = (f32, f32)> + 'a {
        let (lower, upper) = self.bounds(query);
        lower
            .into_iter()
            .zip(upper)
            .map(|(lo, hi)| ((lo + hi) / 2.0, (hi - lo) / 2.0))
    }

    /// For each row, the lower and upper bound of its exact score (see [`Self::scores`]), in
    /// two arrays: simple loops over slices, which the compiler vectorises.
    pub fn bounds(&self, query: &ScreenQuery) -> (Vec<f32>, Vec<f32>) {
        self.bounds_of_dots(query, &dot_codes_rows(&self.codes, &query.codes))
    }

    fn bounds_of_dots(&self, query: &ScreenQuery, dots: &[i32]) -> (Vec<f32>, Vec<f32>) {
        let rows = dots.len().min(self.scales.len());
        self.fill_bounds(
            query,
            RowTerms {
                dots: &dots[..rows],
                scales: &self.scales[..rows],
                code_l1: &self.code_l1[..rows],
            },
        )
    }

    /// The lower and upper bounds of the rows described by `row_terms`.
    fn fill_bounds(&self, query: &ScreenQuery, row_terms: RowTerms<'_>) -> (Vec<f32>, Vec<f32>) {
        let n = self.dimension as f32;
        let terms = BoundTerms {
            query_scale: query.scale,
            rounding: 2.5 * n * f32::EPSILON * query.l1 * (CODE_MAX + 1.0),
            shared: 0.505 * query.code_l1 + 0.26 * n,
        };
        let rows = row_terms.dots.len();
        let mut lower = vec![0f32; rows];
        let mut upper = vec![0f32; rows];
        #[cfg(target_arch = "x86_64")]
        {
            if has_avx2() {
                // SAFETY: the CPU supports AVX2 (`has_avx2`).
                unsafe { terms.fill_avx2(row_terms, (&mut lower, &mut upper)) };
                return (lower, upper);
            }
        }
        terms.fill(row_terms, (&mut lower, &mut upper));
        (lower, upper)
    }
}

/// The per-row inputs of the bound: integer dot products, row scales and Σ|code| per row.
#[derive(Clone, Copy)]
struct RowTerms<'a> {
    dots: &'a [i32],
    scales: &'a [f32],
    code_l1: &'a [f32],
}

/// The parts of [`Screen::scores`]' bound that depend on the query alone.
struct BoundTerms {
    query_scale: f32,
    rounding: f32,
    shared: f32,
}

impl BoundTerms {
    /// Writes each row's lower and upper bound. Equal-length slices and no pushes, so the loop
    /// compiles to vector instructions: it runs over every row for every query, and written
    /// with pushes it took as long as the integer dot products themselves. Plain multiplies
    /// and adds (Rust never fuses them), so every instruction set gives the same bits.
    #[inline(always)]
    fn fill(&self, rows: RowTerms<'_>, (lower, upper): (&mut [f32], &mut [f32])) {
        let RowTerms {
            dots,
            scales,
            code_l1,
        } = rows;
        let n = dots.len();
        let (scales, code_l1, lower, upper) = (
            &scales[..n],
            &code_l1[..n],
            &mut lower[..n],
            &mut upper[..n],
        );
        for i in 0..n {
            let product = self.query_scale * scales[i];
            let score = dots[i] as f32 * product;
            let bound = product * (self.shared + 0.505 * code_l1[i])
                + self.rounding * scales[i]
                + 4.0 * f32::EPSILON * score.abs();
            lower[i] = score - bound;
            upper[i] = score + bound;
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn fill_avx2(&self, rows: RowTerms<'_>, out: (&mut [f32], &mut [f32])) {
        self.fill(rows, out)
    }
}

/// The integer dot product of two code vectors, by the fastest kernel the CPU has.
fn dot_codes(a: &[i8], b: &[i8]) -> i32 {
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx2() {
            // SAFETY: the CPU supports AVX2 (`has_avx2`).
            return unsafe { dot_codes_avx2(a, b) };
        }
    }
    dot_codes_portable(a, b)
}

/// Σ|code|, as the bound takes it.
fn code_l1(codes: &[i8]) -> f32 {
    codes.iter().map(|c| f32::from(*c).abs()).sum()
}

fn l2_norm(v: &[f32]) -> f32 {
    v.iter().map(|x| x * x).sum::<f32>().sqrt()
}

/// The integer dot product of `query` with every row of `rows` (row-major, `query.len()` wide),
/// in one call so the vector kernel inlines into the loop over rows.
fn dot_codes_rows(rows: &[i8], query: &[i8]) -> Vec<i32> {
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx2() {
            // SAFETY: the CPU supports AVX2 (`has_avx2`).
            return unsafe { dot_codes_rows_avx2(rows, query) };
        }
    }
    rows.chunks_exact(query.len().max(1))
        .map(|row| dot_codes_portable(row, query))
        .collect()
}

/// Eight rows at a time when the width is whole 32-code steps: each query step is loaded once
/// for eight rows, and the eight accumulators are summed together by three rounds of
/// horizontal adds instead of one full reduction per row (a `perf` profile of the soak put the
/// per-row reduction and loop among the largest parts of the one-row kernel's time). Integer
/// sums, so every path gives the same numbers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dot_codes_rows_avx2(rows: &[i8], query: &[i8]) -> Vec<i32> {
    use std::arch::x86_64::*;
    let width = query.len().max(1);
    let count = rows.len() / width;
    let mut out = Vec::with_capacity(count);
    let mut row = 0;
    if width % 32 == 0 {
        let steps = width / 32;
        let ones = _mm256_set1_epi16(1);
        while row + 8 <= count {
            let mut acc = [_mm256_setzero_si256(); 8];
            for step in 0..steps {
                // SAFETY: `step * 32 + 32 <= width`, inside the query and inside each of the
                // eight rows `row..row + 8 <= count`; the loads are unaligned.
                let vb = _mm256_loadu_si256(query.as_ptr().add(step * 32) as *const __m256i);
                for (r, acc) in acc.iter_mut().enumerate() {
                    let at = (row + r) * width + step * 32;
                    let va = _mm256_loadu_si256(rows.as_ptr().add(at) as *const __m256i);
                    let pairs =
                        _mm256_maddubs_epi16(_mm256_sign_epi8(va, va), _mm256_sign_epi8(vb, va));
                    *acc = _mm256_add_epi32(*acc, _mm256_madd_epi16(pairs, ones));
                }
            }
            let s01 = _mm256_hadd_epi32(acc[0], acc[1]);
            let s23 = _mm256_hadd_epi32(acc[2], acc[3]);
            let s45 = _mm256_hadd_epi32(acc[4], acc[5]);
            let s67 = _mm256_hadd_epi32(acc[6], acc[7]);
            // Each 128-bit half now holds rows 0–3 (resp. 4–7), one lane each.
            let s0123 = _mm256_hadd_epi32(s01, s23);
            let s4567 = _mm256_hadd_epi32(s45, s67);
            let low = _mm256_permute2x128_si256::<0x20>(s0123, s4567);
            let high = _mm256_permute2x128_si256::<0x31>(s0123, s4567);
            let mut sums = [0i32; 8];
            _mm256_storeu_si256(
                sums.as_mut_ptr() as *mut __m256i,
                _mm256_add_epi32(low, high),
            );
            out.extend_from_slice(&sums);
            row += 8;
        }
    }
    out.extend(
        rows[row * width..count * width]
            .chunks_exact(width)
            .map(|r| dot_codes_avx2(r, query)),
    );
    out
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn horizontal_sum(acc: std::arch::x86_64::__m256i) -> i32 {
    use std::arch::x86_64::*;
    let half = _mm_add_epi32(
        _mm256_castsi256_si128(acc),
        _mm256_extracti128_si256::<1>(acc),
    );
    let quarter = _mm_add_epi32(half, _mm_shuffle_epi32::<0b01_00_11_10>(half));
    let one = _mm_add_epi32(quarter, _mm_shuffle_epi32::<0b10_11_00_01>(quarter));
    _mm_cvtsi128_si32(one)
}

/// Writes the codes of `v` into `out`; returns the scale (0 for an all-zero vector) and Σ|code|.
fn quantise(v: &[f32], out: &mut [i8]) -> (f32, f32) {
    let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
    if max == 0.0 || !max.is_finite() {
        out.fill(0);
        return (0.0, 0.0);
    }
    let scale = max / CODE_MAX;
    let mut l1 = 0f32;
    for (code, x) in out.iter_mut().zip(v) {
        *code = (x / scale).round().clamp(-CODE_MAX, CODE_MAX) as i8;
        l1 += f32::from(*code).abs();
    }
    (scale, l1)
}

fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The exact integer dot product of two code vectors (every path gives the same: integer sums do
/// not depend on order).
fn dot_codes_portable(a: &[i8], b: &[i8]) -> i32 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| i32::from(x) * i32::from(y))
        .sum()
}

/// 32 codes per step: `maddubs` multiplies unsigned by signed bytes, so `a`'s sign is moved onto
/// `b` first; pairs are summed to i16 (no saturation within ±127) and then to i32.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn dot_codes_avx2(a: &[i8], b: &[i8]) -> i32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let steps = n / 32;
    let ones = _mm256_set1_epi16(1);
    let mut acc = _mm256_setzero_si256();
    for step in 0..steps {
        let at = step * 32;
        // SAFETY: `at + 32 <= n`, so both 32-byte reads are in bounds; the loads are unaligned.
        let va = _mm256_loadu_si256(a.as_ptr().add(at) as *const __m256i);
        let vb = _mm256_loadu_si256(b.as_ptr().add(at) as *const __m256i);
        let pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(va, va), _mm256_sign_epi8(vb, va));
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, ones));
    }
    horizontal_sum(acc) + dot_codes_portable(&a[steps * 32..n], &b[steps * 32..n])
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::cluster::index::dot;
    use crate::cluster::index::tests::{seeded_unit as vector, unit};

    fn spike(dim: usize, at: usize) -> Vec<f32> {
        let mut v = vec![1e-4f32; dim];
        v[at % dim] = 1.0;
        unit(&v)
    }

    #[test]
    fn the_exact_score_is_always_within_the_bound() {
        for dim in [3, 16, 33, 100, 256, 384] {
            let mut screen = Screen::new(dim);
            let mut rows: Vec<Vec<f32>> = (0..200).map(|s| vector(s, dim)).collect();
            rows.push(spike(dim, 0));
            rows.push(vec![0.0; dim]);
            rows.iter().for_each(|r| screen.push(r));
            let queries = (1000..1020).map(|s| vector(s, dim)).chain([
                spike(dim, 0),
                spike(dim, 1),
                rows[7].clone(),
            ]);
            for q in queries {
                let coded = screen.query(&q).unwrap();
                for ((score, bound), row) in screen.scores(&coded).zip(&rows) {
                    let exact = dot(row, &q);
                    assert!(
                        (exact - score).abs() <= bound,
                        "dim {dim}: exact {exact}, screened {score} ± {bound}"
                    );
                }
            }
        }
    }

    /// A unit vector whose component `j` has spread `exp(-j / 40)`: variance falling with the
    /// index, as the static embedder's principal components do.
    pub(crate) fn decaying(seed: u64, dim: usize) -> Vec<f32> {
        let raw: Vec<f32> = vector(seed, dim)
            .iter()
            .enumerate()
            .map(|(j, x)| x * (-(j as f32) / 40.0).exp())
            .collect();
        unit(&raw)
    }

    #[test]
    fn the_exact_score_never_exceeds_the_prefix_bound() {
        for dim in [256, 384, 512] {
            let mut screen = Screen::new(dim);
            assert!(screen.has_prefix());
            let mut rows: Vec<Vec<f32>> = (0..150)
                .map(|s| decaying(s, dim))
                .chain((0..50).map(|s| vector(s + 500, dim)))
                .collect();
            rows.push(spike(dim, 0));
            rows.push(spike(dim, dim - 1));
            rows.push(vec![0.0; dim]);
            // Shorter than unit, as a centroid of spread members is.
            rows.push(decaying(7, dim).iter().map(|x| x * 0.3).collect());
            rows.iter().for_each(|r| screen.push(r));
            let queries = (1000..1020)
                .map(|s| decaying(s, dim))
                .chain((2000..2010).map(|s| vector(s, dim)))
                .chain([spike(dim, dim - 1), rows[7].clone(), rows[160].clone()]);
            let mut below = 0;
            for q in queries {
                let coded = screen.query(&q).unwrap();
                let prefix = screen.prefix_bounds(&coded).unwrap();
                let all: Vec<usize> = (0..rows.len()).collect();
                let (lower, upper) = screen.bounds_of_rows(&coded, &all, &prefix.dots);
                let (want_lower, want_upper) = screen.bounds(&coded);
                assert_eq!((lower, upper), (want_lower, want_upper), "dim {dim}");
                for (row, hi) in rows.iter().zip(&prefix.upper) {
                    let exact = dot(row, &q);
                    assert!(exact <= *hi, "dim {dim}: exact {exact} > prefix bound {hi}");
                    below += usize::from(*hi < 0.5);
                }
            }
            // The bound is not vacuous: with decaying variance most rows are provably far.
            assert!(
                below > 1000,
                "dim {dim}: only {below} rows bounded below 0.5"
            );
        }
        let short = Screen::new(2 * PREFIX_DIMS - 1);
        let query = short.query(&vec![0.5; 2 * PREFIX_DIMS - 1]).unwrap();
        assert!(short.prefix_bounds(&query).is_none());
    }

    #[test]
    fn the_vector_kernel_agrees_with_the_portable_one() {
        for n in [1, 31, 32, 33, 64, 255, 256, 384] {
            let a: Vec<i8> = (0..n).map(|i| ((i * 37) % 255) as i8).collect();
            let b: Vec<i8> = (0..n)
                .map(|i| (127 - ((i * 53) % 255) as i32) as i8)
                .collect();
            let a: Vec<i8> = a.into_iter().map(|x| x.max(-127)).collect();
            let b: Vec<i8> = b.into_iter().map(|x| x.max(-127)).collect();
            // Three rows: the pair, the pair negated, and zeros.
            let rows: Vec<i8> = a
                .iter()
                .copied()
                .chain(a.iter().map(|x| -x))
                .chain(std::iter::repeat_n(0, n))
                .collect();
            let want = dot_codes_portable(&a, &b);
            assert_eq!(dot_codes_rows(&rows, &b), vec![want, -want, 0], "n={n}");
            // Eleven rows: eight through the eight-row kernel, three after it.
            let many: Vec<Vec<i8>> = (0..11)
                .map(|r| {
                    a.iter()
                        .map(|x| x.wrapping_mul(r as i8 - 5).max(-127))
                        .collect()
                })
                .collect();
            let flat: Vec<i8> = many.concat();
            let want: Vec<i32> = many.iter().map(|row| dot_codes_portable(row, &b)).collect();
            assert_eq!(dot_codes_rows(&flat, &b), want, "n={n}, eleven rows");
        }
    }

    #[test]
    fn set_and_swap_remove_keep_codes_aligned_with_rows() {
        let dim = 32;
        let mut screen = Screen::new(dim);
        let rows: Vec<Vec<f32>> = (0..5).map(|s| vector(s, dim)).collect();
        rows.iter().for_each(|r| screen.push(r));
        screen.swap_remove(1); // rows now 0, 4, 2, 3
        screen.set(2, &rows[0]); // rows now 0, 4, 0, 3
        screen.push(&[0.0; 32]);
        let q = vector(99, dim);
        let coded = screen.query(&q).unwrap();
        let scores: Vec<(f32, f32)> = screen.scores(&coded).collect();
        assert_eq!(scores.len(), 5);
        assert_eq!(scores[0], scores[2]);
        for (at, row) in [(1, &rows[4]), (3, &rows[3])] {
            assert!((scores[at].0 - dot(row, &q)).abs() <= scores[at].1);
        }
        assert_eq!(scores[4].0, 0.0);
        assert!(screen.query(&[f32::NAN; 32]).is_none());

        // The same with prefix rows, whose prefix codes and tail norms must move along.
        let dim = 256;
        let mut screen = Screen::new(dim);
        let rows: Vec<Vec<f32>> = (0..5).map(|s| decaying(s, dim)).collect();
        rows.iter().for_each(|r| screen.push(r));
        screen.swap_remove(1);
        screen.set(2, &rows[0]);
        let q = decaying(99, dim);
        let coded = screen.query(&q).unwrap();
        let prefix = screen.prefix_bounds(&coded).unwrap();
        assert_eq!(prefix.upper.len(), 4);
        assert_eq!(prefix.upper[0], prefix.upper[2]);
        for (at, row) in [(0, &rows[0]), (1, &rows[4]), (3, &rows[3])] {
            assert!(dot(row, &q) <= prefix.upper[at]);
        }
    }
}
