//! The simplified Shapley value of Zhao, Mahboobi and Bagheri (2018): the coalition game
//! whose worth v(S) is the conversions (or value) of the journeys that touched only
//! labels in S. Its Shapley value has a closed form: every journey's conversions are
//! shared equally by the distinct labels it touched, so the cost is linear in the
//! journeys instead of exponential in the labels. Null journeys add nothing to any
//! coalition's worth, so they earn nothing; a label seen only on them gets zero.

use super::{Credit, PathTable};

pub fn shapley(paths: &PathTable, labels: usize) -> Credit {
    let mut credit = Credit::new(labels);
    let mut distinct: Vec<u32> = Vec::new();
    for p in paths
        .iter()
        .filter(|p| p.conversions > 0.0 || p.value > 0.0)
    {
        distinct.clear();
        distinct.extend_from_slice(p.touches);
        distinct.sort_unstable();
        distinct.dedup();
        if distinct.is_empty() {
            continue;
        }
        let k = distinct.len() as f64;
        for &t in &distinct {
            credit.conversions[t as usize] += p.conversions / k;
            credit.value[t as usize] += p.value / k;
        }
    }
    credit
}
