//! Segment HTTP Tracking API messages in, normalized [`Event`]s out.
//!
//! Parsing never fails a whole request for one bad message: a batch yields one
//! `Result<Event, Rejection>` per message, in order, so the caller stores the good ones and
//! reports each bad one. This crate is pure: the caller passes `receivedAt` and the ids
//! generator seed, so the same input always gives the same output.
//!
//! [`Event`]: throughline_model::Event

mod normalize;
mod url;

pub use normalize::{normalize, Batch, Envelope, IdGen, Rejection};
pub use url::{parse_url, percent_decode, ParsedUrl};

/// Segment's documented limit for one message (32 KB).
pub const MESSAGE_BYTES_MAX: usize = 32 * 1024;
/// Segment's documented limit for one batch request (500 KB).
pub const BATCH_BYTES_MAX: usize = 500 * 1024;
/// Bound on messages in one batch: 500 KB of the smallest valid messages.
pub const BATCH_MESSAGES_MAX: usize = 10_000;
