//! Multi-touch attribution: how much of each conversion every touch of a journey earns.
//!
//! A journey is the ordered touches (sessions, labelled by channel, campaign or asset as
//! integer ids the caller interns) that led to a conversion, or that led nowhere (a null
//! journey, which only the data-driven models use). Heuristic models ([`Heuristic`]) split
//! each conversion over its own journey's touches; [`markov`] and [`shapley`] look at all
//! journeys at once and credit a touch by what the whole set of journeys says it adds.
//!
//! Pure: no IO, no strings beyond what callers pass in; every model credits exactly the
//! conversions and value it is given, so rows always add up to the totals.

mod markov;
mod shapley;
#[cfg(test)]
mod tests;

pub use markov::{markov, MarkovAnswer, ORDER_MAX, STATES_MAX};
pub use shapley::shapley;

/// A touch label: an index into the caller's list of labels.
pub type Touch = u32;

/// Labels at most: Markov packs states of up to [`ORDER_MAX`] touches into 64 bits.
pub const LABELS_MAX: usize = u16::MAX as usize;

/// Why a model cannot answer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AttributionError {
    #[error("{model} needs the time of every touch, which a path table does not carry")]
    NeedsTimes { model: &'static str },
    #[error("markov order must be between 1 and {ORDER_MAX}")]
    Order,
    #[error("more than {LABELS_MAX} distinct touch labels")]
    TooManyLabels,
    #[error("the order-{order} chain has more than {STATES_MAX} states: use a lower order")]
    TooManyStates { order: usize },
    #[error("the markov chain did not converge within {sweeps} sweeps")]
    NoConvergence { sweeps: usize },
}

/// Rule-based models: each conversion is split over the touches of its own journey.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Heuristic {
    FirstTouch,
    LastTouch,
    /// GA4's rule: the last touch that is not Direct, unless the journey is all Direct.
    LastNonDirect,
    Linear,
    /// A touch's weight halves every `half_life_ms` before the conversion.
    TimeDecay {
        half_life_ms: i64,
    },
    /// `first` and `last` shares for the ends, the rest spread over the middle; a journey
    /// of two splits `first : last`, a journey of one takes everything.
    PositionBased {
        first: f64,
        last: f64,
    },
}

impl Heuristic {
    pub fn name(&self) -> &'static str {
        match self {
            Heuristic::FirstTouch => "first_touch",
            Heuristic::LastTouch => "last_touch",
            Heuristic::LastNonDirect => "last_non_direct",
            Heuristic::Linear => "linear",
            Heuristic::TimeDecay { .. } => "time_decay",
            Heuristic::PositionBased { .. } => "position_based",
        }
    }

    /// The share of each position of a journey of `n` touches, summing to 1, into `out`.
    /// `direct[i]` says touch `i` is Direct (empty: none is); `ages_ms[i]` is how long
    /// before the conversion touch `i` happened.
    pub fn weights(
        &self,
        n: usize,
        direct: &[bool],
        ages_ms: Option<&[i64]>,
        out: &mut Vec<f64>,
    ) -> Result<(), AttributionError> {
        out.clear();
        out.resize(n, 0.0);
        if n == 0 {
            return Ok(());
        }
        match *self {
            Heuristic::FirstTouch => out[0] = 1.0,
            Heuristic::LastTouch => out[n - 1] = 1.0,
            Heuristic::LastNonDirect => {
                let is_direct = |i: usize| direct.get(i).copied().unwrap_or(false);
                let i = (0..n).rev().find(|&i| !is_direct(i)).unwrap_or(n - 1);
                out[i] = 1.0;
            }
            Heuristic::Linear => out.fill(1.0 / n as f64),
            Heuristic::TimeDecay { half_life_ms } => {
                let ages = ages_ms.ok_or(AttributionError::NeedsTimes {
                    model: "time_decay",
                })?;
                let half = half_life_ms.max(1) as f64;
                // Relative to the newest touch, so a long journey cannot underflow to 0/0.
                let newest = ages.iter().copied().min().unwrap_or(0);
                for (w, &a) in out.iter_mut().zip(ages) {
                    *w = (-((a - newest).max(0) as f64) / half).exp2();
                }
                let sum: f64 = out.iter().sum();
                out.iter_mut().for_each(|w| *w /= sum);
            }
            Heuristic::PositionBased { first, last } => match n {
                1 => out[0] = 1.0,
                2 => {
                    out[0] = first / (first + last);
                    out[1] = last / (first + last);
                }
                _ => {
                    let middle = (1.0 - first - last) / (n - 2) as f64;
                    out.fill(middle);
                    out[0] = first;
                    out[n - 1] = last;
                }
            },
        }
        Ok(())
    }
}

/// Credited conversions and value per label.
#[derive(Clone, Debug, PartialEq)]
pub struct Credit {
    pub conversions: Vec<f64>,
    pub value: Vec<f64>,
}

impl Credit {
    pub fn new(labels: usize) -> Credit {
        Credit {
            conversions: vec![0.0; labels],
            value: vec![0.0; labels],
        }
    }

    /// Splits `conversions` and `value` of one journey by `weights` (from
    /// [`Heuristic::weights`]).
    pub fn add(&mut self, touches: &[Touch], weights: &[f64], conversions: f64, value: f64) {
        for (&t, &w) in touches.iter().zip(weights) {
            self.conversions[t as usize] += w * conversions;
            self.value[t as usize] += w * value;
        }
    }
}

/// Journeys and how many conversions, how much value and how many null journeys (persons
/// who did not convert) followed each, stored flat: a million journeys are a few arrays,
/// not a million allocations.
#[derive(Clone, Debug, Default)]
pub struct PathTable {
    touches: Vec<Touch>,
    /// `touches[ends[i - 1]..ends[i]]` is path `i`.
    ends: Vec<usize>,
    pub conversions: Vec<f64>,
    pub value: Vec<f64>,
    pub nulls: Vec<f64>,
    /// Path indexes by content, for [`PathTable::add`]; hashes are of the touches.
    index: hashbrown::HashTable<usize>,
}

impl PathTable {
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    pub fn path(&self, i: usize) -> &[Touch] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.touches[start..self.ends[i]]
    }

    pub fn iter(&self) -> impl Iterator<Item = PathRef<'_>> + '_ {
        (0..self.len()).map(|i| PathRef {
            touches: self.path(i),
            conversions: self.conversions[i],
            value: self.value[i],
            nulls: self.nulls[i],
        })
    }

    /// Appends a path as a new row, even if an equal one exists (a path table read from a
    /// file keeps its rows; every model gives the same answer either way).
    pub fn push(&mut self, touches: &[Touch], conversions: f64, value: f64, nulls: f64) {
        self.touches.extend_from_slice(touches);
        self.ends.push(self.touches.len());
        self.conversions.push(conversions);
        self.value.push(value);
        self.nulls.push(nulls);
    }

    /// Adds to the row of `touches`, creating it the first time; rows keep first-seen
    /// order. Mixing with [`PathTable::push`] is not meant: pushed rows are not indexed.
    pub fn add(&mut self, touches: &[Touch], conversions: f64, value: f64, nulls: f64) {
        let hash = hash_path(touches);
        let PathTable {
            touches: all,
            ends,
            index,
            ..
        } = self;
        let slice = |i: usize| {
            let start = if i == 0 { 0 } else { ends[i - 1] };
            &all[start..ends[i]]
        };
        match index.find(hash, |&i| slice(i) == touches) {
            Some(&i) => {
                self.conversions[i] += conversions;
                self.value[i] += value;
                self.nulls[i] += nulls;
            }
            None => {
                let i = self.ends.len();
                self.push(touches, conversions, value, nulls);
                let PathTable {
                    touches: all,
                    ends,
                    index,
                    ..
                } = self;
                index.insert_unique(hash, i, |&j| {
                    let start = if j == 0 { 0 } else { ends[j - 1] };
                    hash_path(&all[start..ends[j]])
                });
            }
        }
    }
}

/// One row of a [`PathTable`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PathRef<'a> {
    pub touches: &'a [Touch],
    pub conversions: f64,
    pub value: f64,
    pub nulls: f64,
}

fn hash_path(touches: &[Touch]) -> u64 {
    use std::hash::BuildHasher;
    rustc_hash::FxBuildHasher.hash_one(touches)
}
