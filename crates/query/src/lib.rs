//! The query engine: funnels, trends, retention, sessions, paths, assets, attribution, and
//! how the journey feels (emotion), when it is too much (fatigue) and where it breaks (audit),
//! over one project's store.
//!
//! Every query follows the same shape: [`rows::load`] reads the few columns it needs from
//! the segments and the log, maps each event's identity node to today's person, and sorts
//! by (person, time); then a kernel walks each person's run of rows once. Requests and
//! answers are serde types, identical for the CLI and the HTTP API.

pub mod assets;
pub mod attribution;
pub mod audit;
pub mod breakdown;
pub mod cache;
pub mod emotion;
mod error;
pub mod fatigue;
pub mod filter;
pub mod funnel;
mod intern;
pub mod kept;
pub mod links;
pub mod paths;
pub mod profile;
mod project_file;
pub mod recent;
pub mod retention;
pub mod rows;
pub mod sessions;
pub mod source;
pub mod spec;
pub mod spend;
pub mod stages;
pub mod trends;
mod values;

pub use error::QueryError;
pub use spec::{parse_duration, parse_time_bound, StepMatcher};
