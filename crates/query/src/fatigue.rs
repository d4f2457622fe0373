//! `query fatigue`: touch frequency per person and channel against unsubscribes,
//! complaints, engagement and conversion; the response curve per channel with confidence
//! intervals, the recommended frequency cap beside the configured one, and the audience of
//! persons showing fatigue now.
//!
//! **Channels** are sets of events: the touches (sends, recorded ad impressions), the
//! engagements (opens, clicks), the unsubscribes and the complaints ([`default_channels`]:
//! Email, Push, SMS and Ads with Segment's and the e-mail platforms' event names). Sends
//! recorded by orchestration and sends imported from an e-mail platform's export are the
//! same events, so both count. Channels without touches in range are left out.
//!
//! **Windows, curve and cap:** see `throughline_kernels::fatigue`. Per channel, each
//! person's exposure is cut into `window` (7 days) windows from their first touch, and the
//! windows are grouped by their touch count. Rates carry Wilson intervals.
//!
//! **The audience** ("showing fatigue now"): persons not opted out of the channel whose
//! touches in the window before `now` exceed the cap (the recommendation, else the
//! configured cap) and whose engagement is falling: engagements per touch over the 14 days
//! before `now` below those of the 28 days before that (at least two touches in each).
//! Each row names the person by every id, so the list can be loaded as a suppression list.
//!
//! **Configured caps** are the request's `configured_caps`, else (filled in by the server
//! and the CLI through [`fill_from_orchestration`]) the project's orchestration frequency
//! caps (`[orchestrate] caps`), converted to touches per `window`; each channel says where
//! its cap came from (`configured_cap_source`).
//!
//! Reads only the name and path columns: no payload is decoded.

use std::collections::{BTreeMap, HashMap};

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use throughline_classify::Rules;
use throughline_identity::IdKind;
use throughline_kernels::fatigue::{self, Curve, Values, Window};
use throughline_kernels::stats;
use throughline_model::{format_ms, Millis};

use crate::rows::{load, Load};
use crate::source::Source;
use crate::spec::{parse_duration, parse_time_bound, StepMatcher};
use crate::QueryError;

/// Persons listed in the audience at most (the CLI exports all of them up to this).
pub const AUDIENCE_MAX: usize = 1_000_000;
const AUDIENCE_DEFAULT: usize = 100;
pub const CHANNELS_MAX: usize = 16;
pub const EVENTS_PER_CHANNEL_MAX: usize = 32;
const DAY_MS: Millis = 86_400_000;
/// Engagement is compared over these two spans before `now`.
const RECENT_MS: Millis = 14 * DAY_MS;
const BEFORE_MS: Millis = 28 * DAY_MS;

/// The events of one channel.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ChannelEvents {
    pub channel: String,
    pub touches: Vec<String>,
    #[serde(default)]
    pub engagements: Vec<String>,
    #[serde(default)]
    pub unsubscribes: Vec<String>,
    #[serde(default)]
    pub complaints: Vec<String>,
}

/// Email, Push, SMS and Ads, with the event names of Segment's specs and the e-mail
/// platforms' exports.
pub fn default_channels() -> Vec<ChannelEvents> {
    let c = |channel: &str, t: &[&str], e: &[&str], u: &[&str], k: &[&str]| ChannelEvents {
        channel: channel.into(),
        touches: t.iter().map(|s| s.to_string()).collect(),
        engagements: e.iter().map(|s| s.to_string()).collect(),
        unsubscribes: u.iter().map(|s| s.to_string()).collect(),
        complaints: k.iter().map(|s| s.to_string()).collect(),
    };
    vec![
        c(
            "Email",
            &["Email Sent"],
            &["Email Opened", "Email Link Clicked"],
            &["Unsubscribed", "Email Unsubscribed"],
            &["Spam Reported", "Email Marked as Spam"],
        ),
        c(
            "Push",
            &["Push Notification Sent"],
            &["Push Notification Tapped", "Push Notification Opened"],
            &["Push Notifications Disabled"],
            &[],
        ),
        c(
            "SMS",
            &["SMS Sent"],
            &["SMS Link Clicked"],
            &["SMS Unsubscribed", "SMS Opted Out"],
            &[],
        ),
        c(
            "Ads",
            &["Ad Impression"],
            &["Ad Clicked"],
            &["Ad Hidden"],
            &["Ad Reported"],
        ),
    ]
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FatigueRequest {
    /// The conversion: an event name, `A|B` or `page:/path` (no `where` conditions).
    pub conversion: String,
    #[serde(default)]
    pub channels: Option<Vec<ChannelEvents>>,
    /// What one conversion is worth (default 1).
    #[serde(default)]
    pub conversion_value: Option<f64>,
    /// What one unsubscribe costs: the future value of the lost subscriber (default 10).
    #[serde(default)]
    pub unsubscribe_cost: Option<f64>,
    /// What one complaint costs (default: the unsubscribe cost).
    #[serde(default)]
    pub complaint_cost: Option<f64>,
    /// The frequency window (default 7d).
    #[serde(default)]
    pub window: Option<String>,
    /// Touch counts with fewer windows are left out of the recommendation (default 100).
    #[serde(default)]
    pub min_windows: Option<u64>,
    #[serde(default)]
    pub confidence: Option<f64>,
    /// The caps the orchestration config sets, per channel, in touches per window. When
    /// the request gives none, the server fills them from its orchestration caps.
    #[serde(default)]
    pub configured_caps: Option<BTreeMap<String, u32>>,
    /// Where caps filled in by [`fill_from_orchestration`] came from, per channel; never
    /// read from a request (a request's own caps say `request`).
    #[serde(skip)]
    pub configured_cap_sources: BTreeMap<String, CapSource>,
    /// "Now" for the audience (default: the end of the range or of the data).
    #[serde(default)]
    pub now: Option<String>,
    /// Audience rows returned (default 100, at most 1000000); `persons` counts all.
    #[serde(default)]
    pub audience_limit: Option<usize>,
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub to: Option<String>,
    /// Only persons whose first touch in range has these values (see [`crate::filter`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<crate::filter::Filter>,
}

/// Where a channel's configured cap came from.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct CapSource {
    /// `request` (the request's `configured_caps`) or `orchestration` (the project's
    /// frequency caps across journeys).
    pub from: &'static str,
    /// Which caps, from where, and how they make this many touches per window.
    pub detail: String,
    /// The orchestration caps behind it (`3 per 7d`), empty for `request`.
    pub caps: Vec<String>,
}

/// One orchestration frequency cap: at most `count` sends on `channel` in any `per`.
#[derive(Clone, Debug, PartialEq)]
pub struct OrchestrationCap {
    pub channel: String,
    pub count: u32,
    pub per: String,
}

/// Fills a request without `configured_caps` from orchestration caps: per fatigue channel
/// (orchestration channels match its name in any case: `email` is `Email`), the tightest
/// of its caps as touches per `window`. A cap of `count` per `per` allows `count` in a
/// window no longer than `per`, and `count * ceil(window / per)` in a longer one (caps
/// hold over any sliding `per`, so each `per` of the window can take `count`). `origin`
/// says where the caps were read, for `configured_cap_source`. A request with its own
/// caps is left as it is.
pub fn fill_from_orchestration(
    req: &mut FatigueRequest,
    caps: &[OrchestrationCap],
    origin: &str,
) -> Result<(), QueryError> {
    if req.configured_caps.is_some() {
        return Ok(());
    }
    let window = parse_duration(req.window.as_deref().unwrap_or("7d"))?;
    let channels = req.channels.clone().unwrap_or_else(default_channels);
    let mut filled = BTreeMap::new();
    for ch in &channels {
        let mut best: Option<u32> = None;
        let mut parts = Vec::new();
        let mut named = Vec::new();
        let mut spelled = "";
        for c in caps
            .iter()
            .filter(|c| c.channel.eq_ignore_ascii_case(&ch.channel))
        {
            let per = parse_duration(&c.per)?;
            if per <= 0 {
                continue;
            }
            let allowed = if per >= window {
                c.count
            } else {
                let spans = (window + per - 1) / per;
                c.count
                    .saturating_mul(u32::try_from(spans).unwrap_or(u32::MAX))
            };
            best = Some(best.map_or(allowed, |b| b.min(allowed)));
            spelled = &c.channel;
            parts.push(format!("{} per {} allows {allowed}", c.count, c.per));
            named.push(format!("{} per {}", c.count, c.per));
        }
        let Some(cap) = best else { continue };
        filled.insert(ch.channel.clone(), cap);
        let window_text = req.window.as_deref().unwrap_or("7d");
        req.configured_cap_sources.insert(
            ch.channel.clone(),
            CapSource {
                from: "orchestration",
                detail: format!(
                    "{origin}: the caps on {spelled:?} ({}) give at most {cap} touches per {window_text} window",
                    parts.join(", ")
                ),
                caps: named,
            },
        );
    }
    if !filled.is_empty() {
        req.configured_caps = Some(filled);
    }
    Ok(())
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Rate {
    pub rate: Option<f64>,
    pub ci_low: Option<f64>,
    pub ci_high: Option<f64>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct CurvePoint {
    /// Touches in the window (the last point pools this many or more).
    pub touches: u32,
    pub windows: u64,
    /// Windows ending in an unsubscribe or complaint, of all windows with this many touches.
    pub opt_out: Rate,
    pub complaint: Rate,
    /// Windows with a conversion.
    pub conversion: Rate,
    /// Engagements per touch.
    pub engagement_per_touch: Option<f64>,
    /// Whether the point had enough windows to inform the recommendation, and if so the
    /// smoothed curves, the net value per window and its change from the previous point.
    pub used: bool,
    pub conversion_fit: Option<f64>,
    pub opt_out_cost_fit: Option<f64>,
    pub net_value: Option<f64>,
    pub marginal_conversion_value: Option<f64>,
    pub marginal_opt_out_cost: Option<f64>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ChannelFatigue {
    pub channel: String,
    /// Persons with at least one full window.
    pub persons: u64,
    pub windows: u64,
    pub touches: u64,
    pub engagements: u64,
    pub unsubscribes: u64,
    pub complaints: u64,
    pub converted_windows: u64,
    pub curve: Vec<CurvePoint>,
    /// `ok`, or `not enough data` when fewer than two touch counts had `min_windows`.
    pub status: &'static str,
    /// Touches per window past which the marginal opt-outs cost more than the marginal
    /// conversions bring.
    pub recommended_cap: Option<u32>,
    pub configured_cap: Option<u32>,
    /// Where `configured_cap` came from; null without one.
    pub configured_cap_source: Option<CapSource>,
    /// What the two caps say together, in words.
    pub cap_advice: String,
    /// Persons touched more often than the cap in the last window before `now`.
    pub persons_over_cap_now: u64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct AudienceRow {
    pub person_id: String,
    pub user_ids: Vec<String>,
    pub emails: Vec<String>,
    pub anonymous_ids: Vec<String>,
    pub channel: String,
    pub touches_last_window: u32,
    pub cap: u32,
    pub engagement_recent: f64,
    pub engagement_before: f64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Audience {
    /// Distinct persons in the audience, and rows (a person per channel).
    pub persons: u64,
    pub rows_total: u64,
    pub rows: Vec<AudienceRow>,
    pub omitted_rows: u64,
    pub definition: &'static str,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct FatigueResponse {
    pub conversion: String,
    pub conversion_value: f64,
    pub unsubscribe_cost: f64,
    pub complaint_cost: f64,
    pub window_seconds: f64,
    pub min_windows: u64,
    pub confidence: f64,
    pub now: String,
    pub methods: BTreeMap<&'static str, &'static str>,
    pub channels: Vec<ChannelFatigue>,
    pub audience: Audience,
}

/// What the audience needs of one person on one channel: (person, touches in the last
/// window, [engagements, touches] over the recent span then the span before, opted out by
/// now).
type NowState = (u32, u32, [u32; 4], bool);

/// Per person and channel, the sorted times of each kind of event.
#[derive(Default)]
struct Times {
    touches: Vec<Millis>,
    engagements: Vec<Millis>,
    unsubscribes: Vec<Millis>,
    complaints: Vec<Millis>,
}

pub fn run(
    snap: &Source,
    rules: &Rules,
    req: &FatigueRequest,
) -> Result<FatigueResponse, QueryError> {
    let conversion = StepMatcher::parse(&req.conversion)?;
    if !conversion.filters.is_empty() {
        return Err(QueryError::invalid(
            "fatigue conversions match event names and page paths; `where` conditions are not supported",
        ));
    }
    let channels = req.channels.clone().unwrap_or_else(default_channels);
    if channels.is_empty() || channels.len() > CHANNELS_MAX {
        return Err(QueryError::invalid(format!(
            "name 1 to {CHANNELS_MAX} channels"
        )));
    }
    // Event name -> (channel, role): 0 touch, 1 engagement, 2 unsubscribe, 3 complaint.
    let mut role_of: HashMap<String, (usize, u8)> = HashMap::new();
    for (c, ch) in channels.iter().enumerate() {
        let lists = [
            &ch.touches,
            &ch.engagements,
            &ch.unsubscribes,
            &ch.complaints,
        ];
        if ch.touches.is_empty() {
            return Err(QueryError::invalid(format!(
                "channel {:?} needs at least one touch event",
                ch.channel
            )));
        }
        for (role, list) in lists.into_iter().enumerate() {
            if list.len() > EVENTS_PER_CHANNEL_MAX {
                return Err(QueryError::invalid(format!(
                    "channel {:?}: at most {EVENTS_PER_CHANNEL_MAX} events per list",
                    ch.channel
                )));
            }
            for name in list {
                if role_of.insert(name.clone(), (c, role as u8)).is_some() {
                    return Err(QueryError::invalid(format!(
                        "event {name:?} is listed twice in the channels"
                    )));
                }
            }
        }
    }
    let value = req.conversion_value.unwrap_or(1.0);
    let unsubscribe_cost = req.unsubscribe_cost.unwrap_or(10.0);
    let complaint_cost = req.complaint_cost.unwrap_or(unsubscribe_cost);
    for (name, v) in [
        ("conversion_value", value),
        ("unsubscribe_cost", unsubscribe_cost),
        ("complaint_cost", complaint_cost),
    ] {
        if !v.is_finite() || v < 0.0 {
            return Err(QueryError::invalid(format!(
                "{name} must be a number of at least 0"
            )));
        }
    }
    let window = parse_duration(req.window.as_deref().unwrap_or("7d"))?;
    let min_windows = req.min_windows.unwrap_or(100).max(1);
    let confidence = req.confidence.unwrap_or(0.95);
    if !(0.5..=0.999).contains(&confidence) {
        return Err(QueryError::invalid(
            "confidence must be at least 0.5 and at most 0.999",
        ));
    }
    let audience_limit = req.audience_limit.unwrap_or(AUDIENCE_DEFAULT);
    if audience_limit > AUDIENCE_MAX {
        return Err(QueryError::invalid(format!(
            "audience_limit must be at most {AUDIENCE_MAX}"
        )));
    }
    let from = req.from.as_deref().map(parse_time_bound).transpose()?;
    let to = req.to.as_deref().map(parse_time_bound).transpose()?;
    if let (Some(f), Some(t)) = (from, to) {
        if f >= t {
            return Err(QueryError::invalid("`from` must be before `to`"));
        }
    }

    let only = crate::filter::persons(req.filter.as_ref(), snap, rules, from, to)?;
    let rows = load(
        snap,
        &Load {
            from,
            to,
            persons: only.as_ref(),
            dims: vec![0, 1],
            keep: Some(Box::new(|kind, v| {
                v[0].is_some_and(|n| role_of.contains_key(n))
                    || conversion.matches_event(kind, v[0], v[1])
            })),
            ..Default::default()
        },
    )?;
    let data_end = to.unwrap_or_else(|| rows.ts.iter().copied().max().map_or(0, |t| t + 1));
    let now = req
        .now
        .as_deref()
        .map(parse_time_bound)
        .transpose()?
        .unwrap_or(data_end);

    // Per dictionary code of the name column: its (channel, role), or a conversion.
    let names = rows.dim(0);
    let paths = rows.dim(1);
    let code_role: Vec<Option<(usize, u8)>> =
        names.dict.iter().map(|n| role_of.get(n).copied()).collect();
    let mut conv_cache: FxHashMap<(u8, u32, u32), bool> = FxHashMap::default();

    let n_ch = channels.len();
    let mut curves: Vec<Curve> = (0..n_ch).map(|_| Curve::default()).collect();
    let mut persons = vec![0u64; n_ch];
    // Per channel: touches, engagements, unsubscribes, complaints, converted windows.
    let mut totals = vec![[0u64; 5]; n_ch];
    let mut now_state: Vec<Vec<NowState>> = vec![Vec::new(); n_ch];

    for r in rows.persons() {
        let person = rows.person[r.start];
        let mut times: Vec<Times> = (0..n_ch).map(|_| Times::default()).collect();
        let mut conversions: Vec<Millis> = Vec::new();
        for i in r {
            let code = names.codes[i];
            let role = (code != throughline_store::NO_VALUE)
                .then(|| code_role[code as usize])
                .flatten();
            if let Some((c, role)) = role {
                let t = &mut times[c];
                match role {
                    0 => t.touches.push(rows.ts[i]),
                    1 => t.engagements.push(rows.ts[i]),
                    2 => t.unsubscribes.push(rows.ts[i]),
                    _ => t.complaints.push(rows.ts[i]),
                }
                continue;
            }
            let hit = *conv_cache
                .entry((rows.kind[i], code, paths.codes[i]))
                .or_insert_with(|| {
                    conversion.matches_event(rows.kind[i], names.get(i), paths.get(i))
                });
            if hit {
                conversions.push(rows.ts[i]);
            }
        }
        for (c, t) in times.iter().enumerate() {
            if t.touches.is_empty() {
                continue;
            }
            let mut any = false;
            fatigue::windows(
                &t.touches,
                &t.engagements,
                &t.unsubscribes,
                &t.complaints,
                &conversions,
                data_end,
                window,
                |w: Window| {
                    any = true;
                    curves[c].add(&w);
                    let tot = &mut totals[c];
                    tot[0] += w.touches as u64;
                    tot[1] += w.engagements as u64;
                    tot[2] += u64::from(w.opted_out && !w.complained);
                    tot[3] += u64::from(w.complained);
                    tot[4] += u64::from(w.converted);
                },
            );
            persons[c] += u64::from(any);
            let within = |s: &[Millis], a: Millis, b: Millis| {
                (s.partition_point(|&x| x < b) - s.partition_point(|&x| x < a)) as u32
            };
            let opted_out = t.unsubscribes.iter().chain(&t.complaints).any(|&x| x < now);
            let last = within(&t.touches, now - window, now);
            let recent = (now - RECENT_MS, now);
            let before = (now - RECENT_MS - BEFORE_MS, now - RECENT_MS);
            now_state[c].push((
                person,
                last,
                [
                    within(&t.engagements, recent.0, recent.1),
                    within(&t.touches, recent.0, recent.1),
                    within(&t.engagements, before.0, before.1),
                    within(&t.touches, before.0, before.1),
                ],
                opted_out,
            ));
        }
    }

    let values = Values {
        conversion: value,
        unsubscribe: unsubscribe_cost,
        complaint: complaint_cost,
    };
    let identity = snap.identity()?;
    let mut out_channels = Vec::new();
    let mut audience_rows: Vec<AudienceRow> = Vec::new();
    for (c, ch) in channels.iter().enumerate() {
        if totals[c][0] == 0 && persons[c] == 0 {
            continue;
        }
        let rec = fatigue::recommend(&curves[c], values, min_windows);
        let configured = req
            .configured_caps
            .as_ref()
            .and_then(|m| m.get(&ch.channel).copied());
        let last_bin = curves[c]
            .bins
            .iter()
            .rposition(|b| b.windows > 0)
            .unwrap_or(0);
        let mut prev: Option<(f64, f64)> = None;
        let curve: Vec<CurvePoint> = curves[c].bins[..=last_bin]
            .iter()
            .map(|b| {
                let at = rec.touches.iter().position(|&t| t == b.touches);
                let fits = at.map(|k| (rec.conversion_fit[k], rec.opt_out_cost_fit[k]));
                let marginal = fits.and_then(|(cf, kf)| {
                    let m = prev.map(|(pc, pk)| (value * (cf - pc), kf - pk));
                    prev = Some((cf, kf));
                    m
                });
                CurvePoint {
                    touches: b.touches,
                    windows: b.windows,
                    opt_out: rate(b.opted_out, b.windows, confidence),
                    complaint: rate(b.complained, b.windows, confidence),
                    conversion: rate(b.converted, b.windows, confidence),
                    engagement_per_touch: (b.touches_total > 0)
                        .then(|| b.engagements as f64 / b.touches_total as f64),
                    used: at.is_some(),
                    conversion_fit: fits.map(|f| f.0),
                    opt_out_cost_fit: fits.map(|f| f.1),
                    net_value: at.map(|k| rec.net_value[k]),
                    marginal_conversion_value: marginal.map(|m| m.0),
                    marginal_opt_out_cost: marginal.map(|m| m.1),
                }
            })
            .collect();
        let cap = rec.cap.or(configured);
        let mut over = 0u64;
        for &(person, last, [er, tr, eb, tb], opted_out) in &now_state[c] {
            let Some(cap) = cap else { break };
            if opted_out || last <= cap {
                continue;
            }
            over += 1;
            let (recent, before) = (er as f64 / tr.max(1) as f64, eb as f64 / tb.max(1) as f64);
            if tr >= 2 && tb >= 2 && recent < before {
                let ids = identity.ids_of(person);
                let of = |k: IdKind| -> Vec<String> {
                    ids.iter()
                        .filter(|(kind, _)| *kind == k)
                        .map(|(_, id)| id.to_string())
                        .collect()
                };
                audience_rows.push(AudienceRow {
                    person_id: identity.canonical_id(person).to_string(),
                    user_ids: of(IdKind::User),
                    emails: of(IdKind::Email),
                    anonymous_ids: of(IdKind::Anonymous),
                    channel: ch.channel.clone(),
                    touches_last_window: last,
                    cap,
                    engagement_recent: recent,
                    engagement_before: before,
                });
            }
        }
        let cap_advice = match (rec.cap, configured) {
            (None, None) => "not enough data for a recommendation, and no configured cap".into(),
            (None, Some(k)) => format!(
                "not enough data for a recommendation; the configured cap of {k} is used for the audience"
            ),
            (Some(r), None) => format!("no cap is configured; cap at {r} touches per window"),
            (Some(r), Some(k)) if k > r => format!(
                "the configured cap of {k} lets through touches past the recommended {r}: lower it"
            ),
            (Some(r), Some(k)) if k < r => format!(
                "the configured cap of {k} is below the recommended {r}: a higher cap would earn more"
            ),
            (Some(r), Some(_)) => format!("the configured cap matches the recommended {r}"),
        };
        out_channels.push(ChannelFatigue {
            channel: ch.channel.clone(),
            persons: persons[c],
            windows: curves[c].bins.iter().map(|b| b.windows).sum(),
            touches: totals[c][0],
            engagements: totals[c][1],
            unsubscribes: totals[c][2],
            complaints: totals[c][3],
            converted_windows: totals[c][4],
            curve,
            status: if rec.cap.is_some() {
                "ok"
            } else {
                "not enough data"
            },
            recommended_cap: rec.cap,
            configured_cap: configured,
            configured_cap_source: configured.map(|_| {
                req.configured_cap_sources
                    .get(&ch.channel)
                    .cloned()
                    .unwrap_or_else(|| CapSource {
                        from: "request",
                        detail: "the request's configured_caps".into(),
                        caps: Vec::new(),
                    })
            }),
            cap_advice,
            persons_over_cap_now: over,
        });
    }
    audience_rows.sort_by(|a, b| {
        (b.touches_last_window - b.cap)
            .cmp(&(a.touches_last_window - a.cap))
            .then(a.person_id.cmp(&b.person_id))
            .then(a.channel.cmp(&b.channel))
    });
    let distinct: std::collections::HashSet<&str> =
        audience_rows.iter().map(|r| r.person_id.as_str()).collect();
    let persons_in_audience = distinct.len() as u64;
    let rows_total = audience_rows.len() as u64;
    audience_rows.truncate(audience_limit);
    Ok(FatigueResponse {
        conversion: req.conversion.clone(),
        conversion_value: value,
        unsubscribe_cost,
        complaint_cost,
        window_seconds: window as f64 / 1000.0,
        min_windows,
        confidence,
        now: format_ms(now),
        methods: BTreeMap::from([
            ("window", "consecutive windows of `window_seconds` from each person's first touch on the channel; only windows ending inside the data count, and the window with an opt-out is the person's last"),
            ("rates", "share of windows with an opt-out (unsubscribe or complaint), a complaint, a conversion; Wilson score intervals"),
            ("recommended_cap", "the touches per window where conversion_value x conversion rate - expected opt-out cost peaks, both curves smoothed by weighted isotonic regression over the points with at least min_windows windows"),
            ("audience", "persons not opted out whose touches in the last window before `now` exceed the cap and whose engagements per touch over the last 14 days are below those of the 28 days before (two touches or more in each)"),
        ]),
        channels: out_channels,
        audience: Audience {
            persons: persons_in_audience,
            rows_total,
            omitted_rows: rows_total - audience_rows.len() as u64,
            rows: audience_rows,
            definition: "Persons showing fatigue now: over the cap and engaging less. Use the ids as a suppression list for journeys (throughline query fatigue --audience-out FILE.csv).",
        },
    })
}

fn rate(k: u64, n: u64, confidence: f64) -> Rate {
    let e = stats::proportion(k, n, confidence);
    Rate {
        rate: (n > 0).then_some(e.value),
        ci_low: e.low,
        ci_high: e.high,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cap(channel: &str, count: u32, per: &str) -> OrchestrationCap {
        OrchestrationCap {
            channel: channel.into(),
            count,
            per: per.into(),
        }
    }

    fn filled(window: Option<&str>, caps: &[OrchestrationCap]) -> FatigueRequest {
        let mut req = FatigueRequest {
            window: window.map(str::to_string),
            ..Default::default()
        };
        fill_from_orchestration(&mut req, caps, "the server config").unwrap();
        req
    }

    #[test]
    fn orchestration_caps_become_touches_per_window_taking_the_tightest() {
        // 3 in any 7 days and 1 in any day: a 7-day window takes 3 (the daily cap alone
        // would allow 7).
        let r = filled(None, &[cap("email", 3, "7d"), cap("email", 1, "1d")]);
        assert_eq!(
            r.configured_caps,
            Some(BTreeMap::from([("Email".into(), 3)]))
        );
        let src = &r.configured_cap_sources["Email"];
        assert_eq!(src.from, "orchestration");
        assert_eq!(src.caps, ["3 per 7d", "1 per 1d"]);
        assert!(
            src.detail
                .starts_with("the server config: the caps on \"email\""),
            "{}",
            src.detail
        );
        // A daily cap alone: one per day of the window.
        let r = filled(None, &[cap("Email", 1, "1d"), cap("sms", 2, "2d")]);
        assert_eq!(
            r.configured_caps,
            Some(BTreeMap::from([("Email".into(), 7), ("SMS".into(), 8)]))
        );
        // A cap over a longer span than the window bounds the window by its count.
        let r = filled(Some("3d"), &[cap("push", 4, "30d")]);
        assert_eq!(
            r.configured_caps,
            Some(BTreeMap::from([("Push".into(), 4)]))
        );
    }

    #[test]
    fn the_requests_own_caps_win_and_unknown_channels_fill_nothing() {
        let mut req = FatigueRequest {
            configured_caps: Some(BTreeMap::from([("Email".into(), 5)])),
            ..Default::default()
        };
        fill_from_orchestration(&mut req, &[cap("email", 1, "1d")], "x").unwrap();
        assert_eq!(
            req.configured_caps,
            Some(BTreeMap::from([("Email".into(), 5)]))
        );
        assert!(req.configured_cap_sources.is_empty());
        let r = filled(None, &[cap("webhook", 1, "1d")]);
        assert_eq!(r.configured_caps, None);
        let mut bad = FatigueRequest::default();
        assert!(fill_from_orchestration(&mut bad, &[cap("email", 1, "soon")], "x").is_err());
    }

    #[test]
    fn a_source_is_never_read_from_a_request() {
        let r: Result<FatigueRequest, _> = serde_json::from_str(
            r#"{"conversion": "x", "configured_cap_sources": {"Email": {"from": "request"}}}"#,
        );
        assert!(r.is_err());
    }
}
