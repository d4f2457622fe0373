//! The channel/campaign filter every query kind takes (`"filter": {"channel": "Paid
//! Search", "campaign": "spring"}`): it restricts a query to the persons whose first
//! touch in the query's range has those values, the same first touch that `by` breakdowns
//! read ([`crate::sessions::first_touch`]). It owns only the choice of persons; each query
//! hands the set to [`crate::rows::load`] and is otherwise unchanged.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use throughline_classify::Rules;
use throughline_model::Millis;

use crate::source::Source;
use crate::QueryError;

/// Which persons a query counts. Every given value must match (`channel` and `campaign`
/// together mean both); values are those of the `by` breakdowns, so `"(not set)"` picks
/// first touches without a campaign.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// The channel group of the person's first touch, e.g. `Paid Search`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// The campaign of the person's first touch (`utm_campaign`, or one a channel rule
    /// names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub campaign: Option<String>,
}

impl Filter {
    /// The attributes the filter constrains, with their wanted values.
    fn constraints(&self) -> Vec<(&'static str, &str)> {
        [("channel", &self.channel), ("campaign", &self.campaign)]
            .into_iter()
            .filter_map(|(a, v)| v.as_deref().map(|v| (a, v)))
            .collect()
    }
}

/// The persons a filter keeps, or `None` (everyone) without a filter or with an empty one.
/// Persons without a visit in `[from, to)` have no first touch and are never kept.
pub fn persons(
    filter: Option<&Filter>,
    snap: &Source,
    rules: &Rules,
    from: Option<Millis>,
    to: Option<Millis>,
) -> Result<Option<HashSet<u32>>, QueryError> {
    let Some(filter) = filter else {
        return Ok(None);
    };
    let mut kept: Option<HashSet<u32>> = None;
    for (attribute, wanted) in filter.constraints() {
        let touches = crate::sessions::first_touch(snap, rules, from, to, attribute)?;
        let matching: HashSet<u32> = touches
            .iter()
            .filter(|(_, v)| *v == wanted)
            .map(|(&p, _)| p)
            .filter(|p| kept.as_ref().is_none_or(|k| k.contains(p)))
            .collect();
        kept = Some(matching);
    }
    Ok(kept)
}

/// Persons in both sets, where `None` is everyone: a query's own person set (e.g. those
/// who did a path's anchor event) narrowed by the filter's.
pub fn both(a: Option<HashSet<u32>>, b: Option<&HashSet<u32>>) -> Option<HashSet<u32>> {
    match (a, b) {
        (None, None) => None,
        (Some(a), None) => Some(a),
        (None, Some(b)) => Some(b.clone()),
        (Some(a), Some(b)) => Some(a.into_iter().filter(|p| b.contains(p)).collect()),
    }
}
