//! Per-person analysis kernels: funnels, sessions, retention, paths, attribution, touch
//! fatigue; and the statistics the analyses report (survey scores and their intervals).
//!
//! Every kernel sees one person's events at a time, already sorted by timestamp (ties in
//! arrival order), as plain slices. That is the layout the store keeps on disk (sorted by
//! person, then time), so a query is one sequential pass with no joins or shuffles.
//! Kernels never touch files, SQL or JSON.

pub mod attribution;
pub mod fatigue;
pub mod funnel;
pub mod retention;
pub mod sessions;
pub mod stats;

/// Milliseconds since the Unix epoch.
pub type Millis = i64;
