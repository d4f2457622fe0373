//! Retention: of the persons who first did the start event in a period, the share who
//! did the return event in each following period.

/// One person's cohort and returns. `period[i]` is the period index (day, week or month
/// number) of event i, ascending; `start[i]` and `ret[i]` say whether event i is a start
/// or a return event. Returns the cohort (period of the first start) and sets
/// `returned[p]` for p in 1..returned.len() when a return event happened in period
/// cohort + p, at or after the first start. `returned[0]` is always true: the cohort itself.
pub fn person(period: &[i32], start: &[bool], ret: &[bool], returned: &mut [bool]) -> Option<i32> {
    returned.fill(false);
    let first = start.iter().position(|&s| s)?;
    let cohort = period[first];
    if let Some(r) = returned.first_mut() {
        *r = true;
    }
    for i in first..period.len() {
        if ret[i] {
            let p = (period[i] - cohort) as usize;
            if p >= 1 && p < returned.len() {
                returned[p] = true;
            }
        }
    }
    Some(cohort)
}

#[cfg(test)]
mod tests {
    #[test]
    fn cohort_is_the_first_start_and_returns_count_after_it() {
        let mut r = [false; 4];
        let period = [0, 1, 1, 3, 5];
        let start = [false, true, false, false, false];
        let ret = [true, false, true, true, true];
        assert_eq!(super::person(&period, &start, &ret, &mut r), Some(1));
        // A return in the start period does not count as period 1; period 5 is past the end.
        assert_eq!(r, [true, false, true, false]);
        assert_eq!(super::person(&period, &[false; 5], &ret, &mut r), None);
    }
}
