//! Where a query's events come from: the embedded store's snapshot, or a remote backend
//! (ClickHouse) behind the [`RemoteSource`] trait. Every query takes a [`Source`], so every
//! query kind runs on both, through the same code after the rows are read.
//!
//! The seam is deliberately narrow: rows sorted by (person, time, arrival) with
//! dictionary-coded dimensions ([`crate::rows::load`], [`crate::rows::Scan`]), decoded
//! events chosen by name, node or arrival number, and the identity mapping. A remote source
//! answers those three from its own tables; what the queries compute from them never
//! knows where they came from. Never does IO itself.

use std::collections::HashSet;
use std::sync::OnceLock;

use throughline_identity::IdentityGraph;
use throughline_model::Event;
use throughline_store::Snapshot;

use crate::rows::{Load, Rows};
use crate::QueryError;

/// Which stored events to decode: every condition given must hold. Visits come in
/// arrival order, as the embedded store's do.
#[derive(Clone, Copy, Default)]
pub struct EventFilter<'f> {
    /// By event name (`None` for events without one: identify, alias, ...).
    pub name: Option<&'f NameFilter<'f>>,
    /// By the identity node the event was sent under.
    pub nodes: Option<&'f HashSet<u32>>,
    /// By arrival number (ascending).
    pub seqs: Option<&'f [u32]>,
}

/// Whether events of a name (`None`: no name) are wanted.
pub type NameFilter<'f> = dyn Fn(Option<&str>) -> bool + Sync + 'f;

/// Visits `(arrival number, node, event)`.
pub type Visit<'v> = dyn FnMut(u32, u32, Event) -> Result<(), QueryError> + 'v;

/// A backend that keeps a project's events elsewhere and reads them back in the shapes
/// the queries consume. Arrival numbers, nodes and persons are the embedded store's.
pub trait RemoteSource: Sync {
    /// Rows in `[from, to)` that pass `keep`, of `persons` when given, sorted by (person,
    /// timestamp, arrival), with the requested dimensions; `keep_reads` is a hint only.
    fn rows(&self, req: &Load) -> Result<Rows, QueryError>;
    /// The stored events the filter selects, decoded, in arrival order.
    fn events(&self, filter: &EventFilter, visit: &mut Visit) -> Result<(), QueryError>;
    /// The identity mapping as of the rows: nodes, their ids and persons.
    fn identity(&self) -> Result<IdentityGraph, QueryError>;
    /// Events stored, each counted once.
    fn event_count(&self) -> Result<u64, QueryError>;
    /// The `limit` newest events by (timestamp, arrival), newest first, with their node.
    fn newest_events(&self, limit: usize) -> Result<Vec<(u32, Event)>, QueryError>;
    /// The distinct values of dimension `dim` (an index into `DIMS`), sorted, at most
    /// `limit` of them.
    fn distinct(&self, dim: usize, limit: usize) -> Result<Vec<String>, QueryError>;
}

/// A remote backend for one query: the identity mapping is read once, when first needed.
pub struct Remote<'r> {
    backend: &'r dyn RemoteSource,
    identity: OnceLock<IdentityGraph>,
}

impl<'r> Remote<'r> {
    pub fn new(backend: &'r dyn RemoteSource) -> Remote<'r> {
        Remote {
            backend,
            identity: OnceLock::new(),
        }
    }

    pub fn backend(&self) -> &'r dyn RemoteSource {
        self.backend
    }
}

/// A query's events: the embedded snapshot or a remote backend.
#[derive(Clone, Copy)]
pub enum Source<'s, 'a> {
    Store(&'s Snapshot<'a>),
    Remote(&'s Remote<'s>),
}

impl<'s, 'a> From<&'s Snapshot<'a>> for Source<'s, 'a> {
    fn from(snap: &'s Snapshot<'a>) -> Self {
        Source::Store(snap)
    }
}

impl<'s, 'a> From<&Source<'s, 'a>> for Source<'s, 'a> {
    fn from(src: &Source<'s, 'a>) -> Self {
        *src
    }
}

impl<'s, 'a> Source<'s, 'a> {
    /// The embedded snapshot, for what only the embedded store has (segment files).
    pub fn store(&self) -> Option<&'s Snapshot<'a>> {
        match self {
            Source::Store(s) => Some(s),
            Source::Remote(_) => None,
        }
    }

    pub fn identity(&self) -> Result<&'s IdentityGraph, QueryError> {
        match self {
            Source::Store(s) => Ok(s.identity()),
            Source::Remote(r) => {
                if let Some(g) = r.identity.get() {
                    return Ok(g);
                }
                let g = r.backend.identity()?;
                Ok(r.identity.get_or_init(|| g))
            }
        }
    }

    /// Events stored, each counted once.
    pub fn event_count(&self) -> Result<u64, QueryError> {
        match self {
            Source::Store(s) => Ok(s.event_count() as u64),
            Source::Remote(r) => r.backend.event_count(),
        }
    }

    /// The `limit` newest events by (timestamp, arrival), newest first, with their node.
    pub fn newest_events(&self, limit: usize) -> Result<Vec<(u32, Event)>, QueryError> {
        match self {
            Source::Store(s) => Ok(s.newest_events(limit)?),
            Source::Remote(r) => r.backend.newest_events(limit),
        }
    }

    /// The distinct values of dimension `dim` (an index into `DIMS`), sorted, at most
    /// `limit` of them: the segments' dictionaries and the log, or the backend's column.
    pub fn distinct(&self, dim: usize, limit: usize) -> Result<Vec<String>, QueryError> {
        match self {
            Source::Store(s) => {
                let mut all: std::collections::BTreeSet<String> = Default::default();
                for seg in s.segments() {
                    all.extend(seg.dict(throughline_model::DIMS[dim])?);
                }
                all.extend(s.log_rows().filter_map(|r| r.dims[dim].map(str::to_string)));
                Ok(all.into_iter().take(limit).collect())
            }
            Source::Remote(r) => r.backend.distinct(dim, limit),
        }
    }

    /// Visits every event whose name passes `wanted`, decoded, with its arrival number.
    pub fn for_each_event_named(
        &self,
        wanted: impl Fn(&str) -> bool + Sync,
        mut visit: impl FnMut(u32, Event) -> Result<(), QueryError>,
    ) -> Result<(), QueryError> {
        let name = |n: Option<&str>| n.is_some_and(&wanted);
        self.for_each_event(
            &EventFilter {
                name: Some(&name),
                ..Default::default()
            },
            |seq, _, e| visit(seq, e),
        )
    }

    /// Visits the events with these arrival numbers (ascending), decoding only them.
    pub fn for_each_event_at(
        &self,
        seqs: &[u32],
        mut visit: impl FnMut(u32, Event) -> Result<(), QueryError>,
    ) -> Result<(), QueryError> {
        match self {
            Source::Store(s) => {
                let mut failed = None;
                s.for_each_event_at(seqs, |seq, e| {
                    visit(seq, e).map_err(|e| {
                        failed = Some(e);
                        stop()
                    })
                })
                .or_else(|e| failed.take().map_or(Err(e.into()), Err))
            }
            Source::Remote(_) => self.for_each_event(
                &EventFilter {
                    seqs: Some(seqs),
                    ..Default::default()
                },
                |seq, _, e| visit(seq, e),
            ),
        }
    }

    /// Visits the events the filter selects, decoded, with arrival number and node.
    pub fn for_each_event(
        &self,
        filter: &EventFilter,
        mut visit: impl FnMut(u32, u32, Event) -> Result<(), QueryError>,
    ) -> Result<(), QueryError> {
        match self {
            Source::Store(s) => {
                let mut failed = None;
                let seqs: Option<HashSet<u32>> = filter.seqs.map(|s| s.iter().copied().collect());
                s.for_each_event_of(
                    |name| filter.name.is_none_or(|f| f(name)),
                    |node, _| filter.nodes.is_none_or(|n| n.contains(&node)),
                    |seq, node, e| {
                        if seqs.as_ref().is_some_and(|s| !s.contains(&seq)) {
                            return Ok(());
                        }
                        visit(seq, node, e).map_err(|e| {
                            failed = Some(e);
                            stop()
                        })
                    },
                )
                .or_else(|e| failed.take().map_or(Err(e.into()), Err))
            }
            Source::Remote(r) => r.backend.events(filter, &mut visit),
        }
    }
}

/// The store's visitors return its error type; a query's own error stops the visit
/// through this one and is handed back instead.
fn stop() -> throughline_store::StoreError {
    throughline_store::StoreError::Corrupt {
        file: "query".into(),
        why: "visit stopped".into(),
    }
}
