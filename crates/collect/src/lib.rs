//! Segment HTTP Tracking API messages in, normalized events out.
//!
//! Parsing never fails a whole request for one bad message: a batch yields one
//! `Result<NewEvent, Rejection>` per message, in order, so the caller stores the good ones
//! and reports each bad one. The events borrow from the request body: the JSON the client
//! sent for `properties`, `context` and `traits` is validated and kept as text, never
//! built into trees. This crate is pure: the caller passes `receivedAt` and the ids
//! generator seed, so the same input always gives the same output.

mod message;
mod normalize;
#[cfg(test)]
mod reference;
mod url;

pub use message::NESTING_DEPTH_MAX;
pub use normalize::{normalize, normalize_json, Batch, Envelope, IdGen, Rejection};
pub use url::{parse_url, percent_decode, ParsedUrl};

/// Segment's documented limit for one message (32 KB).
pub const MESSAGE_BYTES_MAX: usize = 32 * 1024;
/// Segment's documented limit for one batch request (500 KB).
pub const BATCH_BYTES_MAX: usize = 500 * 1024;
/// Bound on messages in one batch: 500 KB of the smallest valid messages.
pub const BATCH_MESSAGES_MAX: usize = 10_000;
