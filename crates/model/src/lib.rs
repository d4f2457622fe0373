//! The vocabulary of Throughline: a stored [`Event`], its [`EventType`], and time helpers.
//!
//! An event is a Segment message after validation and normalization: the fields analyses
//! scan are real fields (ids, name, timestamp, page, UTM, click id), everything else stays
//! whole in `properties`, `context` and `traits`. This crate does no IO.

mod event;
mod new_event;
mod numbers;
mod time;

pub use event::{
    external_referrer_host, referrer_host, ClickId, Event, EventType, Utm, CLICK_ID_PARAMS, DIMS,
    DIM_COUNT,
};
pub use new_event::{NewEvent, NewUtm};
pub use numbers::{number_of, top_level_numbers};
pub use time::{format_ms, parse_timestamp};

/// Milliseconds since the Unix epoch, UTC. The one time unit inside Throughline.
pub type Millis = i64;
