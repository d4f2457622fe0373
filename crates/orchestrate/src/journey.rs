//! Journey files: what a journey says (trigger, re-entry, steps, goal, limits), how a TOML
//! or JSON file reads into it, and the validation that turns it into a [`Journey`] the
//! machine runs, or into a list of errors that each name the step and the field.
//!
//! The filter language is the analytics' own: a trigger, a goal, a wait-for-event or an
//! event branch is a funnel step (`Order Completed where revenue > 50`, `page:/pricing*`),
//! a trait condition is a `where` condition over the person's traits (`plan = 'pro'`).
//!
//! Steps form a graph by id (`next`, `on_event`, `then`...; a step without `next` goes on
//! to the step after it, the last one ends the journey). It must have no cycle: the
//! idempotency key of a send is (journey, person, step, entry), so a step runs at most once
//! per entry by construction.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use throughline_model::Millis;
use throughline_query::spec::{Filter, StepMatcher};

use crate::template;

/// Steps per journey at most.
pub const STEPS_MAX: usize = 64;
/// Variants of one split or one message at most.
pub const VARIANTS_MAX: usize = 16;
/// Bytes of one template at most.
pub const TEMPLATE_BYTES_MAX: usize = 256 * 1024;
/// Bytes of a journey file at most.
pub const FILE_BYTES_MAX: usize = 2 << 20;
/// Longest wait or timeout.
pub const WAIT_MS_MAX: Millis = 366 * DAY_MS;
const DAY_MS: Millis = 86_400_000;
/// Triggering events older than this (event time against the orchestrator's clock) do not
/// enter anyone, so a backfill of history does not mail everybody at once.
pub const TRIGGER_MAX_AGE_DEFAULT: &str = "1d";
/// A goal counts within this long after entry unless the journey says otherwise.
pub const GOAL_WITHIN_DEFAULT: &str = "30d";

/// One validation problem: which step (absent for journey-level fields), which field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    pub field: String,
    pub error: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.step {
            Some(s) => write!(f, "step {s:?}, field {:?}: {}", self.field, self.error),
            None => write!(f, "field {:?}: {}", self.field, self.error),
        }
    }
}

/// A journey file as written (and as stored: the machine keeps the file, not the compiled
/// form, so its snapshots stay readable and recompile the same way).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JourneyFile {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Higher wins when a frequency cap allows only some of the sends due at once.
    #[serde(default)]
    pub priority: i32,
    pub trigger: TriggerFile,
    /// `once` (default: once ever), `always` (again after each exit), or a duration such
    /// as `30d` (at most once per that period, counted from the last entry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reentry: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub goal: Option<GoalFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<LimitsFile>,
    /// `utm_source` of the tracked links (default `throughline`); the medium is the
    /// channel, the campaign the journey, the content `journey/step/variant`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utm_source: Option<String>,
    /// Kept as written: steps are read one by one so an error names its step.
    pub steps: Vec<Value>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerFile {
    /// A funnel step: `Signed Up`, `Order Completed where revenue > 100`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<AudienceFile>,
    /// Events older than this do not trigger (default 1d).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<String>,
}

/// An audience: persons who did every `did` step and no `not_did` step within `within`,
/// and whose traits meet every condition. A person enters when they become a member.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AudienceFile {
    #[serde(default)]
    pub did: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_did: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub within: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub traits: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoalFile {
    pub event: String,
    /// How long after entry a goal still counts as a conversion (default 30d).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub within: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    /// Persons in the journey at once at most; entries beyond it are refused and counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_max: Option<u64>,
    /// Entries per UTC day at most.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entries_per_day_max: Option<u64>,
}

// ------------------------------------------------------------------ steps as written

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WaitFile {
    duration: String,
    next: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WaitForFile {
    event: String,
    timeout: String,
    on_event: Option<String>,
    on_timeout: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BranchFile {
    #[serde(rename = "trait")]
    trait_: Option<String>,
    event: Option<String>,
    within: Option<String>,
    then: Option<String>,
    #[serde(rename = "else")]
    else_: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SplitFile {
    variants: Vec<SplitVariantFile>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SplitVariantFile {
    name: String,
    weight: u32,
    next: Option<String>,
    #[serde(default)]
    holdout: bool,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EmailFile {
    to: Option<String>,
    from: Option<String>,
    subject: Option<String>,
    html: Option<String>,
    text: Option<String>,
    #[serde(default)]
    variants: Vec<EmailVariantFile>,
    quiet_hours: Option<bool>,
    next: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EmailVariantFile {
    name: String,
    #[serde(default = "one")]
    weight: u32,
    subject: Option<String>,
    html: Option<String>,
    text: Option<String>,
}

fn one() -> u32 {
    1
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WebhookFile {
    url: String,
    secret: Option<String>,
    body: Option<String>,
    channel: Option<String>,
    quiet_hours: Option<bool>,
    next: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExportFile {
    audience: String,
    url: Option<String>,
    secret: Option<String>,
    next: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExitFile {}

// ------------------------------------------------------------------ compiled

/// A validated journey, ready to run.
#[derive(Clone, Debug)]
pub struct Journey {
    pub name: String,
    pub priority: i32,
    pub trigger: Trigger,
    pub trigger_max_age_ms: Millis,
    pub reentry: Reentry,
    pub goal: Option<StepMatcher>,
    pub goal_within_ms: Millis,
    pub active_max: Option<u64>,
    pub entries_per_day_max: Option<u64>,
    pub utm_source: String,
    pub steps: Vec<Step>,
}

#[derive(Clone, Debug)]
pub enum Trigger {
    Event(StepMatcher),
    Audience(Audience),
}

#[derive(Clone, Debug)]
pub struct Audience {
    pub did: Vec<StepMatcher>,
    pub not_did: Vec<StepMatcher>,
    pub within_ms: Millis,
    pub traits: Vec<Filter>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reentry {
    Once,
    Always,
    Every(Millis),
}

#[derive(Clone, Debug)]
pub struct Step {
    pub id: String,
    pub kind: StepKind,
}

/// A step index, or `None` for the end of the journey.
pub type Next = Option<usize>;

#[derive(Clone, Debug)]
pub enum StepKind {
    Wait {
        ms: Millis,
        next: Next,
    },
    WaitForEvent {
        matcher: StepMatcher,
        timeout_ms: Millis,
        on_event: Next,
        on_timeout: Next,
    },
    Branch {
        condition: Condition,
        then: Next,
        otherwise: Next,
    },
    Split {
        variants: Vec<SplitVariant>,
    },
    Action {
        action: Action,
        next: Next,
    },
    Exit,
}

#[derive(Clone, Debug)]
pub enum Condition {
    /// Conditions over the person's traits, all of which must hold.
    Traits(Vec<Filter>),
    /// The person did this since entering (and within `within_ms` before the branch when
    /// given).
    Event {
        matcher: StepMatcher,
        within_ms: Option<Millis>,
    },
}

#[derive(Clone, Debug)]
pub struct SplitVariant {
    pub name: String,
    pub weight: u32,
    pub next: Next,
    pub holdout: bool,
}

#[derive(Clone, Debug)]
pub struct Action {
    /// What frequency caps count it as: `email`, a webhook's channel (`webhook`, `sms`...),
    /// or `export`.
    pub channel: String,
    pub quiet_hours: bool,
    pub what: ActionKind,
}

#[derive(Clone, Debug)]
pub enum ActionKind {
    Email {
        to: Option<String>,
        from: Option<String>,
        variants: Vec<EmailVariant>,
    },
    Webhook {
        url: String,
        secret: Option<String>,
        body: Option<String>,
    },
    Export {
        audience: String,
        url: Option<String>,
        secret: Option<String>,
    },
}

#[derive(Clone, Debug)]
pub struct EmailVariant {
    pub name: String,
    pub weight: u32,
    pub subject: String,
    pub html: Option<String>,
    pub text: Option<String>,
}

impl Action {
    /// The variant names in order (one, `default`, for actions without variants).
    pub fn variant_names(&self) -> Vec<&str> {
        match &self.what {
            ActionKind::Email { variants, .. } => {
                variants.iter().map(|v| v.name.as_str()).collect()
            }
            _ => vec!["default"],
        }
    }

    pub fn variant_weights(&self) -> Vec<u32> {
        match &self.what {
            ActionKind::Email { variants, .. } => variants.iter().map(|v| v.weight).collect(),
            _ => vec![1],
        }
    }

    /// The event recorded when it is delivered, and when it fails for good.
    pub fn event_names(&self) -> (&'static str, &'static str) {
        match &self.what {
            ActionKind::Email { .. } => ("Email Sent", "Email Failed"),
            ActionKind::Webhook { .. } => ("Webhook Delivered", "Webhook Failed"),
            ActionKind::Export { .. } => ("Audience Exported", "Audience Export Failed"),
        }
    }
}

impl Journey {
    pub fn step_index(&self, id: &str) -> Option<usize> {
        self.steps.iter().position(|s| s.id == id)
    }

    /// Every step matcher the journey reacts to: which stored events the runtime feeds it.
    pub fn matchers(&self) -> Vec<&StepMatcher> {
        let mut out = Vec::new();
        match &self.trigger {
            Trigger::Event(m) => out.push(m),
            Trigger::Audience(a) => out.extend(a.did.iter().chain(&a.not_did)),
        }
        out.extend(self.goal.iter());
        for s in &self.steps {
            match &s.kind {
                StepKind::WaitForEvent { matcher, .. } => out.push(matcher),
                StepKind::Branch {
                    condition: Condition::Event { matcher, .. },
                    ..
                } => out.push(matcher),
                _ => {}
            }
        }
        out
    }

    /// The trait keys its conditions and templates read (besides `email` and `timezone`,
    /// which every journey may use): what the runtime keeps of each person's profile.
    pub fn trait_keys(&self) -> HashSet<String> {
        let mut keys = HashSet::new();
        fn filter_keys(keys: &mut HashSet<String>, fs: &[Filter]) {
            for f in fs {
                if let Some(k) = f.path.get(1) {
                    keys.insert(k.clone());
                }
            }
        }
        if let Trigger::Audience(a) = &self.trigger {
            filter_keys(&mut keys, &a.traits);
        }
        for s in &self.steps {
            match &s.kind {
                StepKind::Branch {
                    condition: Condition::Traits(fs),
                    ..
                } => filter_keys(&mut keys, fs),
                StepKind::Action { action, .. } => {
                    for t in action_templates(action) {
                        keys.extend(template::trait_keys(t));
                    }
                }
                _ => {}
            }
        }
        keys
    }
}

fn action_templates(a: &Action) -> Vec<&str> {
    let mut out = Vec::new();
    match &a.what {
        ActionKind::Email { to, variants, .. } => {
            out.extend(to.as_deref());
            for v in variants {
                out.push(&v.subject);
                out.extend(v.html.as_deref());
                out.extend(v.text.as_deref());
            }
        }
        ActionKind::Webhook { url, body, .. } => {
            out.push(url);
            out.extend(body.as_deref());
        }
        ActionKind::Export { .. } => {}
    }
    out
}

// ------------------------------------------------------------------ reading files

/// Reads a journey file: TOML, or JSON when the text starts with `{`.
pub fn parse_file(text: &str) -> Result<JourneyFile, Vec<Problem>> {
    if text.len() > FILE_BYTES_MAX {
        return Err(vec![problem(
            None,
            "",
            format!("the file is larger than {} bytes", FILE_BYTES_MAX),
        )]);
    }
    let value: Value = if text.trim_start().starts_with('{') {
        serde_json::from_str(text)
            .map_err(|e| vec![problem(None, "", format!("invalid JSON: {e}"))])?
    } else {
        let t: toml::Value = toml::from_str(text)
            .map_err(|e| vec![problem(None, "", format!("invalid TOML: {}", e.message()))])?;
        serde_json::to_value(t).map_err(|e| vec![problem(None, "", e.to_string())])?
    };
    from_value(value)
}

/// A journey file from a JSON value (an HTTP body).
pub fn from_value(value: Value) -> Result<JourneyFile, Vec<Problem>> {
    let step_of = |path: &str, v: &Value| -> Option<String> {
        let rest = path.strip_prefix("steps[")?;
        let i: usize = rest.split(']').next()?.parse().ok()?;
        Some(
            v.get("steps")?
                .get(i)?
                .get("id")
                .and_then(Value::as_str)
                .map_or(format!("#{}", i + 1), str::to_string),
        )
    };
    let copy = value.clone();
    serde_path_to_error::deserialize::<_, JourneyFile>(value).map_err(|e| {
        let path = e.path().to_string();
        let step = step_of(&path, &copy);
        let msg = clean_serde(&e.inner().to_string());
        // serde names a missing or unknown field in its message, not its path.
        let field = if path == "." {
            msg.split('`').nth(1).unwrap_or("").to_string()
        } else {
            path
        };
        vec![problem(step, &field, msg)]
    })
}

fn clean_serde(msg: &str) -> String {
    // serde_json appends " at line 1 column 2" to errors from text; values have none.
    msg.split(" at line ").next().unwrap_or(msg).to_string()
}

fn problem(step: Option<String>, field: &str, error: impl Into<String>) -> Problem {
    Problem {
        step,
        field: field.to_string(),
        error: error.into(),
    }
}

/// Validates a journey file, every problem at once.
pub fn compile(file: &JourneyFile) -> Result<Journey, Vec<Problem>> {
    let mut errs = Vec::new();
    let top = |field: &str, e: String| problem(None, field, e);
    if file.name.is_empty()
        || file.name.len() > 64
        || !file
            .name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    {
        errs.push(top(
            "name",
            "use 1-64 characters a-z, 0-9, '-' or '_'".into(),
        ));
    }
    let dur = |text: &str| throughline_query::parse_duration(text).map_err(|e| e.to_string());
    let matcher = |text: &str| StepMatcher::parse(text).map_err(|e| e.to_string());

    // Trigger.
    let trigger = match (&file.trigger.event, &file.trigger.audience) {
        (Some(e), None) => match matcher(e) {
            Ok(m) => Some(Trigger::Event(m)),
            Err(e) => {
                errs.push(top("trigger.event", e));
                None
            }
        },
        (None, Some(a)) => {
            let mut ok = true;
            let mut ms = |list: &[String], field: &str, errs: &mut Vec<Problem>| {
                list.iter()
                    .enumerate()
                    .filter_map(|(i, t)| match matcher(t) {
                        Ok(m) => Some(m),
                        Err(e) => {
                            errs.push(top(&format!("trigger.audience.{field}[{i}]"), e));
                            ok = false;
                            None
                        }
                    })
                    .collect::<Vec<_>>()
            };
            let did = ms(&a.did, "did", &mut errs);
            let not_did = ms(&a.not_did, "not_did", &mut errs);
            if a.did.is_empty() && a.traits.is_empty() {
                errs.push(top(
                    "trigger.audience.did",
                    "an audience needs at least one `did` step or trait condition".into(),
                ));
                ok = false;
            }
            let within_ms = match dur(a.within.as_deref().unwrap_or("30d")) {
                Ok(v) => v,
                Err(e) => {
                    errs.push(top("trigger.audience.within", e));
                    ok = false;
                    0
                }
            };
            let mut traits = Vec::new();
            for (i, t) in a.traits.iter().enumerate() {
                match trait_filters(t) {
                    Ok(fs) => traits.extend(fs),
                    Err(e) => {
                        errs.push(top(&format!("trigger.audience.traits[{i}]"), e));
                        ok = false;
                    }
                }
            }
            ok.then_some(Trigger::Audience(Audience {
                did,
                not_did,
                within_ms,
                traits,
            }))
        }
        _ => {
            errs.push(top(
                "trigger",
                "give exactly one of `event` and `audience`".into(),
            ));
            None
        }
    };
    let trigger_max_age_ms = dur(file
        .trigger
        .max_age
        .as_deref()
        .unwrap_or(TRIGGER_MAX_AGE_DEFAULT))
    .unwrap_or_else(|e| {
        errs.push(top("trigger.max_age", e));
        0
    });
    let reentry = match file.reentry.as_deref().unwrap_or("once") {
        "once" => Reentry::Once,
        "always" => Reentry::Always,
        other => match dur(other) {
            Ok(ms) => Reentry::Every(ms),
            Err(_) => {
                errs.push(top(
                    "reentry",
                    format!("{other:?}: use `once`, `always` or a duration such as `30d`"),
                ));
                Reentry::Once
            }
        },
    };
    let (goal, goal_within_ms) = match &file.goal {
        Some(g) => {
            let m = matcher(&g.event)
                .map_err(|e| errs.push(top("goal.event", e)))
                .ok();
            let w = dur(g.within.as_deref().unwrap_or(GOAL_WITHIN_DEFAULT))
                .map_err(|e| errs.push(top("goal.within", e)))
                .unwrap_or(0);
            (m, w)
        }
        None => (None, dur(GOAL_WITHIN_DEFAULT).expect("a valid default")),
    };
    let limits = file.limits.clone().unwrap_or_default();
    for (field, v) in [
        ("limits.active_max", limits.active_max),
        ("limits.entries_per_day_max", limits.entries_per_day_max),
    ] {
        if v == Some(0) {
            errs.push(top(field, "must be at least 1".into()));
        }
    }
    let utm_source = file
        .utm_source
        .clone()
        .unwrap_or_else(|| "throughline".into());
    if utm_source.is_empty() || utm_source.len() > 64 {
        errs.push(top("utm_source", "use 1-64 characters".into()));
    }

    // Steps: ids first, so references can be checked.
    if file.steps.is_empty() {
        errs.push(top("steps", "a journey needs at least one step".into()));
    }
    if file.steps.len() > STEPS_MAX {
        errs.push(top("steps", format!("at most {STEPS_MAX} steps")));
    }
    let mut ids: Vec<String> = Vec::new();
    for (i, s) in file.steps.iter().enumerate() {
        let label = format!("#{}", i + 1);
        let id = s.get("id").and_then(Value::as_str);
        match id {
            Some(id)
                if !id.is_empty()
                    && id.len() <= 64
                    && id
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
            {
                if ids.iter().any(|x| x == id) {
                    errs.push(problem(Some(id.into()), "id", "two steps have this id"));
                }
                ids.push(id.to_string());
            }
            _ => {
                errs.push(problem(
                    Some(label.clone()),
                    "id",
                    "every step needs an `id` of 1-64 characters a-z, A-Z, 0-9, '-' or '_'",
                ));
                ids.push(label);
            }
        }
    }
    let index: HashMap<&str, usize> = ids
        .iter()
        .enumerate()
        .map(|(i, s)| (s.as_str(), i))
        .collect();
    let mut steps = Vec::new();
    for (i, raw) in file.steps.iter().enumerate() {
        let id = ids[i].clone();
        let mut local = Vec::new();
        let kind = compile_step(raw, i, &ids, &index, &mut local);
        errs.extend(
            local
                .into_iter()
                .map(|(field, e)| problem(Some(id.clone()), &field, e)),
        );
        steps.push(Step {
            id,
            kind: kind.unwrap_or(StepKind::Exit),
        });
    }
    if errs.is_empty() {
        if let Some(at) = cycle(&steps) {
            errs.push(problem(
                Some(steps[at].id.clone()),
                "next",
                "the steps loop back here: a journey's steps must not form a cycle",
            ));
        }
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    Ok(Journey {
        name: file.name.clone(),
        priority: file.priority,
        trigger: trigger.expect("no errors means a trigger"),
        trigger_max_age_ms,
        reentry,
        goal,
        goal_within_ms,
        active_max: limits.active_max,
        entries_per_day_max: limits.entries_per_day_max,
        utm_source,
        steps,
    })
}

/// `plan = 'pro' and seats > 5` as trait conditions: bare keys read the traits.
pub fn trait_filters(text: &str) -> Result<Vec<Filter>, String> {
    let m = StepMatcher::parse(&format!("traits where {text}")).map_err(|e| e.to_string())?;
    if m.filters.is_empty() {
        return Err(format!("{text:?} is no condition: use e.g. `plan = 'pro'`"));
    }
    Ok(m.filters
        .into_iter()
        .map(|mut f| {
            // Conditions read one flat map of traits, whichever prefix was written.
            if matches!(f.path[0].as_str(), "properties" | "traits" | "context") {
                f.path[0] = "properties".into();
            }
            f
        })
        .collect())
}

type Local = Vec<(String, String)>;

fn compile_step(
    raw: &Value,
    at: usize,
    ids: &[String],
    index: &HashMap<&str, usize>,
    errs: &mut Local,
) -> Option<StepKind> {
    let Some(obj) = raw.as_object() else {
        errs.push(("".into(), "a step must be a table (object)".into()));
        return None;
    };
    let Some(kind) = obj.get("type").and_then(Value::as_str) else {
        errs.push((
            "type".into(),
            "missing: use wait, wait_for_event, branch, split, email, webhook, export or exit"
                .into(),
        ));
        return None;
    };
    let mut rest = obj.clone();
    rest.remove("id");
    rest.remove("type");
    let rest = Value::Object(rest);
    fn read<T: serde::de::DeserializeOwned>(v: Value, errs: &mut Local) -> Option<T> {
        match serde_path_to_error::deserialize::<_, T>(v) {
            Ok(t) => Some(t),
            Err(e) => {
                let path = e.path().to_string();
                let msg = clean_serde(&e.inner().to_string());
                // serde names a missing or unknown field in its message, not its path.
                let field = if path == "." {
                    msg.split('`').nth(1).unwrap_or("").to_string()
                } else {
                    path
                };
                errs.push((field, msg));
                None
            }
        }
    }
    // The step after this one, or the end: the default of every `next`.
    let following = (at + 1 < ids.len()).then_some(at + 1);
    let next = |field: &str, v: &Option<String>, errs: &mut Local| -> Next {
        match v.as_deref() {
            None => following,
            Some("end") => None,
            Some(id) => match index.get(id) {
                Some(&i) if i == at => {
                    errs.push((field.into(), "a step cannot lead to itself".into()));
                    None
                }
                Some(&i) => Some(i),
                None => {
                    errs.push((
                        field.into(),
                        format!("no step has the id {id:?} (or use \"end\")"),
                    ));
                    None
                }
            },
        }
    };
    let duration = |field: &str, text: &str, errs: &mut Local| -> Millis {
        match throughline_query::parse_duration(text) {
            Ok(ms) if ms <= WAIT_MS_MAX => ms,
            Ok(_) => {
                errs.push((field.into(), "at most 366d".into()));
                0
            }
            Err(e) => {
                errs.push((field.into(), e.to_string()));
                0
            }
        }
    };
    let matcher = |field: &str, text: &str, errs: &mut Local| -> Option<StepMatcher> {
        StepMatcher::parse(text)
            .map_err(|e| errs.push((field.into(), e.to_string())))
            .ok()
    };
    let check_template = |field: &str, text: &str, kind: template::Kind, errs: &mut Local| {
        if text.len() > TEMPLATE_BYTES_MAX {
            errs.push((
                field.into(),
                format!("longer than {TEMPLATE_BYTES_MAX} bytes"),
            ));
        } else if let Err(e) = template::check(text, kind) {
            errs.push((field.into(), e));
        }
    };
    match kind {
        "wait" => {
            let f: WaitFile = read(rest, errs)?;
            let ms = duration("duration", &f.duration, errs);
            Some(StepKind::Wait {
                ms,
                next: next("next", &f.next, errs),
            })
        }
        "wait_for_event" => {
            let f: WaitForFile = read(rest, errs)?;
            let m = matcher("event", &f.event, errs);
            let timeout_ms = duration("timeout", &f.timeout, errs);
            let on_event = next("on_event", &f.on_event, errs);
            let on_timeout = next("on_timeout", &f.on_timeout, errs);
            Some(StepKind::WaitForEvent {
                matcher: m?,
                timeout_ms,
                on_event,
                on_timeout,
            })
        }
        "branch" => {
            let f: BranchFile = read(rest, errs)?;
            let condition = match (&f.trait_, &f.event) {
                (Some(t), None) => {
                    if f.within.is_some() {
                        errs.push((
                            "within".into(),
                            "only an event branch takes `within`".into(),
                        ));
                    }
                    trait_filters(t)
                        .map_err(|e| errs.push(("trait".into(), e)))
                        .ok()
                        .map(Condition::Traits)
                }
                (None, Some(e)) => {
                    let within_ms = f.within.as_ref().map(|w| duration("within", w, errs));
                    matcher("event", e, errs).map(|matcher| Condition::Event { matcher, within_ms })
                }
                _ => {
                    errs.push((
                        "trait".into(),
                        "give exactly one of `trait` and `event`".into(),
                    ));
                    None
                }
            };
            let then = next("then", &f.then, errs);
            let otherwise = next("else", &f.else_, errs);
            Some(StepKind::Branch {
                condition: condition?,
                then,
                otherwise,
            })
        }
        "split" => {
            let f: SplitFile = read(rest, errs)?;
            if f.variants.len() < 2 || f.variants.len() > VARIANTS_MAX {
                errs.push((
                    "variants".into(),
                    format!("a split needs 2 to {VARIANTS_MAX} variants"),
                ));
            }
            let mut names = HashSet::new();
            let mut variants = Vec::new();
            for (i, v) in f.variants.iter().enumerate() {
                if v.weight == 0 {
                    errs.push((format!("variants[{i}].weight"), "must be at least 1".into()));
                }
                if !valid_label(&v.name) || !names.insert(v.name.clone()) {
                    errs.push((
                        format!("variants[{i}].name"),
                        "use a unique name of 1-64 characters a-z, A-Z, 0-9, '-' or '_'".into(),
                    ));
                }
                variants.push(SplitVariant {
                    name: v.name.clone(),
                    weight: v.weight,
                    next: next(&format!("variants[{i}].next"), &v.next, errs),
                    holdout: v.holdout,
                });
            }
            Some(StepKind::Split { variants })
        }
        "email" => {
            let f: EmailFile = read(rest, errs)?;
            let mut variants = Vec::new();
            if f.variants.is_empty() {
                variants.push(EmailVariant {
                    name: "default".into(),
                    weight: 1,
                    subject: f.subject.clone().unwrap_or_default(),
                    html: f.html.clone(),
                    text: f.text.clone(),
                });
                if f.subject.is_none() {
                    errs.push(("subject".into(), "an email needs a subject".into()));
                }
                if f.html.is_none() && f.text.is_none() {
                    errs.push(("html".into(), "an email needs `html` or `text`".into()));
                }
            } else {
                if f.variants.len() > VARIANTS_MAX {
                    errs.push((
                        "variants".into(),
                        format!("at most {VARIANTS_MAX} variants"),
                    ));
                }
                let mut names = HashSet::new();
                for (i, v) in f.variants.iter().enumerate() {
                    if !valid_label(&v.name) || !names.insert(v.name.clone()) {
                        errs.push((
                            format!("variants[{i}].name"),
                            "use a unique name of 1-64 characters a-z, A-Z, 0-9, '-' or '_'".into(),
                        ));
                    }
                    if v.weight == 0 {
                        errs.push((format!("variants[{i}].weight"), "must be at least 1".into()));
                    }
                    let subject = v.subject.clone().or_else(|| f.subject.clone());
                    let html = v.html.clone().or_else(|| f.html.clone());
                    let text = v.text.clone().or_else(|| f.text.clone());
                    if subject.is_none() {
                        errs.push((
                            format!("variants[{i}].subject"),
                            "an email needs a subject".into(),
                        ));
                    }
                    if html.is_none() && text.is_none() {
                        errs.push((
                            format!("variants[{i}].html"),
                            "an email needs `html` or `text`".into(),
                        ));
                    }
                    variants.push(EmailVariant {
                        name: v.name.clone(),
                        weight: v.weight,
                        subject: subject.unwrap_or_default(),
                        html,
                        text,
                    });
                }
            }
            let with_variants = !f.variants.is_empty();
            for (i, v) in variants.iter().enumerate() {
                let field = |name: &str| {
                    if with_variants && f.variants[i].subject.is_some() && name == "subject"
                        || with_variants && f.variants[i].html.is_some() && name == "html"
                        || with_variants && f.variants[i].text.is_some() && name == "text"
                    {
                        format!("variants[{i}].{name}")
                    } else {
                        name.to_string()
                    }
                };
                check_template(&field("subject"), &v.subject, template::Kind::Text, errs);
                if let Some(h) = &v.html {
                    check_template(&field("html"), h, template::Kind::Html, errs);
                }
                if let Some(t) = &v.text {
                    check_template(&field("text"), t, template::Kind::Text, errs);
                }
            }
            if let Some(to) = &f.to {
                check_template("to", to, template::Kind::Text, errs);
            }
            if let Some(from) = &f.from {
                if !from.contains('@') {
                    errs.push((
                        "from".into(),
                        "an email address, e.g. \"Shop <hello@shop.example>\"".into(),
                    ));
                }
            }
            Some(StepKind::Action {
                action: Action {
                    channel: "email".into(),
                    quiet_hours: f.quiet_hours.unwrap_or(true),
                    what: ActionKind::Email {
                        to: f.to,
                        from: f.from,
                        variants,
                    },
                },
                next: next("next", &f.next, errs),
            })
        }
        "webhook" => {
            let f: WebhookFile = read(rest, errs)?;
            if !(f.url.starts_with("http://") || f.url.starts_with("https://")) {
                errs.push(("url".into(), "an http:// or https:// URL".into()));
            }
            check_template("url", &f.url, template::Kind::Text, errs);
            if let Some(b) = &f.body {
                check_template("body", b, template::Kind::Json, errs);
            }
            if let Some(s) = &f.secret {
                if let Err(e) = crate::webhook::decode_secret(s) {
                    errs.push(("secret".into(), e));
                }
            }
            let channel = f.channel.clone().unwrap_or_else(|| "webhook".into());
            if !valid_label(&channel) {
                errs.push((
                    "channel".into(),
                    "use 1-64 characters a-z, A-Z, 0-9, '-' or '_'".into(),
                ));
            }
            Some(StepKind::Action {
                action: Action {
                    channel,
                    quiet_hours: f.quiet_hours.unwrap_or(true),
                    what: ActionKind::Webhook {
                        url: f.url,
                        secret: f.secret,
                        body: f.body,
                    },
                },
                next: next("next", &f.next, errs),
            })
        }
        "export" => {
            let f: ExportFile = read(rest, errs)?;
            if !valid_label(&f.audience) {
                errs.push((
                    "audience".into(),
                    "use 1-64 characters a-z, A-Z, 0-9, '-' or '_'".into(),
                ));
            }
            if let Some(u) = &f.url {
                if !(u.starts_with("http://") || u.starts_with("https://")) {
                    errs.push(("url".into(), "an http:// or https:// URL".into()));
                }
            }
            if let Some(s) = &f.secret {
                if let Err(e) = crate::webhook::decode_secret(s) {
                    errs.push(("secret".into(), e));
                }
            }
            Some(StepKind::Action {
                action: Action {
                    channel: "export".into(),
                    quiet_hours: false,
                    what: ActionKind::Export {
                        audience: f.audience,
                        url: f.url,
                        secret: f.secret,
                    },
                },
                next: next("next", &f.next, errs),
            })
        }
        "exit" => {
            let _: ExitFile = read(rest, errs)?;
            Some(StepKind::Exit)
        }
        other => {
            errs.push((
                "type".into(),
                format!("{other:?}: use wait, wait_for_event, branch, split, email, webhook, export or exit"),
            ));
            None
        }
    }
}

fn valid_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The successors of a step.
pub fn successors(kind: &StepKind) -> Vec<usize> {
    let nexts: Vec<Next> = match kind {
        StepKind::Wait { next, .. } | StepKind::Action { next, .. } => vec![*next],
        StepKind::WaitForEvent {
            on_event,
            on_timeout,
            ..
        } => vec![*on_event, *on_timeout],
        StepKind::Branch {
            then, otherwise, ..
        } => vec![*then, *otherwise],
        StepKind::Split { variants } => variants.iter().map(|v| v.next).collect(),
        StepKind::Exit => vec![],
    };
    nexts.into_iter().flatten().collect()
}

/// A step on a cycle, if the graph has one.
fn cycle(steps: &[Step]) -> Option<usize> {
    // 0 unvisited, 1 on the stack, 2 done.
    let mut mark = vec![0u8; steps.len()];
    fn visit(i: usize, steps: &[Step], mark: &mut [u8]) -> Option<usize> {
        mark[i] = 1;
        for j in successors(&steps[i].kind) {
            if mark[j] == 1 {
                return Some(j);
            }
            if mark[j] == 0 {
                if let Some(c) = visit(j, steps, mark) {
                    return Some(c);
                }
            }
        }
        mark[i] = 2;
        None
    }
    (0..steps.len()).find_map(|i| {
        if mark[i] == 0 {
            visit(i, steps, &mut mark)
        } else {
            None
        }
    })
}

/// Reads and validates in one go: what `journeys validate` runs.
pub fn validate(text: &str) -> Result<(JourneyFile, Journey), Vec<Problem>> {
    let file = parse_file(text)?;
    let journey = compile(&file)?;
    Ok((file, journey))
}

/// A summary of a journey's shape, for listings: step ids and types in order.
pub fn outline(file: &JourneyFile) -> Vec<BTreeMap<&'static str, String>> {
    file.steps
        .iter()
        .map(|s| {
            let mut m = BTreeMap::new();
            m.insert(
                "id",
                s.get("id")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
            );
            m.insert(
                "type",
                s.get("type")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
            );
            m
        })
        .collect()
}

#[cfg(test)]
mod tests;
