//! `query paths`: the most frequent sequences of events or pages after a start event or
//! before an end event (ranked, and as Sankey nodes and links), and per-person channel
//! journeys: the ordered channels of a person's sessions up to a conversion.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use throughline_classify::Rules;
use throughline_kernels::sessions;
use throughline_model::EventType;
use throughline_store::Snapshot;

use crate::rows::{load, Load};
use crate::sessions::{is_visit, Attributor};
use crate::spec::{parse_duration, parse_time_bound, StepMatcher};
use crate::QueryError;

pub const DEPTH_MAX: usize = 20;
pub const LIMIT_MAX: usize = 1000;

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PathsRequest {
    /// `events` (default: event names, page views as `page:/path`), or `channels`.
    #[serde(default)]
    pub of: Option<String>,
    /// Paths starting at each person's first occurrence of this event.
    #[serde(default)]
    pub start: Option<String>,
    /// Paths ending at each person's first occurrence of this event.
    #[serde(default)]
    pub end: Option<String>,
    /// For `channels`: the conversion event that ends a journey.
    #[serde(default)]
    pub conversion: Option<String>,
    #[serde(default)]
    pub depth: Option<usize>,
    #[serde(default)]
    pub limit: Option<usize>,
    #[serde(default)]
    pub timeout: Option<String>,
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub to: Option<String>,
    /// Only persons whose first touch in range has these values (see [`crate::filter`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<crate::filter::Filter>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct PathRow {
    pub path: Vec<String>,
    pub persons: u64,
    /// For channel journeys: persons whose journey ended in the conversion.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conversions: Option<u64>,
    /// For channel journeys: persons on this path who never converted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nulls: Option<u64>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct SankeyNode {
    /// `step:label`, unique per position so the diagram never loops.
    pub id: String,
    pub step: usize,
    pub label: String,
    pub persons: u64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct SankeyLink {
    pub source: String,
    pub target: String,
    pub persons: u64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct PathsResponse {
    pub of: String,
    pub persons: u64,
    pub paths: Vec<PathRow>,
    pub nodes: Vec<SankeyNode>,
    pub links: Vec<SankeyLink>,
}

pub fn run(
    snap: &Snapshot,
    rules: &Rules,
    req: &PathsRequest,
) -> Result<PathsResponse, QueryError> {
    let depth = req.depth.unwrap_or(5);
    if depth == 0 || depth > DEPTH_MAX {
        return Err(QueryError::invalid(format!(
            "depth must be between 1 and {DEPTH_MAX}"
        )));
    }
    let limit = req.limit.unwrap_or(20).clamp(1, LIMIT_MAX);
    let from = req.from.as_deref().map(parse_time_bound).transpose()?;
    let to = req.to.as_deref().map(parse_time_bound).transpose()?;
    let of = req.of.clone().unwrap_or_else(|| "events".into());
    let start = req.start.as_deref().map(StepMatcher::parse).transpose()?;
    let end = req.end.as_deref().map(StepMatcher::parse).transpose()?;
    if start.is_some() && end.is_some() {
        return Err(QueryError::invalid("give `start` or `end`, not both"));
    }
    // path -> (persons, conversions, nulls)
    let mut counts: HashMap<Vec<String>, (u64, u64, u64)> = HashMap::new();
    let mut persons = 0u64;
    let only = crate::filter::persons(req.filter.as_ref(), snap, rules, from, to)?;
    match of.as_str() {
        "events" => {
            // With an anchor event, a first narrow pass finds the persons who did it, so
            // the full pass reads only their rows.
            let anchor = start.as_ref().or(end.as_ref());
            let with_anchor: Option<std::collections::HashSet<u32>> = match anchor {
                None => None,
                Some(a) => {
                    let hits = load(
                        snap,
                        &Load {
                            from,
                            to,
                            dims: vec![0, 1],
                            keep: Some(Box::new(|kind, v| a.matches_event(kind, v[0], v[1]))),
                            persons: only.as_ref(),
                        },
                    )?;
                    Some(hits.person.into_iter().collect())
                }
            };
            let with_anchor = crate::filter::both(with_anchor, only.as_ref());
            let rows = load(
                snap,
                &Load {
                    from,
                    to,
                    dims: vec![0, 1],
                    keep: None,
                    persons: with_anchor.as_ref(),
                },
            )?;
            let (names, paths) = (rows.dim(0), rows.dim(1));
            let page = EventType::Page.code();
            let screen = EventType::Screen.code();
            let label = |i: usize| -> String {
                if rows.kind[i] == page || rows.kind[i] == screen {
                    match paths.get(i) {
                        Some(p) => format!("page:{p}"),
                        None => format!("page:{}", names.get(i).unwrap_or("(not set)")),
                    }
                } else {
                    names
                        .get(i)
                        .unwrap_or(
                            EventType::from_code(rows.kind[i]).map_or("event", |t| t.as_str()),
                        )
                        .to_string()
                }
            };
            for r in rows.persons() {
                let matches = |m: &StepMatcher, i: usize| {
                    m.matches_event(rows.kind[i], names.get(i), paths.get(i))
                };
                let range: Vec<usize> = match (&start, &end) {
                    (Some(s), _) => match r.clone().find(|&i| matches(s, i)) {
                        Some(a) => (a..r.end).collect(),
                        None => continue,
                    },
                    (_, Some(e)) => match r.clone().find(|&i| matches(e, i)) {
                        Some(z) => (r.start..=z).collect(),
                        None => continue,
                    },
                    _ => r.clone().collect(),
                };
                // Consecutive repeats (reloads, several page views of one page) are one step.
                let mut path: Vec<String> = Vec::new();
                for i in range {
                    let l = label(i);
                    if path.last() != Some(&l) {
                        path.push(l);
                    }
                }
                if end.is_some() {
                    let cut = path.len().saturating_sub(depth);
                    path.drain(..cut);
                } else {
                    path.truncate(depth);
                }
                persons += 1;
                counts.entry(path).or_default().0 += 1;
            }
        }
        "channels" => {
            let conversion = req
                .conversion
                .as_deref()
                .map(StepMatcher::parse)
                .transpose()?
                .ok_or_else(|| QueryError::invalid("channel journeys need a `conversion` event"))?;
            let timeout = parse_duration(req.timeout.as_deref().unwrap_or("30m"))?;
            let rows = load(
                snap,
                &Load {
                    from,
                    to,
                    dims: vec![0, 1, 2, 3, 4, 5, 7, 8],
                    keep: None,
                    persons: only.as_ref(),
                },
            )?;
            let (names, paths) = (rows.dim(0), rows.dim(1));
            let mut attributor = Attributor::new(rules);
            for r in rows.persons() {
                let conv = r
                    .clone()
                    .find(|&i| conversion.matches_event(rows.kind[i], names.get(i), paths.get(i)));
                let end = conv.map_or(r.end, |c| c + 1);
                // Sessions of the visits before (and including) the conversion.
                let visits: Vec<usize> = (r.start..end)
                    .filter(|&i| {
                        is_visit(rows.kind[i], paths.codes[i] != throughline_store::NO_VALUE)
                    })
                    .collect();
                let ts: Vec<i64> = visits.iter().map(|&i| rows.ts[i]).collect();
                let mut path: Vec<String> = Vec::new();
                sessions::split(&ts, timeout, |a, _| {
                    let t = attributor.attribute(&rows, visits[a]);
                    path.push(attributor.touch(t).channel.clone());
                });
                if path.is_empty() {
                    continue;
                }
                path.truncate(DEPTH_MAX.max(depth));
                persons += 1;
                let c = counts.entry(path).or_default();
                c.0 += 1;
                if conv.is_some() {
                    c.1 += 1;
                } else {
                    c.2 += 1;
                }
            }
        }
        other => {
            return Err(QueryError::invalid(format!(
                "unknown path kind {other:?}: use events or channels"
            )))
        }
    }
    let mut ranked: Vec<(Vec<String>, (u64, u64, u64))> = counts.into_iter().collect();
    ranked.sort_by(|a, b| b.1 .0.cmp(&a.1 .0).then_with(|| a.0.cmp(&b.0)));
    let journeys = of == "channels";
    // The Sankey diagram of the top paths: nodes per (position, label), links between them.
    // A node is (position, label).
    type Node = (usize, String);
    let mut nodes: HashMap<Node, u64> = HashMap::new();
    let mut links: HashMap<(Node, Node), u64> = HashMap::new();
    for (path, (n, _, _)) in ranked.iter().take(limit) {
        for (k, label) in path.iter().enumerate() {
            *nodes.entry((k, label.clone())).or_default() += n;
            if k + 1 < path.len() {
                *links
                    .entry(((k, label.clone()), (k + 1, path[k + 1].clone())))
                    .or_default() += n;
            }
        }
    }
    let id = |(k, l): &(usize, String)| format!("{k}:{l}");
    let mut nodes: Vec<SankeyNode> = nodes
        .into_iter()
        .map(|((k, l), persons)| SankeyNode {
            id: id(&(k, l.clone())),
            step: k,
            label: l,
            persons,
        })
        .collect();
    nodes.sort_by(|a, b| {
        a.step
            .cmp(&b.step)
            .then(b.persons.cmp(&a.persons))
            .then(a.label.cmp(&b.label))
    });
    let mut links: Vec<SankeyLink> = links
        .into_iter()
        .map(|((a, b), persons)| SankeyLink {
            source: id(&a),
            target: id(&b),
            persons,
        })
        .collect();
    links.sort_by(|a, b| {
        b.persons
            .cmp(&a.persons)
            .then(a.source.cmp(&b.source))
            .then(a.target.cmp(&b.target))
    });
    Ok(PathsResponse {
        of,
        persons,
        paths: ranked
            .into_iter()
            .take(limit)
            .map(|(path, (n, c, nulls))| PathRow {
                path,
                persons: n,
                conversions: journeys.then_some(c),
                nulls: journeys.then_some(nulls),
            })
            .collect(),
        nodes,
        links,
    })
}
