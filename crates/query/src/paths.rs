//! `query paths`: the most frequent sequences of events or pages after a start event or
//! before an end event (ranked, and as Sankey nodes and links), and per-person channel
//! journeys: the ordered channels of a person's sessions up to a conversion.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};
use throughline_classify::Rules;
use throughline_kernels::sessions;
use throughline_model::{EventType, Millis};

/// Path labels interned: ids while counting, strings for the answer.
use crate::intern::Names as Labels;
use crate::rows::{load, Load, Scan};
use crate::sessions::{is_visit, Attributor, CodePack, TOUCH_DIMS};
use crate::source::Source;
use crate::spec::{parse_duration, parse_time_bound, MaskTable, StepMatcher};
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

pub fn run(snap: &Source, rules: &Rules, req: &PathsRequest) -> Result<PathsResponse, QueryError> {
    run_with(snap, rules, req, true)
}

/// [`run`], with `scan: false` reading channel journeys from the table of every visit
/// (what the scan must equal).
pub(crate) fn run_with(
    snap: &Source,
    rules: &Rules,
    req: &PathsRequest,
    scan: bool,
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
    // Paths are label ids until the end: path -> (persons, conversions, nulls).
    let mut labels = Labels::default();
    let mut counts: HashMap<Vec<u32>, (u64, u64, u64)> = HashMap::new();
    let mut persons = 0u64;
    let only = crate::filter::persons(req.filter.as_ref(), snap, rules, from, to)?;
    match of.as_str() {
        "events" => {
            let anchor = start.as_ref().or(end.as_ref());
            // With an anchor event, a first narrow pass finds the persons who did it, so
            // the full pass keeps only their rows.
            let with_anchor: Option<HashSet<u32>> = match anchor {
                None => None,
                Some(a) => {
                    let dims: &[usize] = if a.needs_path() { &[0, 1] } else { &[0] };
                    let scan = Scan::new(snap, from, to, dims)?;
                    let paths = a.needs_path().then(|| scan.dict(1));
                    let hits = MaskTable::new(&[(1, a)], scan.dict(0), paths);
                    let found = scan.run(
                        only.as_ref(),
                        |kind, codes| hits.of(kind, codes),
                        Vec::new,
                        |found: &mut Vec<u32>, r| found.push(r.person),
                    )?;
                    Some(found.into_iter().flatten().collect())
                }
            };
            let with_anchor = crate::filter::both(with_anchor, only.as_ref());
            let scan = Scan::new(snap, from, to, &[0, 1])?;
            let table = LabelTable::new(&scan, &mut labels);
            let hits = anchor.map(|a| MaskTable::new(&[(1, a)], scan.dict(0), Some(scan.dict(1))));
            // Tag: label id + 1, and bit 32 when the row is an anchor event.
            let tag = |kind: u8, codes: &[u32]| -> u64 {
                let anchor = hits.as_ref().map_or(0, |h| h.of(kind, codes));
                (table.of(kind, codes) as u64 + 1) | (anchor << 32)
            };
            let from_start = start.is_some();
            let by_end = end.is_some();
            let parts = scan.run(
                with_anchor.as_ref(),
                tag,
                || (HashMap::<Vec<u32>, u64>::new(), 0u64, Vec::<u32>::new()),
                |(counts, persons, path), r| {
                    let is_anchor = |i: usize| r.tag[i] >> 32 != 0;
                    let range = if from_start {
                        match (0..r.tag.len()).find(|&i| is_anchor(i)) {
                            Some(a) => a..r.tag.len(),
                            None => return,
                        }
                    } else if by_end {
                        match (0..r.tag.len()).find(|&i| is_anchor(i)) {
                            Some(z) => 0..z + 1,
                            None => return,
                        }
                    } else {
                        0..r.tag.len()
                    };
                    // Consecutive repeats (reloads, several page views of one page) are one step.
                    path.clear();
                    for i in range {
                        let l = (r.tag[i] as u32) - 1;
                        if path.last() != Some(&l) {
                            path.push(l);
                        }
                    }
                    if by_end {
                        let cut = path.len().saturating_sub(depth);
                        path.drain(..cut);
                    } else {
                        path.truncate(depth);
                    }
                    *persons += 1;
                    match counts.get_mut(path.as_slice()) {
                        Some(n) => *n += 1,
                        None => {
                            counts.insert(path.clone(), 1);
                        }
                    }
                },
            )?;
            for (part, n, _) in parts {
                persons += n;
                for (path, k) in part {
                    counts.entry(path).or_default().0 += k;
                }
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
            let journeys = match scan {
                true => channel_journeys_scan(
                    snap,
                    rules,
                    (from, to),
                    only.as_ref(),
                    &conversion,
                    timeout,
                    depth,
                )?,
                false => None,
            };
            if let Some((parts, n)) = journeys {
                persons = n;
                for (local, part) in parts {
                    let ids: Vec<u32> = (0..local.len() as u32)
                        .map(|l| labels.id(local.name(l)))
                        .collect();
                    for (path, c) in part {
                        let path: Vec<u32> = path.iter().map(|&l| ids[l as usize]).collect();
                        let e = counts.entry(path).or_default();
                        e.0 += c.0;
                        e.1 += c.1;
                        e.2 += c.2;
                    }
                }
                return Ok(answer(of, persons, counts, &labels, limit));
            }
            // A journey reads visits (its sessions) and the conversion event alone.
            let rows = load(
                snap,
                &Load {
                    from,
                    to,
                    dims: TOUCH_DIMS.to_vec(),
                    keep: Some(Box::new(|kind, v| {
                        is_visit(kind, v[1].is_some()) || conversion.matches_event(kind, v[0], v[1])
                    })),
                    keep_reads: Some(vec![0, 1]),
                    persons: only.as_ref(),
                },
            )?;
            let (names, paths) = (rows.dim(0), rows.dim(1));
            let mut attributor = Attributor::new(rules);
            // The channel label id of each of the attributor's touches.
            let mut channel_of: Vec<u32> = Vec::new();
            let mut visits: Vec<usize> = Vec::new();
            let mut ts: Vec<i64> = Vec::new();
            let mut path: Vec<u32> = Vec::new();
            for r in rows.persons() {
                let conv = r
                    .clone()
                    .find(|&i| conversion.matches_event(rows.kind[i], names.get(i), paths.get(i)));
                let end = conv.map_or(r.end, |c| c + 1);
                // Sessions of the visits before (and including) the conversion.
                visits.clear();
                visits.extend((r.start..end).filter(|&i| {
                    is_visit(rows.kind[i], paths.codes[i] != throughline_store::NO_VALUE)
                }));
                ts.clear();
                ts.extend(visits.iter().map(|&i| rows.ts[i]));
                path.clear();
                sessions::split(&ts, timeout, |a, _| {
                    let t = attributor.attribute(&rows, visits[a]);
                    while channel_of.len() <= t {
                        let c = &attributor.touch(channel_of.len()).channel;
                        channel_of.push(labels.id(c));
                    }
                    path.push(channel_of[t]);
                });
                if path.is_empty() {
                    continue;
                }
                path.truncate(DEPTH_MAX.max(depth));
                persons += 1;
                let c = counts.entry(path.clone()).or_default();
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
    Ok(answer(of, persons, counts, &labels, limit))
}

/// Counts of channel journeys by path (labels numbered per part: `Labels` gives their
/// names), with (persons, conversions, nulls) each.
type JourneyPart = (Labels, HashMap<Vec<u32>, (u64, u64, u64)>);

/// The channel journeys as one streaming scan, persons in parallel, where the touch's
/// codes fit the scan tag ([`CodePack`]): bit 0 marks a visit, bit 63 the conversion.
/// The parts and the persons with a journey; `None` when the codes do not fit.
fn channel_journeys_scan(
    snap: &Source,
    rules: &Rules,
    (from, to): (Option<Millis>, Option<Millis>),
    only: Option<&HashSet<u32>>,
    conversion: &StepMatcher,
    timeout: Millis,
    depth: usize,
) -> Result<Option<(Vec<JourneyPart>, u64)>, QueryError> {
    const CONVERSION_BIT: u64 = 1 << 63;
    // Name and path (a conversion's match, a visit's path), then the touch's dimensions.
    let scan = Scan::new(snap, from, to, &TOUCH_DIMS)?;
    let touch_dicts: [&[String]; 6] = std::array::from_fn(|k| scan.dict(k + 2));
    let Some(pack) = CodePack::new(&[2, 3, 4, 5, 6, 7], |j| scan.dict(j).len()) else {
        return Ok(None);
    };
    let converts = MaskTable::new(&[(1, conversion)], scan.dict(0), Some(scan.dict(1)));
    let tag = |kind: u8, codes: &[u32]| -> u64 {
        let visit = if is_visit(kind, codes[1] != throughline_store::NO_VALUE) {
            pack.pack(codes)
        } else {
            0
        };
        visit | (converts.of(kind, codes) << 63)
    };
    #[derive(Default)]
    struct Part {
        labels: Labels,
        counts: HashMap<Vec<u32>, (u64, u64, u64)>,
        persons: u64,
        /// The channel label id of each of the attributor's touches.
        channel_of: Vec<u32>,
        visit_ts: Vec<Millis>,
        visit_tag: Vec<u64>,
        path: Vec<u32>,
    }
    let parts = scan.run(
        only,
        tag,
        || (Attributor::new(rules), Part::default()),
        |(attributor, part): &mut (Attributor, Part), r| {
            let conv = (0..r.tag.len()).find(|&i| r.tag[i] & CONVERSION_BIT != 0);
            let end = conv.map_or(r.tag.len(), |c| c + 1);
            // Sessions of the visits before (and including) the conversion.
            part.visit_ts.clear();
            part.visit_tag.clear();
            for i in 0..end {
                if r.tag[i] & 1 != 0 {
                    part.visit_ts.push(r.ts[i]);
                    part.visit_tag.push(r.tag[i]);
                }
            }
            part.path.clear();
            let Part {
                labels,
                channel_of,
                visit_ts,
                visit_tag,
                path,
                ..
            } = part;
            sessions::split(visit_ts, timeout, |a, _| {
                let codes = pack.unpack(visit_tag[a]);
                let t = attributor.attribute_dicts(&codes, &touch_dicts);
                while channel_of.len() <= t {
                    let c = &attributor.touch(channel_of.len()).channel;
                    channel_of.push(labels.id(c));
                }
                path.push(channel_of[t]);
            });
            if part.path.is_empty() {
                return;
            }
            part.path.truncate(DEPTH_MAX.max(depth));
            part.persons += 1;
            let c = part.counts.entry(part.path.clone()).or_default();
            c.0 += 1;
            if conv.is_some() {
                c.1 += 1;
            } else {
                c.2 += 1;
            }
        },
    )?;
    let persons = parts.iter().map(|(_, p)| p.persons).sum();
    Ok(Some((
        parts
            .into_iter()
            .map(|(_, p)| (p.labels, p.counts))
            .collect(),
        persons,
    )))
}

/// The answer from the counts: paths ranked by persons (then by their labels), the top
/// `limit` listed with their strings, and the Sankey nodes and links between them.
fn answer(
    of: String,
    persons: u64,
    counts: HashMap<Vec<u32>, (u64, u64, u64)>,
    labels: &Labels,
    limit: usize,
) -> PathsResponse {
    // Ranked by persons, then by the path's labels; strings only for what is listed.
    let mut ranked: Vec<(Vec<u32>, (u64, u64, u64))> = counts.into_iter().collect();
    ranked.sort_by(|a, b| {
        b.1 .0
            .cmp(&a.1 .0)
            .then_with(|| labels.cmp_paths(&a.0, &b.0))
    });
    ranked.truncate(limit);
    let ranked: Vec<(Vec<String>, (u64, u64, u64))> = ranked
        .into_iter()
        .map(|(p, c)| (p.iter().map(|&l| labels.name(l).to_string()).collect(), c))
        .collect();
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
    PathsResponse {
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
    }
}

impl Labels {
    /// Paths compared as their lists of label strings.
    fn cmp_paths(&self, a: &[u32], b: &[u32]) -> std::cmp::Ordering {
        a.iter()
            .map(|&l| self.name(l))
            .cmp(b.iter().map(|&l| self.name(l)))
    }
}

/// The label of an event in a path, by codes: page and screen views are `page:` and their
/// path (else their name, else `(not set)`); other events their name, else their type.
struct LabelTable {
    path: Vec<u32>,
    view_name: Vec<u32>,
    view_none: u32,
    name: Vec<u32>,
    kind: [u32; 8],
}

impl LabelTable {
    /// For a scan of dimensions `[0, 1]` (name, path).
    fn new(scan: &Scan, labels: &mut Labels) -> LabelTable {
        let names = scan.dict(0);
        let paths = scan.dict(1);
        LabelTable {
            path: paths
                .iter()
                .map(|p| labels.id(&format!("page:{p}")))
                .collect(),
            view_name: names
                .iter()
                .map(|n| labels.id(&format!("page:{n}")))
                .collect(),
            view_none: labels.id("page:(not set)"),
            name: names.iter().map(|n| labels.id(n)).collect(),
            kind: std::array::from_fn(|k| {
                labels.id(EventType::from_code(k as u8).map_or("event", |t| t.as_str()))
            }),
        }
    }

    #[inline]
    fn of(&self, kind: u8, codes: &[u32]) -> u32 {
        let (name, path) = (codes[0] as usize, codes[1] as usize);
        if kind == EventType::Page.code() || kind == EventType::Screen.code() {
            if let Some(&l) = self.path.get(path) {
                return l;
            }
            return self.view_name.get(name).copied().unwrap_or(self.view_none);
        }
        self.name
            .get(name)
            .copied()
            .unwrap_or(self.kind[kind as usize % 8])
    }
}
