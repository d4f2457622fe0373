//! Realistic demo data for Throughline: what the official Segment SDKs would send for two
//! brands over a couple of months, plus what the marketing cost.
//!
//! `throughline demo` loads it, tests use it as a reference data set and benchmarks use
//! it at ten million events, so it is lazy (one person's messages in memory at a time, as
//! compact drafts rendered to JSON on delivery), linear in the number of persons, and
//! deterministic: the same [`DemoConfig`] yields the same messages, and since the random
//! generator is our own a dependency upgrade cannot change them (a test pins a digest).
//! Each person is simulated from (seed, person index) alone, so persons are independent
//! and a caller may generate ranges of persons in parallel.
//!
//! The brands: [`Brand::Headphones`] (Sonora, an online shop) and
//! [`Brand::Subscription`] (Fieldnote, a note-taking app). Messages carry what
//! analytics.js, analytics-swift/-kotlin and analytics-python put on the wire:
//! `type`, `messageId`, `anonymousId` and/or `userId`, `timestamp` and `sentAt`,
//! `event` or `name`, `properties`, `traits`, `previousId`, `groupId`, and `context`
//! (`page`, `campaign` from the URL's UTM tags, `userAgent`, `ip`, `locale`,
//! `timezone`, `library`, and `app`/`device`/`os` in the app).
//!
//! The data is meant to be analysed, so behaviour in it has causes: persons arrive over
//! the range from the channels of [`catalog`], on one to three devices, and come back in
//! sessions; touches with a high `assist` make later conversion likelier while others
//! close; funnels lose people at each step, more on phones and after form errors; bad
//! experiences lower survey scores and comments and raise churn; support tickets carry the
//! customer's message; e-mail frequency raises unsubscribes and spam complaints.
//! Identity is messy on purpose: anonymous pre-signup touches on several devices, a few
//! `alias` calls, a family tablet shared by two users, and junk user ids
//! ([`JUNK_USER_IDS`]) from a buggy `identify` call.
//!
//! This crate is a pure library: no IO, no threads, no clock.

mod catalog;
mod clock;
mod delivery;
mod followups;
mod headphones;
mod journey;
mod people;
mod registry;
mod render;
mod rng;
mod spend;
mod subscription;
mod text;

#[cfg(test)]
mod tests;

use serde_json::Value;

pub use catalog::{catalog, Asset, Channel, Cost, Role, Source};
pub use followups::{journeys_toml, CAPS};
pub use people::JUNK_USER_IDS;
pub use registry::{channels_toml, registry_csv};
pub use spend::{spend_csv, SPEND_SAMPLE_PERSONS_MAX};

/// The demo brands: the seeds' two worked examples.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Brand {
    /// Sonora, an online headphones shop: ad, product page, checkout, after-sales.
    Headphones,
    /// Fieldnote, a note-taking app sold by subscription: trial, onboarding, renewals.
    Subscription,
}

impl Brand {
    pub const ALL: [Brand; 2] = [Brand::Headphones, Brand::Subscription];

    pub fn name(self) -> &'static str {
        match self {
            Brand::Headphones => "headphones",
            Brand::Subscription => "subscription",
        }
    }

    /// The inverse of [`Brand::name`].
    pub fn parse(name: &str) -> Option<Brand> {
        Brand::ALL.into_iter().find(|b| b.name() == name)
    }

    /// The brand's website, the origin of every page URL in its data.
    pub fn origin(self) -> &'static str {
        match self {
            Brand::Headphones => "https://www.sonora-audio.example",
            Brand::Subscription => "https://fieldnote.example",
        }
    }

    /// About how many messages a person yields on average with the default range
    /// (measured; a test keeps it honest), to size a run by events.
    pub fn messages_per_person(self) -> f64 {
        match self {
            Brand::Headphones => 38.0,
            Brand::Subscription => 35.0,
        }
    }
}

/// 2026-09-01T00:00:00Z, the default start of the generated range.
pub const DEFAULT_START_MS: i64 = clock::days_from_civil(2026, 9, 1) * clock::DAY_MS;

/// What to generate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DemoConfig {
    pub brand: Brand,
    pub seed: u64,
    pub persons: usize,
    /// Start of the range, milliseconds since the Unix epoch (UTC).
    pub start_ms: i64,
    /// Length of the range; persons arrive uniformly over it and nothing happens after it.
    pub days: u32,
    /// Share of messages delivered a second time with the same `messageId` (SDK retries).
    pub duplicate_rate: f64,
    /// Deliver each person's messages shuffled within small windows instead of in time
    /// order (the messages themselves, timestamp ties included, do not change).
    pub out_of_order: bool,
}

impl DemoConfig {
    /// Defaults: starts 2026-09-01T00:00:00Z, 60 days, no duplicates, in order.
    pub fn new(brand: Brand, persons: usize, seed: u64) -> DemoConfig {
        DemoConfig {
            brand,
            seed,
            persons,
            start_ms: DEFAULT_START_MS,
            days: 60,
            duplicate_rate: 0.0,
            out_of_order: false,
        }
    }

    /// End of the range (exclusive): every message's timestamp is before it.
    pub fn end_ms(&self) -> i64 {
        self.start_ms + self.days as i64 * clock::DAY_MS
    }

    /// Persons needed for about `messages` messages (before duplicates).
    pub fn persons_for_messages(brand: Brand, messages: usize) -> usize {
        (messages as f64 / brand.messages_per_person()).ceil() as usize
    }
}

/// Lazily yields Segment-shaped messages (serde_json::Value objects) person by person,
/// so 10M events never sit in memory.
pub fn messages(cfg: &DemoConfig) -> impl Iterator<Item = Value> {
    labeled_messages(cfg).map(|(_, m)| m)
}

/// [`messages`] with the index of the person who really sent each one: the ground truth
/// identity resolution is measured against. A message from the shared family tablet
/// belongs to whichever of the two users held it.
pub fn labeled_messages(cfg: &DemoConfig) -> impl Iterator<Item = (usize, Value)> {
    delivery::Stream::new(*cfg, 0..cfg.persons)
}

/// [`labeled_messages`] of the persons in `persons` only (clamped to `cfg.persons`): the
/// same messages the full run yields for them, so ranges can be generated in parallel
/// and concatenated.
pub fn labeled_messages_in(
    cfg: &DemoConfig,
    persons: std::ops::Range<usize>,
) -> impl Iterator<Item = (usize, Value)> {
    let end = persons.end.min(cfg.persons);
    delivery::Stream::new(*cfg, persons.start.min(end)..end)
}
