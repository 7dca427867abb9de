//! `histogram_quantile` exactly as Prometheus computes it (linear
//! interpolation inside the bucket, the lower bound of the first bucket
//! taken as 0, the `+Inf` bucket answered with the highest finite bound), so
//! a report from two scrapes and a report from PromQL agree to the digit.

/// The `q` quantile of cumulative `buckets` (upper bound, cumulative count,
/// sorted, `+Inf` last). `None` when there are no observations.
pub fn histogram_quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    if buckets.len() < 2 || !buckets.last().is_some_and(|b| b.0.is_infinite()) {
        return None;
    }
    // Prometheus repairs non-monotonic counts (scrapes racing observations).
    let mut b: Vec<(f64, f64)> = Vec::with_capacity(buckets.len());
    let mut max = 0.0_f64;
    for &(le, c) in buckets {
        max = max.max(c);
        b.push((le, max));
    }
    let total = b.last()?.1;
    if total <= 0.0 || q.is_nan() {
        return None;
    }
    if q < 0.0 {
        return Some(f64::NEG_INFINITY);
    }
    if q > 1.0 {
        return Some(f64::INFINITY);
    }
    let rank = q * total;
    let i = b.iter().position(|&(_, c)| c >= rank)?;
    if i == b.len() - 1 {
        return Some(b[b.len() - 2].0);
    }
    if i == 0 && b[0].0 <= 0.0 {
        return Some(b[0].0);
    }
    let (start, below) = if i == 0 { (0.0, 0.0) } else { b[i - 1] };
    let (end, upto) = b[i];
    let count = upto - below;
    Some(start + (end - start) * ((rank - below) / count))
}

#[cfg(test)]
mod tests {
    use super::*;

    const INF: f64 = f64::INFINITY;

    #[test]
    fn interpolates_like_prometheus() {
        // 10 observations: 4 ≤ 1, 8 ≤ 2, 10 ≤ 4.
        let b = [(1.0, 4.0), (2.0, 8.0), (4.0, 10.0), (INF, 10.0)];
        assert_eq!(histogram_quantile(0.5, &b), Some(1.25));
        assert_eq!(histogram_quantile(0.2, &b), Some(0.5));
        assert_eq!(histogram_quantile(0.9, &b), Some(3.0));
        assert_eq!(histogram_quantile(1.0, &b), Some(4.0));
    }

    #[test]
    fn the_inf_bucket_answers_the_highest_finite_bound() {
        let b = [(1.0, 1.0), (2.0, 1.0), (INF, 10.0)];
        assert_eq!(histogram_quantile(0.99, &b), Some(2.0));
    }

    #[test]
    fn no_observations_or_no_inf_bucket_is_none() {
        assert_eq!(histogram_quantile(0.5, &[(1.0, 0.0), (INF, 0.0)]), None);
        assert_eq!(histogram_quantile(0.5, &[(1.0, 3.0), (2.0, 4.0)]), None);
        assert_eq!(histogram_quantile(0.5, &[]), None);
    }

    #[test]
    fn non_monotonic_counts_are_repaired() {
        let b = [(1.0, 5.0), (2.0, 4.0), (INF, 10.0)];
        assert_eq!(histogram_quantile(0.5, &b), Some(1.0));
    }
}
