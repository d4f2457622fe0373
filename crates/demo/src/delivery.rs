//! How the generated messages reach a collector: person by person, with SDK retries
//! (the same `messageId` twice) and, when asked, out of order.
//!
//! Delivery draws from its own random stream, so turning duplicates or disorder on never
//! changes which messages exist, only how they arrive: the same analyses must give the
//! same answers either way. Only one person's messages are held at a time.

use serde_json::Value;

use crate::clock::{iso_ms, parse_iso_ms, SECOND_MS};
use crate::journey::{simulate, Kit, Stamped};
use crate::rng::{Rng, STREAM_DELIVERY};
use crate::DemoConfig;

/// Messages are shuffled within windows of this many consecutive messages of a person,
/// so disorder stays bounded as it does behind real batching SDKs.
pub(crate) const SHUFFLE_WINDOW_MESSAGES: usize = 16;
/// A retry arrives at most this many messages after its original when out of order.
pub(crate) const RETRY_DELAY_MESSAGES_MAX: usize = 8;

pub(crate) struct Stream {
    cfg: DemoConfig,
    kit: Kit,
    next_person: usize,
    person: usize,
    /// The person's messages in time order; reused across persons.
    generated: Vec<Stamped>,
    /// The person's messages in reverse delivery order, popped one by one; reused.
    ready: Vec<Value>,
}

impl Stream {
    pub(crate) fn new(cfg: DemoConfig) -> Stream {
        Stream {
            kit: Kit::new(cfg.brand),
            cfg,
            next_person: 0,
            person: 0,
            generated: Vec::new(),
            ready: Vec::new(),
        }
    }
}

impl Iterator for Stream {
    type Item = (usize, Value);

    fn next(&mut self) -> Option<(usize, Value)> {
        loop {
            if let Some(v) = self.ready.pop() {
                return Some((self.person, v));
            }
            if self.next_person >= self.cfg.persons {
                return None;
            }
            self.person = self.next_person;
            self.next_person += 1;
            simulate(&self.kit, &self.cfg, self.person, &mut self.generated);
            deliver(&self.cfg, self.person, &mut self.generated, &mut self.ready);
            self.ready.reverse();
        }
    }
}

/// The retry of a message: same id and payload, sent again a little later.
fn retry(rng: &mut Rng, original: &Value) -> Value {
    let mut v = original.clone();
    let sent = v["sentAt"].as_str().and_then(parse_iso_ms);
    if let Some(sent) = sent {
        v["sentAt"] = Value::from(iso_ms(sent + rng.range_i(SECOND_MS, 60 * SECOND_MS)));
    }
    v
}

/// Moves `generated` into `out` in delivery order.
fn deliver(cfg: &DemoConfig, person: usize, generated: &mut Vec<Stamped>, out: &mut Vec<Value>) {
    let rate = cfg.duplicate_rate.clamp(0.0, 1.0);
    out.clear();
    if rate == 0.0 && !cfg.out_of_order {
        out.extend(generated.drain(..).map(|(_, _, v)| v));
        return;
    }
    let mut rng = Rng::derive(cfg.seed, STREAM_DELIVERY, person as u64);
    if cfg.out_of_order {
        for window in generated.chunks_mut(SHUFFLE_WINDOW_MESSAGES) {
            for i in (1..window.len()).rev() {
                let j = rng.below(i + 1);
                window.swap(i, j);
            }
        }
    }
    let mut pending: Vec<(usize, Value)> = Vec::new();
    for (i, (_, _, m)) in generated.drain(..).enumerate() {
        let dup = rng.chance(rate).then(|| retry(&mut rng, &m));
        out.push(m);
        if let Some(d) = dup {
            if cfg.out_of_order {
                let due = i + rng.range_i(1, RETRY_DELAY_MESSAGES_MAX as i64 + 1) as usize;
                pending.push((due, d));
            } else {
                // In order means non-decreasing timestamps: the retry follows at once.
                out.push(d);
            }
        }
        let mut k = 0;
        while k < pending.len() {
            if pending[k].0 <= i {
                out.push(pending.remove(k).1);
            } else {
                k += 1;
            }
        }
    }
    out.extend(pending.into_iter().map(|(_, v)| v));
}
