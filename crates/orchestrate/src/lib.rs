//! Orchestration: follow-up journeys that keep a customer engaged without overdoing it.
//!
//! ```text
//! journey files ──► journey::compile ──► Machine (pure: step(input, now) -> effects)
//!                                           ▲                 │
//!   observed events, ticks + facts,         │                 ▼
//!   delivery outcomes, suppressions ── Driver (journal first) ── deliveries, records
//! ```
//!
//! [`journey`] reads and validates journey files; [`machine`] is the state machine;
//! [`driver`] puts every input in a journal before the machine sees it, so the effects of
//! an input are only ever carried out once the input is durable; [`policy`] holds the
//! rules across journeys (caps, quiet hours, suppression, retries); [`quiet`] computes
//! quiet hours in a timezone; [`template`] renders messages and rewrites their links;
//! [`webhook`] signs Standard Webhooks; [`backtest`] runs a journey over stored history.
//!
//! The crate does no IO: the clock, the journal and the sender are the caller's, which is
//! what lets `tests/simulation.rs` crash and restart it from a seed.

pub mod backtest;
pub mod driver;
pub mod journey;
pub mod machine;
pub mod policy;
pub mod quiet;
pub mod template;
pub mod webhook;

pub use driver::{Driver, Entry, Journal};
pub use journey::{compile, parse_file, validate, Journey, JourneyFile, Problem};
pub use machine::{
    Delivery, Effect, Facts, Input, Machine, Observed, Outcome, Record, State, Status,
};
pub use policy::Policy;

#[derive(Debug, thiserror::Error)]
pub enum OrchestrateError {
    #[error("journal: {0}")]
    Journal(String),
    #[error("invalid journey: {}", .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<Problem>),
    #[error("{0}")]
    State(String),
}
