//! Sessions: a person's events split by inactivity.

use crate::Millis;

/// Calls `session(start, end)` with the index range of each session in `ts` (sorted
/// ascending): a gap longer than `timeout` starts a new one.
pub fn split(ts: &[Millis], timeout: Millis, mut session: impl FnMut(usize, usize)) {
    let mut start = 0;
    for i in 1..=ts.len() {
        if i == ts.len() || ts[i] - ts[i - 1] > timeout {
            session(start, i);
            start = i;
        }
    }
}

#[cfg(test)]
mod tests {
    fn sessions(ts: &[i64], timeout: i64) -> Vec<(usize, usize)> {
        let mut got = Vec::new();
        super::split(ts, timeout, |a, b| got.push((a, b)));
        got
    }

    #[test]
    fn splits_on_gaps_longer_than_the_timeout() {
        // A gap of exactly the timeout stays in the session.
        assert_eq!(sessions(&[0, 10, 40, 41, 100], 30), [(0, 4), (4, 5)]);
        assert_eq!(sessions(&[5], 30), [(0, 1)]);
        assert!(sessions(&[], 30).is_empty());
    }
}
