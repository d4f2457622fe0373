//! The driver: journal first, then step. Every input is appended to the journal and the
//! journal is committed (made durable) before the machine applies it, so whatever an
//! input makes the machine do (a send with its idempotency key, a record) is carried out
//! only after the input that caused it survives a crash. Recovery is a snapshot plus the
//! journal entries after it, replayed through the same pure `step`.

use serde::{Deserialize, Serialize};
use throughline_model::Millis;

use crate::machine::{Effect, Input, Machine, State};
use crate::OrchestrateError;

/// One journal entry: an input and the clock reading it was applied at.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub seq: u64,
    pub now: Millis,
    pub input: Input,
}

/// Durable, ordered storage of entries. `append` may buffer; `commit` returns once every
/// appended entry is durable.
pub trait Journal {
    fn append(&mut self, entry: &Entry) -> Result<(), String>;
    fn commit(&mut self) -> Result<(), String>;
}

pub struct Driver<J: Journal> {
    pub machine: Machine,
    pub journal: J,
    /// The sequence number of the last entry applied.
    pub seq: u64,
}

impl<J: Journal> Driver<J> {
    pub fn new(machine: Machine, journal: J, seq: u64) -> Driver<J> {
        Driver {
            machine,
            journal,
            seq,
        }
    }

    /// Recovers a machine from a snapshot (taken after entry `snapshot_seq`) and the
    /// journal's entries: those at or below the snapshot are skipped.
    pub fn recover(
        snapshot: Option<(u64, State)>,
        entries: impl IntoIterator<Item = Entry>,
        journal: J,
    ) -> Result<Driver<J>, OrchestrateError> {
        let (mut seq, state) = snapshot.unwrap_or_default();
        let mut machine = Machine::from_state(state).map_err(OrchestrateError::State)?;
        for e in entries {
            if e.seq <= seq {
                continue;
            }
            if e.seq != seq + 1 {
                return Err(OrchestrateError::Journal(format!(
                    "entry {} follows entry {seq}: the journal has a gap",
                    e.seq
                )));
            }
            // Effects of replayed entries were carried out before the crash, or are still
            // owed: `Machine::pending` hands those out again.
            let _ = machine.step(e.input, e.now);
            seq = e.seq;
        }
        Ok(Driver {
            machine,
            journal,
            seq,
        })
    }

    /// Journals the inputs, commits, then applies them in order.
    pub fn submit(
        &mut self,
        inputs: Vec<Input>,
        now: Millis,
    ) -> Result<Vec<Effect>, OrchestrateError> {
        if inputs.is_empty() {
            return Ok(Vec::new());
        }
        let now = now.max(self.machine.state().now);
        let mut entries = Vec::with_capacity(inputs.len());
        for (i, input) in inputs.into_iter().enumerate() {
            let e = Entry {
                seq: self.seq + 1 + i as u64,
                now,
                input,
            };
            self.journal.append(&e).map_err(OrchestrateError::Journal)?;
            entries.push(e);
        }
        self.journal.commit().map_err(OrchestrateError::Journal)?;
        let mut fx = Vec::new();
        for e in entries {
            self.seq = e.seq;
            fx.extend(self.machine.step(e.input, e.now));
        }
        Ok(fx)
    }
}
