//! The exact index: every centroid in one contiguous row-major `Vec<f32>`, so a query is a linear
//! pass of dot products the compiler vectorises. It is exact, which makes it the reference the
//! approximate index is tested against, and it is the fastest choice up to a few thousand
//! clusters.
//!
//! From [`SCREEN_MIN_ROWS`] rows on, a single query first passes over an int8 copy of the rows
//! (`screen.rs`) and takes full-precision dot products only of the rows that could still win;
//! the answer is the same as the full scan's. In front of that pass, a prefix pass over the first
//! 128 codes of each row (`Screen::prefix_bounds`) drops every row that provably falls short of a
//! floor: the caller's threshold, or the exact score of the rows with the best prefixes,
//! whichever is higher. Only the rows left are read whole.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::screen::{PrefixBounds, Screen, ScreenQuery};
use super::{better_of, dot, dot4, push_top_k, CentroidIndex};

/// Rows scanned per block of a batched query: 256 rows of 384 floats are 384 KiB, which stay in
/// L2 while every waiting query passes over them.
const BLOCK_ROWS: usize = 256;

/// Rows from which single queries are screened: below this the `f32` rows stay in cache and the
/// extra pass costs more than it saves.
const SCREEN_MIN_ROWS: usize = 512;

/// When more than this share of rows survives the prefix pass over a window of queries, its
/// bound is too loose for these vectors (dimensions not ordered by variance, as the
/// transformer's are not) and the pass costs more than it saves...
const PREFIX_MAX_SURVIVING: f64 = 0.6;

/// ... judged over this many queries, so that one query with a flat spectrum does not switch
/// it off for everyone ...
const PREFIX_WINDOW_QUERIES: u32 = 256;

/// ... and then the next this many screened queries skip it, after which it is tried again.
const PREFIX_REST_QUERIES: u32 = 1024;

use crate::cluster::ClusterId;

/// Exact linear scan over contiguous rows.
pub struct ExactScanIndex {
    dimension: usize,
    rows: Vec<f32>,
    ids: Vec<ClusterId>,
    row_of: HashMap<ClusterId, usize>,
    /// The same rows in int8, in the same order.
    screen: Screen,
    /// Single queries are screened from this many rows on (`usize::MAX`: never).
    screen_min_rows: usize,
    /// Whether screened queries may take the prefix pass at all.
    prefix: bool,
    /// When they do take it.
    prefix_policy: PrefixPolicy,
}

/// Whether screened queries take the prefix pass: yes, unless over the last window of
/// [`PREFIX_WINDOW_QUERIES`] it read more than [`PREFIX_MAX_SURVIVING`] of the rows whole; then
/// the next [`PREFIX_REST_QUERIES`] skip it. Speed only: both paths give the same answers.
/// Atomics because queries take `&self`; one thread queries at a time, so `Relaxed` suffices.
#[derive(Default)]
struct PrefixPolicy {
    rest: AtomicU32,
    window_queries: AtomicU32,
    window_seen: AtomicU64,
    window_whole: AtomicU64,
    /// Every row the pass has looked at, and of those the rows it read whole.
    seen: AtomicU64,
    whole: AtomicU64,
}

impl PrefixPolicy {
    /// Whether this query takes the pass (a resting query counts down the rest).
    fn take(&self) -> bool {
        self.rest
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_err()
    }

    /// Records that a query took the pass over `seen` rows and read `whole` of them whole.
    fn record(&self, seen: usize, whole: usize) {
        let (seen, whole) = (seen as u64, whole as u64);
        self.seen.fetch_add(seen, Ordering::Relaxed);
        self.whole.fetch_add(whole, Ordering::Relaxed);
        let window_seen = self.window_seen.fetch_add(seen, Ordering::Relaxed) + seen;
        let window_whole = self.window_whole.fetch_add(whole, Ordering::Relaxed) + whole;
        if self.window_queries.fetch_add(1, Ordering::Relaxed) + 1 < PREFIX_WINDOW_QUERIES {
            return;
        }
        if window_whole as f64 > PREFIX_MAX_SURVIVING * window_seen as f64 {
            self.rest.store(PREFIX_REST_QUERIES, Ordering::Relaxed);
        }
        self.window_queries.store(0, Ordering::Relaxed);
        self.window_seen.store(0, Ordering::Relaxed);
        self.window_whole.store(0, Ordering::Relaxed);
    }

    #[cfg(test)]
    fn resting(&self) -> bool {
        self.rest.load(Ordering::Relaxed) > 0
    }

    fn survival(&self) -> Option<f64> {
        let seen = self.seen.load(Ordering::Relaxed);
        (seen > 0).then(|| self.whole.load(Ordering::Relaxed) as f64 / seen as f64)
    }
}

impl ExactScanIndex {
    pub fn new(dimension: usize) -> Self {
        ExactScanIndex {
            dimension,
            rows: Vec::new(),
            ids: Vec::new(),
            row_of: HashMap::new(),
            screen: Screen::new(dimension),
            screen_min_rows: SCREEN_MIN_ROWS,
            prefix: true,
            prefix_policy: PrefixPolicy::default(),
        }
    }

    /// With `false`, every query takes the plain `f32` scan (the baseline `bench clustering`
    /// measures the screen against; the answers are the same).
    pub fn with_screen(mut self, screen: bool) -> Self {
        self.screen_min_rows = if screen { SCREEN_MIN_ROWS } else { usize::MAX };
        self
    }

    /// With `false`, screened queries skip the prefix pass (the baseline `bench clustering`
    /// measures it against; the answers are the same).
    pub fn with_prefix(mut self, prefix: bool) -> Self {
        self.prefix = prefix;
        self
    }
}

impl ExactScanIndex {
    /// The exact nearest centroid; `&self`, so other indexes can use it as their exact part.
    pub fn scan(&self, query: &[f32], exclude: Option<ClusterId>) -> Option<(ClusterId, f32)> {
        self.scan_reaching(query, exclude, f32::NEG_INFINITY)
    }

    /// The exact nearest centroid if its score reaches `floor` (see
    /// [`CentroidIndex::nearest_reaching`]).
    pub fn scan_reaching(
        &self,
        query: &[f32],
        exclude: Option<ClusterId>,
        floor: f32,
    ) -> Option<(ClusterId, f32)> {
        if self.ids.len() >= self.screen_min_rows {
            if let Some(top) = self.screened_top_k(query, 1, exclude, floor) {
                return top.first().copied();
            }
        }
        self.scan_all(query, exclude)
            .filter(|(_, similarity)| *similarity >= floor)
    }

    fn scan_all(&self, query: &[f32], exclude: Option<ClusterId>) -> Option<(ClusterId, f32)> {
        let mut best: Option<(ClusterId, f32)> = None;
        for (row, id) in self.rows.chunks_exact(self.dimension).zip(&self.ids) {
            if Some(*id) != exclude {
                best = better_of(best, (*id, dot(row, query)));
            }
        }
        best
    }

    /// The `k` best rows for `query` whose scores reach `floor` (best first, as [`push_top_k`]
    /// orders them), screened: through the prefix pass when it pays, else the int8 pass over
    /// whole rows. `None` when the query cannot be screened.
    fn screened_top_k(
        &self,
        query: &[f32],
        k: usize,
        exclude: Option<ClusterId>,
        floor: f32,
    ) -> Option<Vec<(ClusterId, f32)>> {
        let coded = self.screen.query(query)?;
        if self.prefix && self.prefix_policy.take() {
            if let Some(prefix) = self.screen.prefix_bounds(&coded) {
                let search = Search {
                    query,
                    coded: &coded,
                    k: k.max(1),
                    excluded: exclude.and_then(|id| self.row_of.get(&id).copied()),
                    floor,
                };
                return Some(self.rescore_prefix_screened(&search, prefix));
            }
        }
        let (lower, upper) = self.screen.bounds(&coded);
        let mut top = self.rescore_screened(query, k, exclude, floor, lower, &upper);
        top.retain(|(_, similarity)| *similarity >= floor);
        Some(top)
    }

    /// The `k` best rows for `query` given its screened bounds: rows whose upper bound reaches
    /// the k-th best lower bound (or `floor`, if higher) are rescored exactly.
    fn rescore_screened(
        &self,
        query: &[f32],
        k: usize,
        exclude: Option<ClusterId>,
        floor: f32,
        mut lower: Vec<f32>,
        upper: &[f32],
    ) -> Vec<(ClusterId, f32)> {
        let k = k.max(1);
        let excluded = exclude.and_then(|id| self.row_of.get(&id).copied());
        if let Some(row) = excluded {
            lower[row] = f32::NEG_INFINITY;
        }
        let floor = kth_largest(&lower, k).max(floor);
        let mut best: Vec<(ClusterId, f32)> = Vec::with_capacity(k + 1);
        for i in rows_reaching(upper, floor, excluded) {
            push_top_k(&mut best, (self.ids[i], dot(self.row(i), query)), k);
        }
        best
    }

    /// The prefix-screened search. Every row in the answer scores at least the floor, which is
    /// the caller's `floor` or, if higher, the k-th exact score among the `k` rows with the best
    /// prefix scores (k rows reach it, so the k best do). A row whose prefix bound is below it
    /// is out; the rest are bounded on their whole codes and rescored as in
    /// [`Self::rescore_screened`], in row order, so ties resolve as in the plain scan.
    fn rescore_prefix_screened(
        &self,
        search: &Search<'_>,
        prefix: PrefixBounds,
    ) -> Vec<(ClusterId, f32)> {
        let Search {
            query,
            coded,
            k,
            excluded,
            floor,
        } = *search;
        let PrefixBounds {
            dots,
            scores,
            mut upper,
        } = prefix;
        if let Some(row) = excluded {
            upper[row] = f32::NEG_INFINITY;
        }
        let seeds = best_rows(&scores, k, excluded);
        let mut floor_now = floor;
        if seeds.len() == k {
            // A NaN score (a corrupt row) proves nothing, where `f32::min` would skip it.
            let kth_exact =
                seeds
                    .iter()
                    .map(|&i| dot(self.row(i), query))
                    .fold(f32::INFINITY, |kth, s| {
                        if s.is_nan() {
                            f32::NEG_INFINITY
                        } else {
                            kth.min(s)
                        }
                    });
            floor_now = floor_now.max(kth_exact);
        }
        let survivors = rows_reaching(&upper, floor_now, excluded);
        self.prefix_policy.record(self.ids.len(), survivors.len());
        let (lower, whole_upper) = self.screen.bounds_of_rows(coded, &survivors, &dots);
        let floor_now = kth_largest(&lower, k).max(floor_now);
        let mut best: Vec<(ClusterId, f32)> = Vec::with_capacity(k + 1);
        for (&i, hi) in survivors.iter().zip(&whole_upper) {
            if *hi >= floor_now {
                push_top_k(&mut best, (self.ids[i], dot(self.row(i), query)), k);
            }
        }
        best.retain(|(_, similarity)| *similarity >= floor);
        best
    }

    fn row(&self, index: usize) -> &[f32] {
        &self.rows[index * self.dimension..(index + 1) * self.dimension]
    }

    /// The current centroid of `id`.
    pub fn centroid(&self, id: ClusterId) -> Option<&[f32]> {
        let row = *self.row_of.get(&id)?;
        Some(&self.rows[row * self.dimension..(row + 1) * self.dimension])
    }

    /// Every (id, centroid) pair, in row order.
    pub fn rows(&self) -> impl Iterator<Item = (ClusterId, &[f32])> {
        self.ids
            .iter()
            .copied()
            .zip(self.rows.chunks_exact(self.dimension))
    }

    pub fn contains(&self, id: ClusterId) -> bool {
        self.row_of.contains_key(&id)
    }

    /// Of the rows the prefix pass has looked at, the share it then read whole (`None` before
    /// it has run).
    pub fn prefix_survival(&self) -> Option<f64> {
        self.prefix_policy.survival()
    }
}

/// One prefix-screened search: the query, its code, and what it asks for.
#[derive(Clone, Copy)]
struct Search<'a> {
    query: &'a [f32],
    coded: &'a ScreenQuery,
    k: usize,
    /// The excluded cluster's row.
    excluded: Option<usize>,
    floor: f32,
}

impl CentroidIndex for ExactScanIndex {
    fn nearest_excluding(
        &mut self,
        query: &[f32],
        exclude: Option<ClusterId>,
    ) -> Option<(ClusterId, f32)> {
        self.scan(query, exclude)
    }

    fn nearest_reaching(
        &mut self,
        query: &[f32],
        exclude: Option<ClusterId>,
        floor: f32,
    ) -> Option<(ClusterId, f32)> {
        self.scan_reaching(query, exclude, floor)
    }

    fn upsert(&mut self, id: ClusterId, centroid: &[f32]) {
        debug_assert_eq!(centroid.len(), self.dimension);
        match self.row_of.get(&id) {
            Some(&row) => {
                self.rows[row * self.dimension..(row + 1) * self.dimension]
                    .copy_from_slice(centroid);
                self.screen.set(row, centroid);
            }
            None => {
                self.row_of.insert(id, self.ids.len());
                self.ids.push(id);
                self.rows.extend_from_slice(centroid);
                self.screen.push(centroid);
            }
        }
    }

    fn remove(&mut self, id: ClusterId) {
        let Some(row) = self.row_of.remove(&id) else {
            return;
        };
        // Swap the last row into the hole so the rows stay contiguous.
        let last = self.ids.len() - 1;
        if row != last {
            let moved = self.ids[last];
            let (head, tail) = self.rows.split_at_mut(last * self.dimension);
            head[row * self.dimension..(row + 1) * self.dimension]
                .copy_from_slice(&tail[..self.dimension]);
            self.ids[row] = moved;
            self.row_of.insert(moved, row);
        }
        self.screen.swap_remove(row);
        self.ids.pop();
        self.rows.truncate(last * self.dimension);
    }

    fn len(&self) -> usize {
        self.ids.len()
    }

    fn top_k_batch(&self, queries: &[&[f32]], k: usize) -> Option<Vec<Vec<(ClusterId, f32)>>> {
        self.top_k_batch_reaching(queries, k, f32::NEG_INFINITY)
    }

    fn top_k_batch_reaching(
        &self,
        queries: &[&[f32]],
        k: usize,
        floor: f32,
    ) -> Option<Vec<Vec<(ClusterId, f32)>>> {
        let k = k.max(1);
        if self.ids.len() >= self.screen_min_rows {
            let screened: Option<Vec<_>> = queries
                .iter()
                .map(|q| self.screened_top_k(q, k, None, floor))
                .collect();
            if screened.is_some() {
                return screened;
            }
        }
        let mut lists = self.plain_top_k_batch(queries, k);
        for list in &mut lists {
            list.retain(|(_, similarity)| *similarity >= floor);
        }
        Some(lists)
    }
}

impl ExactScanIndex {
    /// The batched `f32` scan: rows in blocks that stay in cache while every query passes over
    /// them, four queries per row load.
    fn plain_top_k_batch(&self, queries: &[&[f32]], k: usize) -> Vec<Vec<(ClusterId, f32)>> {
        let mut best: Vec<Vec<(ClusterId, f32)>> = vec![Vec::with_capacity(k + 1); queries.len()];
        let block = BLOCK_ROWS * self.dimension;
        for (b, rows) in self.rows.chunks(block).enumerate() {
            let ids = &self.ids[b * BLOCK_ROWS..];
            let mut q = 0;
            while q + 4 <= queries.len() {
                let four = [queries[q], queries[q + 1], queries[q + 2], queries[q + 3]];
                for (row, id) in rows.chunks_exact(self.dimension).zip(ids) {
                    let sims = dot4(row, four);
                    for (j, sim) in sims.into_iter().enumerate() {
                        push_top_k(&mut best[q + j], (*id, sim), k);
                    }
                }
                q += 4;
            }
            for (query, top) in queries[q..].iter().zip(best[q..].iter_mut()) {
                for (row, id) in rows.chunks_exact(self.dimension).zip(ids) {
                    push_top_k(top, (*id, dot(row, query)), k);
                }
            }
        }
        best
    }
}

/// Rows checked together before looking at any one of them, in the screened scan's passes over
/// its bounds: almost every block holds no candidate, and a branch-free test of a whole block
/// compiles to vector compares, where a test per row was a sixth of the scan's time.
const SKIP_BLOCK: usize = 16;

/// The rows whose upper bound reaches `floor`, in row order, without `excluded`. Almost every
/// block of rows holds none, so a whole block is tested first.
fn rows_reaching(upper: &[f32], floor: f32, excluded: Option<usize>) -> Vec<usize> {
    let mut rows = Vec::new();
    for (b, block) in upper.chunks(SKIP_BLOCK).enumerate() {
        if !block.iter().fold(false, |any, hi| any | (*hi >= floor)) {
            continue;
        }
        for (j, hi) in block.iter().enumerate() {
            let i = b * SKIP_BLOCK + j;
            if *hi >= floor && Some(i) != excluded {
                rows.push(i);
            }
        }
    }
    rows
}

/// The rows of the `k` largest `values` (fewer when there are fewer), skipping `skip`; ties go to
/// the earlier row. Used for seeds, so any `k` rows would do; these are likely the best.
fn best_rows(values: &[f32], k: usize, skip: Option<usize>) -> Vec<usize> {
    let mut top: Vec<(f32, usize)> = Vec::with_capacity(k + 1);
    for (b, block) in values.chunks(SKIP_BLOCK).enumerate() {
        if top.len() == k {
            let kth = top[k - 1].0;
            if block.iter().fold(true, |all, v| all & (*v <= kth)) {
                continue;
            }
        }
        for (j, &v) in block.iter().enumerate() {
            let i = b * SKIP_BLOCK + j;
            if Some(i) == skip || v.is_nan() || (top.len() == k && v <= top[k - 1].0) {
                continue;
            }
            let at = top.partition_point(|t| t.0 >= v);
            top.insert(at, (v, i));
            top.truncate(k);
        }
    }
    top.into_iter().map(|(_, i)| i).collect()
}

/// The `k`-th largest value of `values` (`-∞` when there are fewer). One pass that keeps the
/// `k` largest so far; past the first few rows almost every value falls below them.
fn kth_largest(values: &[f32], k: usize) -> f32 {
    let mut top: Vec<f32> = Vec::with_capacity(k + 1);
    for block in values.chunks(SKIP_BLOCK) {
        if top.len() == k {
            let kth = top[k - 1];
            if block.iter().fold(true, |all, v| all & (*v <= kth)) {
                continue;
            }
        }
        for &v in block {
            if top.len() == k && v <= top[k - 1] {
                continue;
            }
            let at = top.partition_point(|t| *t >= v);
            top.insert(at, v);
            top.truncate(k);
        }
    }
    if top.len() == k {
        top[k - 1]
    } else {
        f32::NEG_INFINITY
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::cluster::index::tests::{seeded_unit, unit};

    #[test]
    fn kth_largest_skips_blocks_without_changing_the_answer() {
        for n in [0usize, 1, 15, 16, 17, 40, 1000] {
            // Ties and a rising tail, so later blocks do hold new winners.
            let values: Vec<f32> = (0..n)
                .map(|i| ((i * 7919) % 97) as f32 / 97.0 + if i > n / 2 { 0.5 } else { 0.0 })
                .collect();
            let mut sorted = values.clone();
            sorted.sort_by(|a, b| b.total_cmp(a));
            for k in [1, 2, 4, 8] {
                let want = sorted.get(k - 1).copied().unwrap_or(f32::NEG_INFINITY);
                assert_eq!(kth_largest(&values, k), want, "n {n} k {k}");
            }
        }
    }

    #[test]
    fn batched_top_k_agrees_with_single_scans() {
        let dim = 16;
        let mut idx = ExactScanIndex::new(dim);
        let vector = |seed: u64| -> Vec<f32> {
            let raw: Vec<f32> = (0..dim as u64)
                .map(|i| ((seed * 31 + i * 17) % 23) as f32 - 11.0)
                .collect();
            unit(&raw)
        };
        for id in 1..=700u64 {
            idx.upsert(id, &vector(id));
        }
        let queries: Vec<Vec<f32>> = (1000..1040).map(vector).collect();
        let refs: Vec<&[f32]> = queries.iter().map(|q| q.as_slice()).collect();
        let top = idx.top_k_batch(&refs, 3).unwrap();
        for (q, top) in queries.iter().zip(&top) {
            assert_eq!(top.len(), 3);
            assert_eq!(Some(top[0]), idx.scan(q, None));
            assert!(top[0].1 >= top[1].1 && top[1].1 >= top[2].1);
            assert_eq!(Some(top[1]), idx.scan(q, Some(top[0].0)));
        }
    }

    #[test]
    fn the_screen_gives_the_plain_scans_answers_ties_included() {
        let dim = 64;
        let vector = |seed: u64| seeded_unit(seed, dim);
        let mut screened = ExactScanIndex::new(dim);
        let mut plain = ExactScanIndex::new(dim).with_screen(false);
        let mut upsert = |id: u64, v: &[f32]| {
            screened.upsert(id, v);
            plain.upsert(id, v);
        };
        for id in 1..=1200u64 {
            upsert(id, &vector(id));
        }
        // Exact duplicates under other ids (ties go to the older id), and near-duplicates
        // that differ from a row in one component by less than a code step.
        for id in 1201..=1260u64 {
            upsert(id, &vector(id - 1200));
        }
        for id in 1261..=1320u64 {
            let mut v = vector(id - 1200);
            v[3] += 1e-4;
            upsert(id, &unit(&v));
        }
        // Moves and removals keep the int8 rows in step with the f32 rows.
        for id in (1..=1200u64).step_by(7) {
            upsert(id, &vector(id + 5000));
        }
        for id in (2..=1200u64).step_by(11) {
            screened.remove(id);
            plain.remove(id);
        }
        assert!(screened.len() >= SCREEN_MIN_ROWS);
        let queries: Vec<Vec<f32>> = (9000..9100)
            .map(vector)
            .chain((1..=60).map(vector))
            .collect();
        for q in &queries {
            for exclude in [None, Some(1), plain.scan(q, None).map(|b| b.0)] {
                assert_eq!(screened.scan(q, exclude), plain.scan(q, exclude));
            }
        }
        let refs: Vec<&[f32]> = queries.iter().map(|q| q.as_slice()).collect();
        assert_eq!(screened.top_k_batch(&refs, 4), plain.top_k_batch(&refs, 4));
        assert_eq!(kth_largest(&[1.0, 3.0, 2.0], 2), 2.0);
        assert_eq!(kth_largest(&[1.0], 2), f32::NEG_INFINITY);
    }

    #[test]
    fn the_prefix_pass_gives_the_plain_scans_answers_at_every_floor() {
        use crate::cluster::index::screen::tests::decaying;
        let dim = 256;
        let mut screened = ExactScanIndex::new(dim);
        let mut plain = ExactScanIndex::new(dim).with_screen(false);
        let mut upsert = |id: u64, v: &[f32]| {
            screened.upsert(id, v);
            plain.upsert(id, v);
        };
        // Members of 300 groups, so queries have near neighbours above the floors tried.
        let centre = |g: u64| decaying(g, dim);
        let member = |id: u64| {
            let c = centre(id % 300);
            let noise = decaying(id + 100_000, dim);
            unit(
                &c.iter()
                    .zip(&noise)
                    .map(|(a, b)| a + 0.4 * b)
                    .collect::<Vec<_>>(),
            )
        };
        for id in 1..=1500u64 {
            upsert(id, &member(id));
        }
        // Exact duplicates under newer ids (ties), and moves and removals.
        for id in 1501..=1540u64 {
            upsert(id, &member(id - 1500));
        }
        for id in (1..=1500u64).step_by(9) {
            upsert(id, &member(id + 7000));
        }
        for id in (2..=1500u64).step_by(13) {
            screened.remove(id);
            plain.remove(id);
        }
        let queries: Vec<Vec<f32>> = (20_000..20_150)
            .map(member)
            .chain((1..=40).map(member))
            .collect();
        // Queries with equal variance in every dimension come last: they make the pass rest.
        let uniform: Vec<Vec<f32>> = (0..10).map(|s| seeded_unit(s + 50_000, dim)).collect();
        let mut reached = 0;
        for q in queries.iter().chain(&uniform) {
            let best = plain.scan(q, None).map(|b| b.0);
            for exclude in [None, Some(1), best] {
                let want = plain.scan(q, exclude);
                assert_eq!(screened.scan(q, exclude), want);
                for floor in [0.0, 0.5, 0.62, 0.85, 0.99] {
                    let want = want.filter(|(_, s)| *s >= floor);
                    reached += usize::from(want.is_some());
                    assert_eq!(screened.nearest_reaching(q, exclude, floor), want);
                    assert_eq!(plain.nearest_reaching(q, exclude, floor), want);
                }
            }
            if q.as_ptr() == queries[queries.len() - 1].as_ptr() {
                // The prefix pass did the work: it never rested, and it read few rows whole.
                assert!(!screened.prefix_policy.resting());
                let survival = screened.prefix_survival().unwrap();
                assert!(survival < 0.3, "{survival} of rows read whole");
            }
        }
        assert!(reached > 500, "too few queries reach a floor: {reached}");
        let refs: Vec<&[f32]> = queries.iter().map(|q| q.as_slice()).collect();
        screened.prefix_policy.rest.store(0, Ordering::Relaxed);
        for floor in [f32::NEG_INFINITY, 0.62, 0.85] {
            assert_eq!(
                screened.top_k_batch_reaching(&refs, 4, floor),
                plain.top_k_batch_reaching(&refs, 4, floor)
            );
        }
    }

    #[test]
    fn the_prefix_pass_rests_when_its_bound_is_loose() {
        // Equal variance in every dimension: the tail bound prunes almost nothing.
        let dim = 256;
        let mut idx = ExactScanIndex::new(dim);
        for id in 1..=800u64 {
            idx.upsert(id, &seeded_unit(id, dim));
        }
        // A whole window of such queries, each still answered exactly, and then it rests.
        for seed in 0..PREFIX_WINDOW_QUERIES as u64 {
            assert!(!idx.prefix_policy.resting(), "rested after {seed} queries");
            let q = seeded_unit(9000 + seed, dim);
            assert_eq!(idx.scan(&q, None), idx.scan_all(&q, None));
        }
        let rest = |idx: &ExactScanIndex| idx.prefix_policy.rest.load(Ordering::Relaxed);
        assert_eq!(rest(&idx), PREFIX_REST_QUERIES);
        let q = seeded_unit(99, dim);
        assert_eq!(idx.scan(&q, None), idx.scan_all(&q, None));
        assert_eq!(rest(&idx), PREFIX_REST_QUERIES - 1);
        assert!(idx.prefix_survival().unwrap() > PREFIX_MAX_SURVIVING);
    }

    #[test]
    fn finds_the_most_similar_centroid_and_survives_removal() {
        let mut idx = ExactScanIndex::new(3);
        assert!(idx.nearest(&[1.0, 0.0, 0.0]).is_none());
        idx.upsert(1, &unit(&[1.0, 0.0, 0.0]));
        idx.upsert(2, &unit(&[0.0, 1.0, 0.0]));
        idx.upsert(3, &unit(&[0.0, 0.0, 1.0]));
        let (id, sim) = idx.nearest(&unit(&[0.1, 0.9, 0.0])).unwrap();
        assert_eq!(id, 2);
        assert!(sim > 0.9);
        idx.remove(1);
        assert_eq!(idx.len(), 2);
        assert_eq!(idx.nearest(&unit(&[0.0, 0.1, 1.0])).unwrap().0, 3);
        idx.upsert(3, &unit(&[1.0, 0.0, 0.0]));
        assert_eq!(idx.nearest(&unit(&[1.0, 0.0, 0.1])).unwrap().0, 3);
        idx.remove(42);
        assert_eq!(idx.len(), 2);
    }
}
