//! `query emotion`: how people feel along the journey. Survey answers (NPS, CSAT, CES) and
//! the sentiment of free text (survey comments, support messages), per journey stage (the
//! emotion map, with persons and drop-off so the moments of truth stand out) and by the
//! channel, asset or campaign of the touch before the answer, or over time.
//!
//! **Answers** are `Survey Responded` events (the name is a setting) with `survey` =
//! `nps` (score 0-10), `csat` (1-5) or `ces` (1-7, higher is easier: "X made it easy"),
//! `score`, and optionally `comment` and `stage`. Scores out of their scale are counted as
//! invalid and left out. **Texts** are the comments, and the `message` (else `comment`,
//! `body`, `text`, `description`) of the text events (`Support Ticket Opened`, `Support
//! Message Sent` by default), scored with VADER (`throughline_text::vader`).
//!
//! **Stages** come from [`crate::stages`]. An answer belongs to the stage its `stage`
//! property names, else to the stage of the person's latest staged event before it; a text
//! event belongs to its own stage when it has one. A stage's persons are those with an event
//! of it; `continued` are those with an event of a later stage after their first one, and
//! `drop_off = 1 - continued/persons` (none for the last stage).
//!
//! **The touch before** an answer is the first event of the person's latest session (visits
//! split by `timeout` of inactivity) that started at or before the answer: its channel
//! (the project's rules), its campaign and its asset (the `query assets` rule, named by the
//! registry).
//!
//! Fewer than `min_responses` answers (or texts) give `status: "not enough data"` and no
//! number. Intervals: see `throughline_kernels::stats` (t for NPS and means, Wilson for
//! CSAT). Only the payloads of answer and text events are decoded, at most
//! [`DECODED_MAX`] of them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use throughline_classify::Rules;
use throughline_kernels::stats::{self, Estimate, Moments};
use throughline_model::{format_ms, Millis};
use throughline_store::{StoreError, NO_VALUE};
use throughline_text::{terms, vader};

use crate::assets::{asset_key, Registry, RegistryIndex};
use crate::kept::Kept;
use crate::rows::{load, Load, PersonRows, Rows, Scan};
use crate::sessions::{is_visit, Attributor, CodePack, TOUCH_DIMS, VISIT_CODES};
use crate::source::Source;
use crate::spec::{parse_duration, parse_time_bound, MaskTable, StepMatcher};
use crate::stages::Stages;
use crate::trends::Interval;
use crate::QueryError;

/// Answer and text events decoded per query at most.
pub const DECODED_MAX: usize = 5_000_000;
/// Bytes of one text scored; longer texts are cut at a character boundary.
pub const TEXT_BYTES_MAX: usize = 4096;
/// Breakdown groups returned at most (most answers first); the rest are summed in `omitted`.
pub const GROUPS_MAX: usize = 500;
pub const EXAMPLES_MAX: usize = 20;
pub const TERMS_MAX: usize = 50;

const BREAKDOWNS: [&str; 7] = [
    "stage", "channel", "asset", "campaign", "day", "week", "month",
];
const TEXT_PROPERTIES: [&str; 5] = ["message", "comment", "body", "text", "description"];

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EmotionRequest {
    /// A breakdown besides the stages: stage, channel, asset, campaign, day, week or month.
    #[serde(default)]
    pub by: Option<String>,
    /// The event survey answers arrive as (default `Survey Responded`).
    #[serde(default)]
    pub survey_event: Option<String>,
    /// Events whose text is feedback (default `Support Ticket Opened`, `Support Message Sent`).
    #[serde(default)]
    pub text_events: Option<Vec<String>>,
    /// Fewer answers than this give "not enough data" (default 30).
    #[serde(default)]
    pub min_responses: Option<u64>,
    /// Confidence level of the intervals (default 0.95).
    #[serde(default)]
    pub confidence: Option<f64>,
    /// Inactivity that ends a session (default 30m).
    #[serde(default)]
    pub timeout: Option<String>,
    /// Example comments per polarity and group (default 3, at most 20).
    #[serde(default)]
    pub examples: Option<usize>,
    /// Negative terms per group (default 10, at most 50).
    #[serde(default)]
    pub terms: Option<usize>,
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub to: Option<String>,
    /// Only persons whose first touch in range has these values (see [`crate::filter`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<crate::filter::Filter>,
}

/// One survey's score over a group of answers.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Score {
    pub responses: u64,
    /// `ok`, `not enough data` (fewer than `min_responses`) or `no data`.
    pub status: &'static str,
    /// NPS in points (-100..100), CSAT as a share (0..1), CES as the mean (1..7).
    pub score: Option<f64>,
    pub ci_low: Option<f64>,
    pub ci_high: Option<f64>,
    /// Answers per score value, lowest first: the histogram to draw.
    pub histogram: Vec<Bucket>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub promoters: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub passives: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detractors: Option<u64>,
    /// CSAT: answers of 4 or 5.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub satisfied: Option<u64>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Bucket {
    pub answer: i64,
    pub count: u64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Sentiment {
    pub texts: u64,
    pub status: &'static str,
    /// Mean VADER compound score (-1..1) and its t interval.
    pub mean_compound: Option<f64>,
    pub ci_low: Option<f64>,
    pub ci_high: Option<f64>,
    /// Texts with compound >= 0.05, between, and <= -0.05 (VADER's thresholds).
    pub positive: u64,
    pub neutral: u64,
    pub negative: u64,
    pub negative_share: Option<f64>,
    /// Terms over-represented in the negative texts: what the complaints are about.
    pub negative_terms: Vec<Term>,
    pub most_negative: Vec<Example>,
    pub most_positive: Vec<Example>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Term {
    pub term: String,
    /// The group's negative texts with the term, and all its texts with it.
    pub negative_texts: u64,
    pub texts: u64,
    /// `P(negative | term) / P(negative)` over all texts in range: above 1 when the term
    /// comes with complaints.
    pub lift: f64,
    /// The term's own VADER valence, when the lexicon has one.
    pub valence: Option<f64>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Example {
    pub text: String,
    pub compound: f64,
    /// The event the text came with.
    pub event: String,
    pub survey: Option<String>,
    pub score: Option<i64>,
    pub timestamp: String,
    pub person_id: String,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Feelings {
    pub nps: Score,
    pub csat: Score,
    pub ces: Score,
    pub sentiment: Sentiment,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct StageRow {
    pub stage: String,
    /// Persons with an event of this stage in range.
    pub persons: u64,
    /// Of those, persons with an event of a later stage after their first one here.
    pub continued: u64,
    /// `1 - continued/persons`; null for the last stage.
    pub drop_off: Option<f64>,
    #[serde(flatten)]
    pub feelings: Feelings,
    /// Why the stage stands out: `low_nps`, `low_csat`, `hard_ces`, `negative_sentiment`
    /// (its interval lies below the overall value), `highest_drop_off`.
    pub flags: Vec<&'static str>,
    pub moment_of_truth: bool,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Group {
    pub key: String,
    #[serde(flatten)]
    pub feelings: Feelings,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct EmotionResponse {
    pub survey_event: String,
    pub text_events: Vec<String>,
    /// `default`, or the path of the project's stages.toml.
    pub stages_source: String,
    pub confidence: f64,
    pub min_responses: u64,
    /// How each number is computed, for the chart's footnote.
    pub methods: BTreeMap<&'static str, &'static str>,
    /// Answers whose survey or score was not understood, left out.
    pub invalid_answers: u64,
    pub total: Feelings,
    /// The emotion map, in journey order; answers of no stage are in `unstaged`.
    pub stages: Vec<StageRow>,
    pub unstaged: Feelings,
    /// Names of the stages with a flag, in journey order.
    pub moments_of_truth: Vec<String>,
    pub by: Option<String>,
    /// Most answers first.
    pub groups: Vec<Group>,
    pub omitted_groups: u64,
}

/// The emotion view asks by week and by a touch at once, and each request would decode
/// the same answers: the latest two decodes are kept, by (snapshot version, survey
/// event, answer and text event names, from, to).
static RECENT_ITEMS: Kept<ItemsKey, (FxHashMap<u32, Item>, Vec<u32>)> = Kept::new(2);

type ItemsKey = (u64, String, Vec<String>, Option<Millis>, Option<Millis>);

/// A decoded answer or text.
#[derive(Clone, Debug)]
struct Item {
    /// nps, csat, ces, or none for a text event.
    survey: Option<Survey>,
    score: Option<i64>,
    text: Option<String>,
    stage_property: Option<String>,
    event: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Survey {
    Nps,
    Csat,
    Ces,
}

impl Survey {
    fn parse(s: &str) -> Option<Survey> {
        match s.trim().to_ascii_lowercase().as_str() {
            "nps" => Some(Survey::Nps),
            "csat" => Some(Survey::Csat),
            "ces" => Some(Survey::Ces),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Survey::Nps => "nps",
            Survey::Csat => "csat",
            Survey::Ces => "ces",
        }
    }

    fn range(self) -> (i64, i64) {
        match self {
            Survey::Nps => (0, 10),
            Survey::Csat => (1, 5),
            Survey::Ces => (1, 7),
        }
    }
}

/// A distinct text's VADER compound score, the text, and its distinct sorted terms.
type Analysed = (f64, Rc<str>, Rc<[String]>);

/// A scored text, kept for examples and terms.
struct Scored {
    compound: f64,
    text: Rc<str>,
    event: String,
    survey: Option<Survey>,
    score: Option<i64>,
    ts: Millis,
    person: u32,
    /// Distinct, sorted.
    terms: Rc<[String]>,
}

/// What a group accumulates.
#[derive(Default)]
struct Acc {
    /// Answers per survey and score value.
    counts: [BTreeMap<i64, u64>; 3],
    /// Indexes into the scored texts.
    texts: Vec<usize>,
}

impl Acc {
    fn add(&mut self, item: &Item, text: Option<usize>) {
        if let (Some(s), Some(score)) = (item.survey, item.score) {
            *self.counts[s as usize].entry(score).or_default() += 1;
        }
        if let Some(t) = text {
            self.texts.push(t);
        }
    }

    fn answers(&self) -> u64 {
        self.counts.iter().flat_map(|c| c.values()).sum()
    }
}

pub fn run(
    snap: &Source,
    rules: &Rules,
    registry: &Registry,
    stages: &Stages,
    req: &EmotionRequest,
) -> Result<EmotionResponse, QueryError> {
    let from = req.from.as_deref().map(parse_time_bound).transpose()?;
    let to = req.to.as_deref().map(parse_time_bound).transpose()?;
    if let (Some(f), Some(t)) = (from, to) {
        if f >= t {
            return Err(QueryError::invalid("`from` must be before `to`"));
        }
    }
    let timeout = parse_duration(req.timeout.as_deref().unwrap_or("30m"))?;
    let confidence = req.confidence.unwrap_or(0.95);
    if !(0.5..1.0).contains(&confidence) || confidence > 0.999 {
        return Err(QueryError::invalid(
            "confidence must be at least 0.5 and at most 0.999",
        ));
    }
    let min_responses = req.min_responses.unwrap_or(30).max(1);
    let examples = req.examples.unwrap_or(3).min(EXAMPLES_MAX);
    let n_terms = req.terms.unwrap_or(10).min(TERMS_MAX);
    if let Some(by) = &req.by {
        if !BREAKDOWNS.contains(&by.as_str()) {
            return Err(QueryError::invalid(format!(
                "unknown breakdown {by:?}: use one of {}",
                BREAKDOWNS.join(", ")
            )));
        }
    }
    let survey_event = req
        .survey_event
        .clone()
        .unwrap_or_else(|| "Survey Responded".into());
    let text_events = req.text_events.clone().unwrap_or_else(|| {
        vec![
            "Support Ticket Opened".into(),
            "Support Message Sent".into(),
        ]
    });
    for e in std::iter::once(&survey_event).chain(&text_events) {
        if e.trim().is_empty() || e.contains('|') || e.starts_with("page:") || e.contains(" where ")
        {
            return Err(QueryError::invalid(format!(
                "{e:?}: survey and text events are plain event names"
            )));
        }
    }
    let item_names: HashSet<&str> = std::iter::once(survey_event.as_str())
        .chain(text_events.iter().map(String::as_str))
        .collect();

    let by_touch = matches!(req.by.as_deref(), Some("channel" | "asset" | "campaign"));
    let only = crate::filter::persons(req.filter.as_ref(), snap, rules, from, to)?;
    // One streaming pass over the rows of staged events and of answers and texts, persons
    // in parallel: what each person did per stage, and their answer and text rows with
    // the stage they belong to. Visits play no part here; the touch before an answer is
    // found afterwards for answering persons only (`touch_keys`).
    let scan = Scan::new(snap, from, to, &[0, 1])?;
    let stage_bits: Vec<(u64, &StepMatcher)> = stages
        .stages
        .iter()
        .enumerate()
        .flat_map(|(k, st)| st.matchers.iter().map(move |m| (1u64 << k, m)))
        .collect();
    let masks = MaskTable::new(&stage_bits, scan.dict(0), Some(scan.dict(1)));
    let item_code: Vec<bool> = scan
        .dict(0)
        .iter()
        .map(|n| item_names.contains(n.as_str()))
        .collect();
    let tag = |kind: u8, codes: &[u32]| -> u64 {
        let item = item_code.get(codes[0] as usize).copied().unwrap_or(false);
        masks.of(kind, codes) | if item { ITEM_BIT } else { 0 }
    };
    let n_stages = stages.stages.len();
    let parts = scan.run(
        only.as_ref(),
        tag,
        || StagePass::new(n_stages),
        |part: &mut StagePass, r| part.person(r),
    )?;
    drop(scan);
    let decode = || decode_items(snap, &survey_event, &item_names, from, to);
    let decoded = match snap.store() {
        Some(store) => {
            let mut names: Vec<String> = item_names.iter().map(|n| n.to_string()).collect();
            names.sort();
            RECENT_ITEMS.get(
                (store.version(), survey_event.clone(), names, from, to),
                decode,
            )?
        }
        None => Arc::new(decode()?),
    };
    let (items, invalid) = (&decoded.0, &decoded.1);
    let mut stage_persons = vec![0u64; n_stages];
    let mut stage_continued = vec![0u64; n_stages];
    let mut item_rows: Vec<ItemRow> = Vec::new();
    for part in parts {
        for s in 0..n_stages {
            stage_persons[s] += part.persons[s];
            stage_continued[s] += part.continued[s];
        }
        item_rows.extend(part.items);
    }
    // The decode sees every person's answers; a filter counts only its own persons'.
    let invalid_answers = match &only {
        None => invalid.len() as u64,
        Some(_) => {
            let invalid: HashSet<u32> = invalid.iter().copied().collect();
            item_rows
                .iter()
                .filter(|r| invalid.contains(&r.seq))
                .count() as u64
        }
    };

    let identity = snap.identity()?;
    let index = registry.index();
    let mut by_stage: Vec<Acc> = (0..n_stages).map(|_| Acc::default()).collect();
    let mut unstaged = Acc::default();
    let mut total = Acc::default();
    let mut groups: HashMap<String, Acc> = HashMap::new();
    let mut scored: Vec<Scored> = Vec::new();
    let mut analysed: HashMap<String, Analysed> = HashMap::new();
    // A breakdown by touch: the persons with answers, and each answer's arrival number
    // and text, to put in groups once their touches are known.
    let mut answering: HashSet<u32> = HashSet::new();
    let mut deferred: Vec<(u32, Option<usize>)> = Vec::new();
    let by = req.by.as_deref();

    for row in &item_rows {
        let Some(item) = items.get(&row.seq) else {
            continue;
        };
        let (ts, person) = (row.ts, row.person);
        let stage = match (&item.survey, &item.stage_property) {
            (Some(_), Some(p)) => stages.of_survey_stage(p).or(row.current),
            (Some(_), None) => row.current,
            (None, _) => row.own.or(row.current),
        };
        let key = by.filter(|_| !by_touch).map(|b| match b {
            "stage" => stage
                .map_or("(no stage)", |s| stages.stages[s].name.as_str())
                .to_string(),
            "day" => Interval::Day.label(Interval::Day.index(ts)),
            "week" => Interval::Week.label(Interval::Week.index(ts)),
            _ => Interval::Month.label(Interval::Month.index(ts)),
        });
        let text_index = item.text.as_ref().map(|t| {
            // Feedback repeats itself (stock phrases, templated tickets): each distinct
            // text is scored and split into terms once.
            let (compound, text, ts_terms) = match analysed.get(t.as_str()) {
                Some(a) => a.clone(),
                None => {
                    let mut ts_terms = terms::terms(t);
                    ts_terms.sort();
                    ts_terms.dedup();
                    let a = (
                        vader::polarity_scores(t).compound,
                        Rc::<str>::from(t.as_str()),
                        Rc::<[String]>::from(ts_terms),
                    );
                    analysed.insert(t.clone(), a.clone());
                    a
                }
            };
            scored.push(Scored {
                compound,
                text,
                event: item.event.clone(),
                survey: item.survey,
                score: item.score,
                ts,
                person,
                terms: ts_terms,
            });
            scored.len() - 1
        });
        total.add(item, text_index);
        match stage {
            Some(s) => by_stage[s].add(item, text_index),
            None => unstaged.add(item, text_index),
        }
        if let Some(k) = key {
            groups.entry(k).or_default().add(item, text_index);
        }
        if by_touch {
            answering.insert(person);
            deferred.push((row.seq, text_index));
        }
    }

    if let Some(b) = by.filter(|_| by_touch) {
        let keys = Touches {
            snap,
            by: b,
            range: (from, to),
            persons: &answering,
            item_names: &item_names,
            items,
            timeout,
            rules,
            registry,
            index: &index,
        }
        .keys()?;
        for (seq, text_index) in deferred {
            let key = keys
                .get(&seq)
                .cloned()
                .unwrap_or_else(|| "(no touch)".into());
            groups.entry(key).or_default().add(&items[&seq], text_index);
        }
    }

    let corpus = TermCounts::of(&scored);
    let ctx = Ctx {
        scored: &scored,
        corpus: &corpus,
        confidence,
        min_responses,
        examples,
        n_terms,
        identity,
    };
    let feel = |acc: &Acc| feelings(acc, &ctx);
    let total_f = feel(&total);
    let mut stage_rows: Vec<StageRow> = stages
        .stages
        .iter()
        .enumerate()
        .map(|(s, st)| {
            let persons = stage_persons[s];
            let last = s + 1 == n_stages;
            StageRow {
                stage: st.name.clone(),
                persons,
                continued: stage_continued[s],
                drop_off: (!last && persons > 0)
                    .then(|| 1.0 - stage_continued[s] as f64 / persons as f64),
                feelings: feel(&by_stage[s]),
                flags: Vec::new(),
                moment_of_truth: false,
            }
        })
        .collect();
    flag_moments(&mut stage_rows, &total_f, min_responses);
    let moments_of_truth = stage_rows
        .iter()
        .filter(|s| s.moment_of_truth)
        .map(|s| s.stage.clone())
        .collect();

    let mut group_list: Vec<(String, Acc)> = groups.into_iter().collect();
    match by {
        Some("day" | "week" | "month") => group_list.sort_by(|a, b| a.0.cmp(&b.0)),
        Some("stage") => {
            let order = |k: &str| {
                stages
                    .stages
                    .iter()
                    .position(|s| s.name == k)
                    .unwrap_or(usize::MAX)
            };
            group_list.sort_by(|a, b| order(&a.0).cmp(&order(&b.0)).then(a.0.cmp(&b.0)));
        }
        _ => group_list.sort_by(|a, b| {
            (b.1.answers() + b.1.texts.len() as u64)
                .cmp(&(a.1.answers() + a.1.texts.len() as u64))
                .then(a.0.cmp(&b.0))
        }),
    }
    let omitted_groups = group_list.len().saturating_sub(GROUPS_MAX) as u64;
    group_list.truncate(GROUPS_MAX);

    Ok(EmotionResponse {
        survey_event,
        text_events,
        stages_source: stages.source.clone(),
        confidence,
        min_responses,
        methods: methods(),
        invalid_answers,
        total: total_f,
        unstaged: feel(&unstaged),
        stages: stage_rows,
        moments_of_truth,
        by: req.by.clone(),
        groups: group_list
            .iter()
            .map(|(k, a)| Group {
                key: k.clone(),
                feelings: feel(a),
            })
            .collect(),
        omitted_groups,
    })
}

fn methods() -> BTreeMap<&'static str, &'static str> {
    BTreeMap::from([
        ("nps", "% of answers 9-10 minus % of answers 0-6, in points; interval: Student t on the answers coded +100/0/-100 (variance (10^4(P+D) - n NPS^2)/(n-1))"),
        ("csat", "share of answers 4-5 on a 1-5 scale; interval: Wilson score"),
        ("ces", "mean answer on a 1-7 scale (higher is easier); interval: Student t"),
        ("sentiment", "VADER compound score (-1..1) of each comment and support message, averaged; interval: Student t; positive >= 0.05, negative <= -0.05"),
        ("drop_off", "1 - persons with an event of a later stage after their first event of this one / persons of this stage"),
        ("moment_of_truth", "a stage whose NPS, CSAT, CES or sentiment interval lies wholly below the overall value, or with the highest drop-off"),
        ("touch", "the first event of the person's latest session that started at or before the answer"),
    ])
}

/// The group of an answer by the touch before it: the asset or an attribute of the touch
/// of the session starting at row `session_start`.
fn touch_key(
    by: &str,
    rows: &Rows,
    session_start: Option<usize>,
    attributor: &mut Attributor,
    registry: &Registry,
    index: &RegistryIndex,
) -> String {
    let Some(a) = session_start else {
        return "(no touch)".to_string();
    };
    match by {
        "asset" => {
            let key = asset_key(rows.dim(5).get(a), rows.dim(4).get(a), rows.dim(1).get(a));
            match index.resolve(&key) {
                Some(i) => registry.assets[i].id.clone(),
                None => key.value,
            }
        }
        other => {
            let t = attributor.attribute(rows, a);
            attributor.touch(t).value(other)
        }
    }
}

/// A row's stages (bit k: stage k) in the low 32 bits of its scan tag; this bit marks an
/// answer or text event.
const ITEM_BIT: u64 = 1 << 32;

/// An answer or text row of the stage pass, with its own stage and the person's latest
/// stage at it (its own included).
struct ItemRow {
    person: u32,
    seq: u32,
    ts: Millis,
    own: Option<usize>,
    current: Option<usize>,
}

/// What one thread of the stage pass gathers over its persons.
struct StagePass {
    /// Per stage: persons with an event of it, and of those, persons with an event of a
    /// later stage after their first one.
    persons: Vec<u64>,
    continued: Vec<u64>,
    items: Vec<ItemRow>,
    first_at: Vec<Option<Millis>>,
    last_at: Vec<Option<Millis>>,
}

impl StagePass {
    fn new(stages: usize) -> StagePass {
        StagePass {
            persons: vec![0; stages],
            continued: vec![0; stages],
            items: Vec::new(),
            first_at: vec![None; stages],
            last_at: vec![None; stages],
        }
    }

    fn person(&mut self, r: &PersonRows) {
        self.first_at.fill(None);
        self.last_at.fill(None);
        let mut current: Option<usize> = None;
        for i in 0..r.ts.len() {
            let (tag, ts) = (r.tag[i], r.ts[i]);
            // An event belongs to the first stage that matches it.
            let stages = tag as u32;
            let own = (stages != 0).then(|| stages.trailing_zeros() as usize);
            if let Some(s) = own {
                self.first_at[s].get_or_insert(ts);
                self.last_at[s] = Some(ts);
                current = Some(s);
            }
            if tag & ITEM_BIT != 0 {
                self.items.push(ItemRow {
                    person: r.person,
                    seq: r.seq[i],
                    ts,
                    own,
                    current,
                });
            }
        }
        let n = self.persons.len();
        for s in 0..n {
            let Some(first) = self.first_at[s] else {
                continue;
            };
            self.persons[s] += 1;
            if (s + 1..n).any(|j| self.last_at[j].is_some_and(|t| t > first)) {
                self.continued[s] += 1;
            }
        }
    }
}

/// The group of each answer and text of these persons by the touch before it (`by` is
/// channel, asset or campaign): their visits and answers, split into sessions by
/// `timeout` of inactivity.
struct Touches<'q, 's, 'a> {
    snap: &'q Source<'s, 'a>,
    by: &'q str,
    range: (Option<Millis>, Option<Millis>),
    persons: &'q HashSet<u32>,
    item_names: &'q HashSet<&'q str>,
    items: &'q FxHashMap<u32, Item>,
    timeout: Millis,
    rules: &'q Rules,
    registry: &'q Registry,
    index: &'q RegistryIndex,
}

impl Touches<'_, '_, '_> {
    /// The group of each answer and text, by arrival number.
    fn keys(&self) -> Result<FxHashMap<u32, String>, QueryError> {
        if self.persons.is_empty() {
            return Ok(FxHashMap::default());
        }
        match self.scan()? {
            Some(keys) => Ok(keys),
            None => self.loaded(),
        }
    }

    /// [`Touches::keys`] over the table of the persons' visits and answers with the
    /// traffic-source columns.
    fn loaded(&self) -> Result<FxHashMap<u32, String>, QueryError> {
        let (items, item_names) = (self.items, self.item_names);
        let rows = load(
            self.snap,
            &Load {
                from: self.range.0,
                to: self.range.1,
                persons: Some(self.persons),
                dims: TOUCH_DIMS.to_vec(),
                keep: Some(Box::new(|kind, v| {
                    is_visit(kind, v[1].is_some()) || v[0].is_some_and(|n| item_names.contains(n))
                })),
                keep_reads: Some(vec![0, 1]),
            },
        )?;
        let mut attributor = Attributor::new(self.rules);
        let mut keys = FxHashMap::default();
        for r in rows.persons() {
            let mut last_visit: Option<Millis> = None;
            let mut session_start: Option<usize> = None;
            for i in r {
                let ts = rows.ts[i];
                if is_visit(rows.kind[i], rows.dim(1).codes[i] != NO_VALUE) {
                    if last_visit.is_none_or(|t| ts - t > self.timeout) {
                        session_start = Some(i);
                    }
                    last_visit = Some(ts);
                }
                if items.contains_key(&rows.seq[i]) {
                    let key = touch_key(
                        self.by,
                        &rows,
                        session_start,
                        &mut attributor,
                        self.registry,
                        self.index,
                    );
                    keys.insert(rows.seq[i], key);
                }
            }
        }
        Ok(keys)
    }

    /// [`Touches::keys`] as one streaming scan of the persons, in parallel, where a
    /// visit's tag packs its landing path and touch codes ([`CodePack`]) and bit 63 marks
    /// an answer or text: each distinct touch is named once per thread. `None` when the
    /// codes do not fit.
    fn scan(&self) -> Result<Option<FxHashMap<u32, String>>, QueryError> {
        const ITEM: u64 = 1 << 63;
        let scan = Scan::new(self.snap, self.range.0, self.range.1, &TOUCH_DIMS)?;
        let Some(pack) =
            CodePack::new(&VISIT_CODES, |j| scan.dict(j).len()).and_then(|p| p.below(63))
        else {
            return Ok(None);
        };
        let codes_mask = pack.mask();
        let item_code: Vec<bool> = scan
            .dict(0)
            .iter()
            .map(|n| self.item_names.contains(n.as_str()))
            .collect();
        let tag = |kind: u8, codes: &[u32]| -> u64 {
            let visit = match is_visit(kind, codes[1] != NO_VALUE) {
                true => pack.pack(codes),
                false => 0,
            };
            let item = item_code.get(codes[0] as usize).copied().unwrap_or(false);
            visit | if item { ITEM } else { 0 }
        };
        let touch_dicts: [&[String]; 6] = std::array::from_fn(|k| scan.dict(k + 2));
        let string = |j: usize, c: u32| (c != NO_VALUE).then(|| scan.dict(j)[c as usize].as_str());
        // Per thread: its attributor, the group of each packed touch, its answers' groups.
        type Part<'r> = (Attributor<'r>, FxHashMap<u64, String>, Vec<(u32, String)>);
        let parts = scan.run(
            Some(self.persons),
            tag,
            || -> Part {
                (
                    Attributor::new(self.rules),
                    FxHashMap::default(),
                    Vec::new(),
                )
            },
            |(attributor, named, out): &mut Part, r| {
                let mut last_visit: Option<Millis> = None;
                let mut start: Option<u64> = None;
                for i in 0..r.ts.len() {
                    let (tag, ts) = (r.tag[i], r.ts[i]);
                    if tag & 1 != 0 {
                        if last_visit.is_none_or(|t| ts - t > self.timeout) {
                            start = Some(tag & codes_mask);
                        }
                        last_visit = Some(ts);
                    }
                    if tag & ITEM == 0 || !self.items.contains_key(&r.seq[i]) {
                        continue;
                    }
                    let key = match start {
                        None => "(no touch)".to_string(),
                        Some(k) => named
                            .entry(k)
                            .or_insert_with(|| {
                                // Path, then source, medium, campaign, content, referrer,
                                // click id.
                                let codes = pack.unpack(k);
                                match self.by {
                                    "asset" => {
                                        let key = asset_key(
                                            string(5, codes[4]),
                                            string(4, codes[3]),
                                            string(1, codes[0]),
                                        );
                                        match self.index.resolve(&key) {
                                            Some(a) => self.registry.assets[a].id.clone(),
                                            None => key.value,
                                        }
                                    }
                                    other => {
                                        let t =
                                            attributor.attribute_dicts(&codes[1..], &touch_dicts);
                                        attributor.touch(t).value(other)
                                    }
                                }
                            })
                            .clone(),
                    };
                    out.push((r.seq[i], key));
                }
            },
        )?;
        Ok(Some(
            parts.into_iter().flat_map(|(_, _, out)| out).collect(),
        ))
    }
}

/// The answers and texts in range, by arrival number, and the arrival numbers of the
/// invalid answers.
fn decode_items(
    snap: &Source,
    survey_event: &str,
    names: &HashSet<&str>,
    from: Option<Millis>,
    to: Option<Millis>,
) -> Result<(FxHashMap<u32, Item>, Vec<u32>), QueryError> {
    let mut items = FxHashMap::default();
    let mut invalid = Vec::new();
    let mut too_many = false;
    let in_range = |t: Millis| from.is_none_or(|f| t >= f) && to.is_none_or(|e| t < e);
    let scan = snap.for_each_event_named(
        |n| names.contains(n),
        |seq, e| {
            if !in_range(e.timestamp) {
                return Ok(());
            }
            if items.len() + invalid.len() >= DECODED_MAX {
                too_many = true;
                return Err(StoreError::Closed.into());
            }
            let name = e.event.clone().unwrap_or_default();
            let p = &e.properties;
            let str_of = |k: &str| p.get(k).and_then(|v| v.as_str()).map(str::to_string);
            let item = if name == survey_event {
                let survey = str_of("survey").as_deref().and_then(Survey::parse);
                let score = p.get("score").and_then(|v| {
                    v.as_f64()
                        .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
                });
                let valid = match (survey, score) {
                    (Some(s), Some(x)) => {
                        let (lo, hi) = s.range();
                        x.fract() == 0.0 && x >= lo as f64 && x <= hi as f64
                    }
                    _ => false,
                };
                if !valid {
                    invalid.push(seq);
                }
                Item {
                    survey: survey.filter(|_| valid),
                    score: score.filter(|_| valid).map(|x| x as i64),
                    text: str_of("comment").and_then(clean_text),
                    stage_property: str_of("stage"),
                    event: name,
                }
            } else {
                Item {
                    survey: None,
                    score: None,
                    text: TEXT_PROPERTIES
                        .iter()
                        .find_map(|k| str_of(k))
                        .and_then(clean_text),
                    stage_property: None,
                    event: name,
                }
            };
            if item.survey.is_some() || item.text.is_some() {
                items.insert(seq, item);
            }
            Ok(())
        },
    );
    if too_many {
        return Err(QueryError::invalid(format!(
            "more than {DECODED_MAX} survey answers and texts: narrow the range with from/to"
        )));
    }
    scan?;
    Ok((items, invalid))
}

fn clean_text(t: String) -> Option<String> {
    let t = t.trim();
    if t.is_empty() {
        return None;
    }
    let mut end = t.len().min(TEXT_BYTES_MAX);
    while !t.is_char_boundary(end) {
        end -= 1;
    }
    Some(t[..end].to_string())
}

fn score_of(
    survey: Survey,
    counts: &BTreeMap<i64, u64>,
    confidence: f64,
    min_responses: u64,
) -> Score {
    let n: u64 = counts.values().sum();
    let (lo, hi) = survey.range();
    let histogram = (lo..=hi)
        .map(|answer| Bucket {
            answer,
            count: counts.get(&answer).copied().unwrap_or(0),
        })
        .collect();
    let count_in = |a: i64, b: i64| counts.range(a..=b).map(|(_, c)| c).sum::<u64>();
    let (estimate, promoters, passives, detractors, satisfied) = match survey {
        Survey::Nps => {
            let (p, m, d) = (count_in(9, 10), count_in(7, 8), count_in(0, 6));
            (
                stats::nps(p, m, d, confidence),
                Some(p),
                Some(m),
                Some(d),
                None,
            )
        }
        Survey::Csat => {
            let s = count_in(4, 5);
            (
                stats::proportion(s, n, confidence),
                None,
                None,
                None,
                Some(s),
            )
        }
        Survey::Ces => {
            let mut m = Moments::default();
            for (&v, &c) in counts {
                m.n += c;
                m.sum += (v * c as i64) as f64;
                m.sum_squares += (v * v * c as i64) as f64;
            }
            (m.estimate(confidence), None, None, None, None)
        }
    };
    let (status, e) = status(&estimate, min_responses);
    Score {
        responses: n,
        status,
        score: e.map(|e| e.value),
        ci_low: e.and_then(|e| e.low),
        ci_high: e.and_then(|e| e.high),
        histogram,
        promoters,
        passives,
        detractors,
        satisfied,
    }
}

fn status(e: &Estimate, min: u64) -> (&'static str, Option<Estimate>) {
    if e.n == 0 {
        ("no data", None)
    } else if e.n < min {
        ("not enough data", None)
    } else {
        ("ok", Some(*e))
    }
}

/// In how many texts, and negative texts, each term occurs: over all texts in range.
struct TermCounts<'s> {
    counts: HashMap<&'s str, (u64, u64)>,
    /// The share of negative texts.
    base: f64,
}

impl<'s> TermCounts<'s> {
    fn of(scored: &'s [Scored]) -> TermCounts<'s> {
        let mut counts: HashMap<&str, (u64, u64)> = HashMap::new();
        let mut negatives = 0u64;
        for s in scored {
            let negative = s.compound <= vader::NEGATIVE_MAX;
            negatives += u64::from(negative);
            for t in s.terms.iter() {
                let c = counts.entry(t.as_str()).or_default();
                c.0 += u64::from(negative);
                c.1 += 1;
            }
        }
        TermCounts {
            counts,
            base: negatives as f64 / scored.len().max(1) as f64,
        }
    }
}

/// What every group's summary reads.
struct Ctx<'a> {
    scored: &'a [Scored],
    corpus: &'a TermCounts<'a>,
    confidence: f64,
    min_responses: u64,
    examples: usize,
    n_terms: usize,
    identity: &'a throughline_identity::IdentityGraph,
}

fn feelings(acc: &Acc, ctx: &Ctx) -> Feelings {
    let (scored, confidence, min_responses, examples, n_terms, identity) = (
        ctx.scored,
        ctx.confidence,
        ctx.min_responses,
        ctx.examples,
        ctx.n_terms,
        ctx.identity,
    );
    let mut m = Moments::default();
    let (mut pos, mut neu, mut neg) = (0u64, 0u64, 0u64);
    for &t in &acc.texts {
        let c = scored[t].compound;
        m.add(c);
        if c >= vader::POSITIVE_MIN {
            pos += 1;
        } else if c <= vader::NEGATIVE_MAX {
            neg += 1;
        } else {
            neu += 1;
        }
    }
    let (st, e) = status(&m.estimate(confidence), min_responses);
    let example = |&t: &usize| {
        let s = &scored[t];
        Example {
            text: s.text.to_string(),
            compound: s.compound,
            event: s.event.clone(),
            survey: s.survey.map(|v| v.name().to_string()),
            score: s.score,
            timestamp: format_ms(s.ts),
            person_id: identity.canonical_id(s.person).to_string(),
        }
    };
    let mut order: Vec<usize> = acc.texts.clone();
    order.sort_by(|&a, &b| {
        scored[a]
            .compound
            .total_cmp(&scored[b].compound)
            .then(scored[a].ts.cmp(&scored[b].ts))
    });
    // Distinct texts only: the same stock phrase twice tells nothing new.
    let mut seen = HashSet::new();
    let most_negative: Vec<Example> = order
        .iter()
        .filter(|&&t| scored[t].compound <= vader::NEGATIVE_MAX && seen.insert(&scored[t].text))
        .take(examples)
        .map(example)
        .collect();
    let mut seen = HashSet::new();
    let most_positive: Vec<Example> = order
        .iter()
        .rev()
        .filter(|&&t| scored[t].compound >= vader::POSITIVE_MIN && seen.insert(&scored[t].text))
        .take(examples)
        .map(example)
        .collect();
    let texts = acc.texts.len() as u64;
    Feelings {
        nps: score_of(Survey::Nps, &acc.counts[0], confidence, min_responses),
        csat: score_of(Survey::Csat, &acc.counts[1], confidence, min_responses),
        ces: score_of(Survey::Ces, &acc.counts[2], confidence, min_responses),
        sentiment: Sentiment {
            texts,
            status: st,
            mean_compound: e.map(|e| e.value),
            ci_low: e.and_then(|e| e.low),
            ci_high: e.and_then(|e| e.high),
            positive: pos,
            neutral: neu,
            negative: neg,
            negative_share: (texts > 0).then(|| neg as f64 / texts as f64),
            negative_terms: negative_terms(acc, scored, ctx.corpus, neg, n_terms),
            most_negative,
            most_positive,
        },
    }
}

/// The terms of the group's negative texts (in two or more of them) that come with
/// negative texts more often than texts in general do, over all texts in range: what the
/// complaints of this group are about. Ranked by how many of the group's negative texts
/// hold them.
fn negative_terms(
    acc: &Acc,
    scored: &[Scored],
    corpus: &TermCounts,
    negatives: u64,
    max: usize,
) -> Vec<Term> {
    if negatives == 0 || max == 0 || corpus.base == 0.0 {
        return Vec::new();
    }
    let mut counts: HashMap<&str, (u64, u64)> = HashMap::new();
    for &t in &acc.texts {
        let negative = scored[t].compound <= vader::NEGATIVE_MAX;
        for term in scored[t].terms.iter() {
            let c = counts.entry(term).or_default();
            c.1 += 1;
            c.0 += u64::from(negative);
        }
    }
    let mut out: Vec<Term> = counts
        .into_iter()
        .filter(|(_, (n, _))| *n >= 2)
        .filter_map(|(term, (n, all))| {
            let (gn, gall) = corpus.counts.get(term).copied()?;
            Some(Term {
                term: term.to_string(),
                negative_texts: n,
                texts: all,
                lift: (gn as f64 / gall as f64) / corpus.base,
                valence: vader::word_valence(term),
            })
        })
        .filter(|t| t.lift > 1.0)
        .collect();
    out.sort_by(|a, b| {
        b.negative_texts
            .cmp(&a.negative_texts)
            .then(b.lift.total_cmp(&a.lift))
            .then(a.term.cmp(&b.term))
    });
    out.truncate(max);
    out
}

/// Flags the stages whose scores lie below the overall ones, and the worst drop-off.
fn flag_moments(stages: &mut [StageRow], total: &Feelings, min: u64) {
    let below = |s: &Score, t: &Score| {
        s.status == "ok" && t.status == "ok" && s.ci_high.zip(t.score).is_some_and(|(h, v)| h < v)
    };
    for row in stages.iter_mut() {
        let f = &row.feelings;
        if below(&f.nps, &total.nps) {
            row.flags.push("low_nps");
        }
        if below(&f.csat, &total.csat) {
            row.flags.push("low_csat");
        }
        if below(&f.ces, &total.ces) {
            row.flags.push("hard_ces");
        }
        let (s, t) = (&f.sentiment, &total.sentiment);
        if s.status == "ok"
            && t.status == "ok"
            && s.ci_high.zip(t.mean_compound).is_some_and(|(h, v)| h < v)
        {
            row.flags.push("negative_sentiment");
        }
    }
    let worst = stages
        .iter()
        .enumerate()
        .filter(|(_, s)| s.persons >= min && s.drop_off.is_some())
        .max_by(|a, b| {
            a.1.drop_off
                .unwrap_or(0.0)
                .total_cmp(&b.1.drop_off.unwrap_or(0.0))
                .then(b.0.cmp(&a.0))
        })
        .map(|(i, _)| i);
    if let Some(i) = worst {
        stages[i].flags.push("highest_drop_off");
    }
    for row in stages.iter_mut() {
        row.moment_of_truth = !row.flags.is_empty();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rows::tests::journey_store;

    /// The scan must give the table's group for every answer, over stores of several
    /// segments and the log, with devices stitched into persons, ties in time, answers
    /// that are also visits, and a range that cuts sessions.
    #[test]
    fn the_scanned_touches_equal_the_loaded_ones() {
        let registry = Registry::from_toml(
            r#"
[[asset]]
id = "hero-ad"
kind = "ad"
destination_url = "https://shop.example/lp/a?utm_content=hero"
"#,
            "t.toml",
        )
        .unwrap();
        let index = registry.index();
        let rules = Rules::ga4_default();
        let item_names: HashSet<&str> = HashSet::from(["Order"]);
        for seed in 1..=3u64 {
            let (p, dir) = journey_store("emotion-touches", seed);
            let snap = p.snapshot();
            let src = Source::from(&snap);
            let mut items = FxHashMap::default();
            src.for_each_event_named(
                |n| n == "Order",
                |seq, e| {
                    // Some orders are not answers: their rows are tagged, and skipped.
                    if seq % 4 != 0 {
                        let event = e.event.unwrap_or_default();
                        items.insert(
                            seq,
                            Item {
                                survey: None,
                                score: None,
                                text: Some("fine".into()),
                                stage_property: None,
                                event,
                            },
                        );
                    }
                    Ok(())
                },
            )
            .unwrap();
            let answering = load(
                src,
                &Load {
                    dims: vec![0, 1],
                    keep: Some(Box::new(|_, v| v[0] == Some("Order"))),
                    ..Default::default()
                },
            )
            .unwrap();
            let all: HashSet<u32> = answering.person.iter().copied().collect();
            let some: HashSet<u32> = all.iter().copied().filter(|p| p % 2 == 0).collect();
            for (by, range, persons) in [
                ("channel", (None, None), &all),
                ("asset", (None, None), &all),
                ("campaign", (Some(5000), Some(30_000)), &all),
                ("channel", (Some(9000), None), &some),
            ] {
                let touches = Touches {
                    snap: &src,
                    by,
                    range,
                    persons,
                    item_names: &item_names,
                    items: &items,
                    timeout: 4000,
                    rules: &rules,
                    registry: &registry,
                    index: &index,
                };
                let sorted = |m: FxHashMap<u32, String>| -> Vec<(u32, String)> {
                    let mut v: Vec<_> = m.into_iter().collect();
                    v.sort();
                    v
                };
                let scanned = sorted(touches.scan().unwrap().expect("the codes fit"));
                let loaded = sorted(touches.loaded().unwrap());
                assert!(loaded.len() > 20, "{by} {range:?}: {}", loaded.len());
                let groups: HashSet<&str> = loaded.iter().map(|(_, k)| k.as_str()).collect();
                assert!(groups.len() > 2, "{by}: {groups:?}");
                if by == "asset" {
                    assert!(groups.contains("hero-ad"), "{groups:?}");
                }
                assert_eq!(scanned, loaded, "seed {seed} {by} {range:?}");
            }
            drop(snap);
            drop(p);
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}
