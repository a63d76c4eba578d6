//! Length-sorted sub-batching for the transformer embedders (MiniLM and e5).
//!
//! A batch is run through the model in sub-batches padded to their longest member, so one long
//! text must not make every short one pay for its length. Items are sorted longest first and cut
//! into sub-batches of at most `max_items` whose padded size (items × longest length) stays
//! within `max_tokens`; vectors come back in input order.

use super::EmbedError;

/// Runs `forward` over length-sorted sub-batches of `items` and returns one vector per item, in
/// input order. `forward` must return one vector per item it is given.
pub fn embed_length_sorted<T: Default>(
    mut items: Vec<T>,
    len: impl Fn(&T) -> usize,
    max_tokens: usize,
    max_items: usize,
    mut forward: impl FnMut(Vec<T>) -> Result<Vec<Vec<f32>>, EmbedError>,
) -> Result<Vec<Vec<f32>>, EmbedError> {
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(len(&items[i])));

    let mut out: Vec<Vec<f32>> = vec![Vec::new(); items.len()];
    let mut start = 0;
    while start < order.len() {
        let longest = len(&items[order[start]]).max(1);
        let take = (max_tokens / longest)
            .clamp(1, max_items)
            .min(order.len() - start);
        let chunk = &order[start..start + take];
        start += take;
        let sub: Vec<T> = chunk
            .iter()
            .map(|&i| std::mem::take(&mut items[i]))
            .collect();
        let vectors = forward(sub)?;
        if vectors.len() != chunk.len() {
            return Err(EmbedError::Inference(format!(
                "model returned {} vectors for {} texts",
                vectors.len(),
                chunk.len()
            )));
        }
        for (&i, v) in chunk.iter().zip(vectors) {
            out[i] = v;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_batches_respect_both_bounds_and_results_keep_input_order() {
        let items: Vec<Vec<u32>> = [3usize, 10, 1, 7, 7, 2]
            .iter()
            .enumerate()
            .map(|(i, &n)| vec![i as u32; n])
            .collect();
        let mut sizes = Vec::new();
        let out = embed_length_sorted(items, Vec::len, 14, 3, |sub| {
            sizes.push((sub.len(), sub.iter().map(Vec::len).max().unwrap()));
            Ok(sub.iter().map(|s| vec![s[0] as f32]).collect())
        })
        .unwrap();
        assert_eq!(out, (0..6).map(|i| vec![i as f32]).collect::<Vec<_>>());
        assert!(sizes
            .iter()
            .all(|&(n, longest)| n <= 3 && (n == 1 || n * longest <= 14)));
        assert_eq!(sizes.iter().map(|s| s.0).sum::<usize>(), 6);
    }

    #[test]
    fn a_model_returning_the_wrong_count_is_an_error() {
        let err = embed_length_sorted(vec![vec![1u32]], Vec::len, 8, 4, |_| Ok(Vec::new()));
        assert!(matches!(err, Err(EmbedError::Inference(_))));
    }
}
