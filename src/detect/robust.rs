//! Robust location and scale (median and MAD), so thresholds are relative to the population the
//! detector actually sees rather than fixed magic numbers.

/// Median and MAD scaled to be consistent with a normal standard deviation (×1.4826).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RobustStats {
    pub median: f64,
    pub scale: f64,
    pub n: usize,
}

impl RobustStats {
    /// `None` for an empty sample.
    pub fn of(values: &[f64]) -> Option<Self> {
        if values.is_empty() {
            return None;
        }
        let median = median(&mut values.to_vec());
        let mut deviations: Vec<f64> = values.iter().map(|v| (v - median).abs()).collect();
        let mad = median_of(&mut deviations);
        Some(RobustStats {
            median,
            scale: 1.4826 * mad,
            n: values.len(),
        })
    }

    /// Robust z-score of `value`. A floor on the scale keeps a population of near-identical values
    /// from turning tiny differences into huge scores.
    pub fn z(&self, value: f64, min_scale: f64) -> f64 {
        (value - self.median) / self.scale.max(min_scale)
    }
}

fn median(values: &mut [f64]) -> f64 {
    median_of(values)
}

fn median_of(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_mad_ignore_outliers() {
        let s = RobustStats::of(&[1.0, 2.0, 3.0, 4.0, 100.0]).unwrap();
        assert_eq!(s.median, 3.0);
        assert!((s.scale - 1.4826).abs() < 1e-9);
        assert!(s.z(100.0, 0.01) > 50.0);
        assert!(RobustStats::of(&[]).is_none());
    }
}
