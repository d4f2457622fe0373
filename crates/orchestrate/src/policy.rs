//! The rules that hold across every journey of a project: frequency caps per person and
//! channel, quiet hours, what suppresses a person, and how failed deliveries are retried.
//! They come from the server's config (`[orchestrate]`) and are journaled like any input,
//! so replaying the journal after a config change still decides as it decided then.

use serde::{Deserialize, Serialize};
use throughline_model::Millis;

use crate::quiet::{self, Window};

/// Caps at most.
pub const CAPS_MAX: usize = 32;
/// Retry delays at most (so attempts at most this plus one).
pub const RETRIES_MAX: usize = 16;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// E.g. `{channel = "email", count = 3, per = "7d"}` and `{channel = "email", count = 1,
    /// per = "1d"}`: at most 3 emails in any 7 days and 1 in any day, across journeys.
    #[serde(default)]
    pub caps: Vec<Cap>,
    #[serde(default)]
    pub quiet_hours: Option<QuietHours>,
    /// Track events that suppress the person who sends them (every id of theirs).
    #[serde(default = "suppress_on_default")]
    pub suppress_on: Vec<String>,
    /// Delays before each retry of a failed delivery.
    #[serde(default = "retry_default")]
    pub retry: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cap {
    pub channel: String,
    pub count: u32,
    pub per: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuietHours {
    /// Local time the quiet window starts, `HH:MM`.
    pub start: String,
    pub end: String,
    /// For persons without a `timezone` trait (or `context.timezone`).
    #[serde(default = "utc")]
    pub default_timezone: String,
}

fn utc() -> String {
    "UTC".into()
}

fn suppress_on_default() -> Vec<String> {
    ["Unsubscribed", "Email Bounced", "Email Marked as Spam"]
        .map(String::from)
        .to_vec()
}

fn retry_default() -> Vec<String> {
    ["10s", "1m", "5m", "30m", "2h", "8h"]
        .map(String::from)
        .to_vec()
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            caps: Vec::new(),
            quiet_hours: None,
            suppress_on: suppress_on_default(),
            retry: retry_default(),
        }
    }
}

/// A policy with its durations read.
#[derive(Clone, Debug)]
pub struct Compiled {
    pub caps: Vec<(String, u32, Millis)>,
    pub quiet: Option<(Window, chrono_tz::Tz)>,
    pub suppress_on: Vec<String>,
    pub retry_ms: Vec<Millis>,
    /// The longest cap window: send history older than this is forgotten.
    pub history_ms: Millis,
}

impl Policy {
    pub fn compile(&self) -> Result<Compiled, String> {
        if self.caps.len() > CAPS_MAX {
            return Err(format!("at most {CAPS_MAX} caps"));
        }
        let mut caps = Vec::new();
        for (i, c) in self.caps.iter().enumerate() {
            let ms = throughline_query::parse_duration(&c.per)
                .map_err(|e| format!("caps[{i}].per: {e}"))?;
            if c.channel.is_empty() {
                return Err(format!(
                    "caps[{i}].channel: name a channel (email, webhook, sms...)"
                ));
            }
            caps.push((c.channel.clone(), c.count, ms));
        }
        let quiet = match &self.quiet_hours {
            None => None,
            Some(q) => {
                let w = Window {
                    start: quiet::parse_time(&q.start)
                        .map_err(|e| format!("quiet_hours.start: {e}"))?,
                    end: quiet::parse_time(&q.end).map_err(|e| format!("quiet_hours.end: {e}"))?,
                };
                let tz = quiet::parse_tz(&q.default_timezone).ok_or_else(|| {
                    format!(
                        "quiet_hours.default_timezone: {:?} is no IANA timezone (e.g. Europe/Paris)",
                        q.default_timezone
                    )
                })?;
                Some((w, tz))
            }
        };
        if self.retry.len() > RETRIES_MAX {
            return Err(format!("at most {RETRIES_MAX} retry delays"));
        }
        let retry_ms = self
            .retry
            .iter()
            .enumerate()
            .map(|(i, r)| {
                throughline_query::parse_duration(r).map_err(|e| format!("retry[{i}]: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let history_ms = caps.iter().map(|c| c.2).max().unwrap_or(0);
        Ok(Compiled {
            caps,
            quiet,
            suppress_on: self.suppress_on.clone(),
            retry_ms,
            history_ms,
        })
    }
}
