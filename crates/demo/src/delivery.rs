//! How the generated messages reach a collector: person by person, with SDK retries
//! (the same `messageId` twice) and, when asked, out of order.
//!
//! Delivery draws from its own random streams, so turning duplicates or disorder on never
//! changes which messages exist, only how they arrive: the same analyses must give the
//! same answers either way. Only one person's messages are held at a time, as drafts;
//! each is rendered to JSON when it is its turn.

use serde_json::Value;

use crate::clock::SECOND_MS;
use crate::journey::{simulate, Kit, Payload, Person};
use crate::render::render;
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
    end_person: usize,
    index: usize,
    person: Person,
    /// (draft index, retry delay in ms; 0 for the original), in reverse delivery order.
    plan: Vec<(u32, i64)>,
    /// Renders each draft still has to go through (2 when it is retried).
    renders: Vec<u8>,
}

impl Stream {
    pub(crate) fn new(cfg: DemoConfig, persons: std::ops::Range<usize>) -> Stream {
        Stream {
            kit: Kit::new(cfg.brand),
            cfg,
            next_person: persons.start,
            end_person: persons.end,
            index: 0,
            person: Person::default(),
            plan: Vec::new(),
            renders: Vec::new(),
        }
    }
}

impl Iterator for Stream {
    type Item = (usize, Value);

    fn next(&mut self) -> Option<(usize, Value)> {
        loop {
            if let Some((i, retry_ms)) = self.plan.pop() {
                let left = &mut self.renders[i as usize];
                *left -= 1;
                let keep = *left > 0;
                let draft = &mut self.person.drafts[i as usize];
                let payload = if keep {
                    draft.payload.clone()
                } else {
                    std::mem::replace(&mut draft.payload, Payload::Page)
                };
                let draft = &self.person.drafts[i as usize];
                let m = render(&self.kit, &self.person, draft, payload, retry_ms);
                return Some((self.index, m));
            }
            if self.next_person >= self.end_person {
                return None;
            }
            self.index = self.next_person;
            self.next_person += 1;
            let recycled = std::mem::take(&mut self.person);
            self.person = simulate(&self.kit, &self.cfg, self.index, recycled);
            plan(
                &self.cfg,
                self.index,
                self.person.drafts.len(),
                &mut self.plan,
                &mut self.renders,
            );
        }
    }
}

/// The delivery order of a person's `n` drafts, reversed for popping.
fn plan(
    cfg: &DemoConfig,
    person: usize,
    n: usize,
    out: &mut Vec<(u32, i64)>,
    renders: &mut Vec<u8>,
) {
    out.clear();
    renders.clear();
    renders.resize(n, 1);
    let rate = cfg.duplicate_rate.clamp(0.0, 1.0);
    if rate == 0.0 && !cfg.out_of_order {
        out.extend((0..n as u32).rev().map(|i| (i, 0)));
        return;
    }
    // Two streams, so the same messages are retried whether or not order is shuffled.
    let mut retries = Rng::derive(cfg.seed, STREAM_DELIVERY, person as u64);
    let mut shuffle = Rng::derive(cfg.seed, STREAM_DELIVERY ^ 1, person as u64);
    let retry_ms: Vec<i64> = (0..n)
        .map(|_| {
            if retries.chance(rate) {
                retries.range_i(SECOND_MS, 60 * SECOND_MS)
            } else {
                0
            }
        })
        .collect();
    let mut order: Vec<u32> = (0..n as u32).collect();
    if cfg.out_of_order {
        for window in order.chunks_mut(SHUFFLE_WINDOW_MESSAGES) {
            for i in (1..window.len()).rev() {
                let j = shuffle.below(i + 1);
                window.swap(i, j);
            }
        }
    }
    let mut pending: Vec<(usize, u32)> = Vec::new();
    for (pos, &i) in order.iter().enumerate() {
        out.push((i, 0));
        let delay = retry_ms[i as usize];
        if delay > 0 {
            renders[i as usize] = 2;
            if cfg.out_of_order {
                let due = pos + shuffle.range_i(1, RETRY_DELAY_MESSAGES_MAX as i64 + 1) as usize;
                pending.push((due, i));
            } else {
                // In order means non-decreasing timestamps: the retry follows at once.
                out.push((i, delay));
            }
        }
        let mut k = 0;
        while k < pending.len() {
            if pending[k].0 <= pos {
                let (_, j) = pending.remove(k);
                out.push((j, retry_ms[j as usize]));
            } else {
                k += 1;
            }
        }
    }
    out.extend(pending.into_iter().map(|(_, j)| (j, retry_ms[j as usize])));
    out.reverse();
}
