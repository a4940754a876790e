//! The request rate a client kept to, measured from the simulator's request log.

use std::time::{Duration, Instant};

/// The most requests that arrived within any window of `width` (windows start at a request,
/// so the busiest one is among them). `times` need not be sorted.
pub fn max_in_window(times: &[Instant], width: Duration) -> usize {
    let mut sorted = times.to_vec();
    sorted.sort();
    let mut most = 0;
    let mut end = 0;
    for (start, &at) in sorted.iter().enumerate() {
        while end < sorted.len() && sorted[end].duration_since(at) < width {
            end += 1;
        }
        most = most.max(end - start);
    }
    most
}

/// What a token bucket of `rate` per second and `burst` lets through in any window of
/// `width`: the burst plus the rate over the window.
pub fn bucket_bound(rate: u32, burst: u32, width: Duration) -> usize {
    burst as usize + (f64::from(rate) * width.as_secs_f64()).floor() as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_the_busiest_window() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // A window is half-open: the request at 1000 ms is not in the one starting at 0.
        let times = [at(1000), at(0), at(400), at(999), at(5000)];
        assert_eq!(max_in_window(&times, Duration::from_secs(1)), 3);
        assert_eq!(max_in_window(&times, Duration::from_millis(500)), 2);
        assert_eq!(max_in_window(&[], Duration::from_secs(1)), 0);
    }

    #[test]
    fn the_bound_is_burst_plus_rate_over_the_window() {
        assert_eq!(bucket_bound(10, 20, Duration::from_secs(1)), 30);
        assert_eq!(bucket_bound(10, 20, Duration::from_secs(60)), 620);
    }
}
