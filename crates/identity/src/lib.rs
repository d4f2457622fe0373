//! The identity graph of one project: which anonymous ids, user ids and emails are one
//! person.
//!
//! Every id is a node; a person is a set of nodes. Merges relabel the smaller set into the
//! larger, so `person_of` is one array read and the node-to-person table can be handed to a
//! scan as a flat slice. Events store the node of the id they were sent under, never a
//! person: a later merge re-attributes them without rewriting anything (retroactive
//! stitching).
//!
//! Merge protection, as Segment Unify and PostHog do it: two persons that each carry a
//! different user id are never merged, junk ids ("null", "guest"...) never merge anything,
//! and a person holds a bounded number of anonymous ids and emails. The graph is a pure
//! function of the events fed to [`IdentityGraph::observe`] in order, so replaying the
//! same log rebuilds the same graph, node numbers included.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use throughline_model::{Event, EventType};

pub type NodeId = u32;

type Index = [HashMap<String, NodeId>; 3];
/// A person is named by one of its nodes (the root of its set); merges can rename it.
pub type PersonId = u32;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum IdKind {
    #[serde(rename = "anonymous_id")]
    Anonymous,
    #[serde(rename = "user_id")]
    User,
    #[serde(rename = "email")]
    Email,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IdentityConfig {
    /// Ids that identify nobody: SDK placeholders and stringified nulls. Compared without case.
    pub junk_ids: Vec<String>,
    pub anonymous_ids_per_person_max: usize,
    pub emails_per_person_max: usize,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        let junk = [
            "",
            "anonymous",
            "anon",
            "null",
            "undefined",
            "none",
            "nil",
            "nan",
            "0",
            "-1",
            "guest",
            "unknown",
            "[object object]",
            "true",
            "false",
            "id",
            "user",
            "distinct_id",
            "not_authenticated",
            "00000000-0000-0000-0000-000000000000",
        ];
        IdentityConfig {
            junk_ids: junk.iter().map(|s| s.to_string()).collect(),
            anonymous_ids_per_person_max: 100,
            emails_per_person_max: 10,
        }
    }
}

/// The parts of an event the graph reads: extracted on the caller's thread, so the store's
/// single writer thread does not walk whole events.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdKeys {
    pub alias: bool,
    pub user_id: Option<String>,
    pub anonymous_id: Option<String>,
    pub email: Option<String>,
    pub previous_id: Option<String>,
}

impl IdKeys {
    pub fn of(e: &Event) -> IdKeys {
        IdKeys {
            alias: e.event_type == EventType::Alias,
            user_id: e.user_id.clone(),
            anonymous_id: e.anonymous_id.clone(),
            email: e.email.clone(),
            previous_id: e.previous_id.clone(),
        }
    }
}

/// [`IdKeys`] borrowed from wherever the event's ids live.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IdRefs<'a> {
    pub alias: bool,
    pub user_id: Option<&'a str>,
    pub anonymous_id: Option<&'a str>,
    pub email: Option<&'a str>,
    pub previous_id: Option<&'a str>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Node {
    kind: IdKind,
    /// Empty once the person was erased (GDPR); the node number stays taken.
    id: String,
    person: PersonId,
}

/// Per person bookkeeping, kept on the person's root node.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Person {
    members: Vec<NodeId>,
    user: Option<NodeId>,
    anonymous: usize,
    emails: usize,
}

/// Why a merge did not happen; counted so operators can see protection at work.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergeStats {
    pub merges: u64,
    pub refused_two_users: u64,
    pub refused_limit: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IdentityGraph {
    config: IdentityConfig,
    nodes: Vec<Node>,
    persons: HashMap<PersonId, Person>,
    stats: MergeStats,
    /// One map per kind, so lookups borrow the id instead of allocating a key. Built on
    /// first use: a query that only needs `person_table` never pays for it.
    #[serde(skip)]
    index: std::sync::OnceLock<Index>,
    #[serde(skip)]
    junk: std::collections::HashSet<String>,
    #[serde(skip)]
    junk_len_max: usize,
    /// Nodes whose person changed since the last [`IdentityGraph::drain_journal`], when
    /// journaling is on: what a backend that stores persons beside events must rewrite.
    #[serde(skip)]
    journal: Option<Vec<NodeId>>,
}

impl IdentityGraph {
    pub fn new(config: IdentityConfig) -> IdentityGraph {
        let mut g = IdentityGraph {
            config,
            nodes: Vec::new(),
            persons: HashMap::new(),
            stats: MergeStats::default(),
            index: std::sync::OnceLock::new(),
            junk: Default::default(),
            junk_len_max: 0,
            journal: None,
        };
        g.rebuild_derived();
        g
    }

    /// Restores a graph from [`IdentityGraph::to_snapshot`] bytes.
    pub fn from_snapshot(bytes: &[u8]) -> Result<IdentityGraph, SnapshotError> {
        let mut g = snapshot::decode(bytes)?;
        g.rebuild_derived();
        Ok(g)
    }

    /// A graph rebuilt from the node table a remote backend keeps (ClickHouse's
    /// `identities`): node `n`'s kind, id, person and whether it is the person's user id,
    /// for every `n` in order. It answers lookups, persons and canonical ids as the graph
    /// that wrote the table; merge counts are not part of the table and start at zero.
    pub fn from_nodes(
        config: IdentityConfig,
        table: impl IntoIterator<Item = (IdKind, String, PersonId, bool)>,
    ) -> IdentityGraph {
        let mut g = IdentityGraph::new(config);
        for (n, (kind, id, person, is_user)) in table.into_iter().enumerate() {
            let node = n as NodeId;
            let p = g.persons.entry(person).or_default();
            p.members.push(node);
            if is_user {
                p.user = Some(node);
            }
            match kind {
                IdKind::Anonymous => p.anonymous += 1,
                IdKind::Email => p.emails += 1,
                IdKind::User => {}
            }
            g.nodes.push(Node { kind, id, person });
        }
        g.rebuild_derived();
        g
    }

    /// A compact, checksummed binary snapshot: loading one is a linear read, so opening a
    /// store for one query stays cheap as the graph grows.
    pub fn to_snapshot(&self) -> Vec<u8> {
        snapshot::encode(self)
    }

    fn index(&self) -> &Index {
        self.index.get_or_init(|| {
            let mut index: Index = Default::default();
            for (i, n) in self.nodes.iter().enumerate() {
                if !n.id.is_empty() {
                    index[n.kind as usize].insert(n.id.clone(), i as NodeId);
                }
            }
            index
        })
    }

    fn index_mut(&mut self) -> &mut Index {
        self.index();
        self.index.get_mut().expect("index was just built")
    }

    fn rebuild_derived(&mut self) {
        self.index = std::sync::OnceLock::new();
        self.junk = self
            .config
            .junk_ids
            .iter()
            .map(|j| j.trim().to_lowercase())
            .collect();
        self.junk_len_max = self.junk.iter().map(String::len).max().unwrap_or(0);
    }

    /// Applies a changed configuration to future merges; past merges stand.
    pub fn set_config(&mut self, config: IdentityConfig) {
        self.config = config;
        self.rebuild_derived();
    }

    pub fn config(&self) -> &IdentityConfig {
        &self.config
    }

    pub fn stats(&self) -> MergeStats {
        self.stats
    }

    pub fn is_junk(&self, id: &str) -> bool {
        let t = id.trim();
        // Real ids are mostly longer than any junk id: decided without allocating.
        t.is_empty() || (t.len() <= self.junk_len_max && self.junk.contains(&t.to_lowercase()))
    }

    /// Feeds one event in log order: registers its ids, applies the merges it implies, and
    /// returns the node of the id it was sent under.
    pub fn observe(&mut self, e: &Event) -> NodeId {
        self.observe_keys(&IdKeys::of(e))
    }

    /// [`IdentityGraph::observe`] for keys extracted beforehand.
    pub fn observe_keys(&mut self, e: &IdKeys) -> NodeId {
        self.observe_ids(IdRefs {
            alias: e.alias,
            user_id: e.user_id.as_deref(),
            anonymous_id: e.anonymous_id.as_deref(),
            email: e.email.as_deref(),
            previous_id: e.previous_id.as_deref(),
        })
    }

    /// [`IdentityGraph::observe`] for borrowed keys: what the store's writer hands over.
    pub fn observe_ids(&mut self, e: IdRefs<'_>) -> NodeId {
        let user = self.real(e.user_id, IdKind::User);
        let anon = self.real(e.anonymous_id, IdKind::Anonymous);
        let email = self.real(e.email, IdKind::Email);
        let subject = user.or(anon);

        if let (Some(u), Some(a)) = (user, anon) {
            self.merge(u, a, false);
        }
        if let (Some(s), Some(m)) = (subject, email) {
            self.merge(s, m, false);
        }
        if e.alias {
            if let (Some(s), Some(prev)) = (subject, e.previous_id) {
                if !self.is_junk(prev) {
                    let p = match self.lookup(IdKind::User, prev) {
                        Some(p) => p,
                        None => self.intern(IdKind::Anonymous, prev),
                    };
                    // Alias is the explicit "these are one person" call, so it may join
                    // two user ids; a shared device never can.
                    self.merge(s, p, true);
                }
            }
        }
        match subject {
            Some(n) => n,
            // Only junk ids: the event still belongs somewhere, to a node that never merges.
            None => {
                let (kind, id) = match e.user_id {
                    Some(u) => (IdKind::User, u),
                    None => (IdKind::Anonymous, e.anonymous_id.unwrap_or("")),
                };
                self.intern(kind, id)
            }
        }
    }

    fn real(&mut self, id: Option<&str>, kind: IdKind) -> Option<NodeId> {
        let id = id.filter(|i| !self.is_junk(i))?;
        Some(self.intern(kind, id))
    }

    fn intern(&mut self, kind: IdKind, id: &str) -> NodeId {
        if let Some(&n) = self.index()[kind as usize].get(id) {
            return n;
        }
        let n = self.nodes.len() as NodeId;
        self.nodes.push(Node {
            kind,
            id: id.to_string(),
            person: n,
        });
        let junk = self.is_junk(id);
        self.persons.insert(
            n,
            Person {
                members: vec![n],
                user: (kind == IdKind::User && !junk).then_some(n),
                anonymous: usize::from(kind == IdKind::Anonymous),
                emails: usize::from(kind == IdKind::Email),
            },
        );
        if !junk {
            self.index_mut()[kind as usize].insert(id.to_string(), n);
        }
        n
    }

    /// Joins the persons of two nodes unless merge protection forbids it.
    fn merge(&mut self, a: NodeId, b: NodeId, explicit: bool) -> bool {
        let (pa, pb) = (self.person_of(a), self.person_of(b));
        if pa == pb {
            return true;
        }
        let (x, y) = (&self.persons[&pa], &self.persons[&pb]);
        if let (Some(ua), Some(ub), false) = (x.user, y.user, explicit) {
            if ua != ub {
                self.stats.refused_two_users += 1;
                return false;
            }
        }
        if x.anonymous + y.anonymous > self.config.anonymous_ids_per_person_max
            || x.emails + y.emails > self.config.emails_per_person_max
        {
            self.stats.refused_limit += 1;
            return false;
        }
        // Smaller set into larger keeps total relabelling at O(n log n).
        let (keep, gone) = if x.members.len() >= y.members.len() {
            (pa, pb)
        } else {
            (pb, pa)
        };
        let absorbed = self.persons.remove(&gone).expect("person exists");
        for &m in &absorbed.members {
            self.nodes[m as usize].person = keep;
        }
        if let Some(j) = &mut self.journal {
            j.extend_from_slice(&absorbed.members);
        }
        let into = self.persons.get_mut(&keep).expect("person exists");
        into.members.extend(absorbed.members);
        into.user = into.user.or(absorbed.user);
        into.anonymous += absorbed.anonymous;
        into.emails += absorbed.emails;
        self.stats.merges += 1;
        true
    }

    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// The kind and text of a node's id (empty once erased).
    pub fn node(&self, node: NodeId) -> (IdKind, &str) {
        let n = &self.nodes[node as usize];
        (n.kind, n.id.as_str())
    }

    /// The node of a person's user id, when they have one: the id `canonical_id` names.
    pub fn user_of(&self, person: PersonId) -> Option<NodeId> {
        self.persons.get(&person).and_then(|p| p.user)
    }

    /// Starts recording which nodes change person (merges, erasure); off by default, so
    /// the embedded store pays nothing.
    pub fn start_journal(&mut self) {
        self.journal.get_or_insert_with(Vec::new);
    }

    /// The nodes whose person changed since the last call, in the order it happened (a
    /// node can appear more than once).
    pub fn drain_journal(&mut self) -> Vec<NodeId> {
        self.journal
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    pub fn person_of(&self, node: NodeId) -> PersonId {
        self.nodes[node as usize].person
    }

    /// Node-to-person table for scans: `table[node] == person_of(node)`.
    pub fn person_table(&self) -> Vec<PersonId> {
        self.nodes.iter().map(|n| n.person).collect()
    }

    pub fn lookup(&self, kind: IdKind, id: &str) -> Option<NodeId> {
        self.index()[kind as usize].get(id).copied()
    }

    /// Finds a person by any of their ids, trying user id, email, then anonymous id.
    pub fn find_person(&self, id: &str) -> Option<PersonId> {
        let email = id.trim().to_lowercase();
        self.lookup(IdKind::User, id)
            .or_else(|| self.lookup(IdKind::Email, &email))
            .or_else(|| self.lookup(IdKind::Anonymous, id))
            .map(|n| self.person_of(n))
    }

    /// The ids of a person, in the order they were first seen.
    pub fn ids_of(&self, person: PersonId) -> Vec<(IdKind, &str)> {
        let mut members = self
            .persons
            .get(&person)
            .map(|p| p.members.clone())
            .unwrap_or_default();
        members.sort_unstable();
        members
            .into_iter()
            .map(|m| &self.nodes[m as usize])
            .filter(|n| !n.id.is_empty())
            .map(|n| (n.kind, n.id.as_str()))
            .collect()
    }

    /// The name a person goes by in exports: their user id, else their first id.
    pub fn canonical_id(&self, person: PersonId) -> &str {
        let p = self.persons.get(&person);
        if let Some(u) = p.and_then(|p| p.user) {
            return &self.nodes[u as usize].id;
        }
        p.and_then(|p| p.members.iter().min())
            .map(|&m| self.nodes[m as usize].id.as_str())
            .unwrap_or("")
    }

    /// Erases every id of a person (GDPR). Node numbers stay taken so stored node
    /// references elsewhere stay valid; returns the erased nodes.
    pub fn forget_person(&mut self, person: PersonId) -> Vec<NodeId> {
        let Some(p) = self.persons.remove(&person) else {
            return Vec::new();
        };
        for &m in &p.members {
            let node = &mut self.nodes[m as usize];
            let id = std::mem::take(&mut node.id);
            let kind = node.kind as usize;
            self.index_mut()[kind].remove(&id);
        }
        // A tombstone person per node keeps `person_of` total without reviving the merge.
        for &m in &p.members {
            self.persons.insert(
                m,
                Person {
                    members: vec![m],
                    ..Person::default()
                },
            );
            self.nodes[m as usize].person = m;
        }
        if let Some(j) = &mut self.journal {
            j.extend_from_slice(&p.members);
        }
        p.members
    }

    /// Whether a node's id was erased.
    pub fn is_forgotten(&self, node: NodeId) -> bool {
        self.nodes[node as usize].id.is_empty()
    }
}

impl Default for IdentityGraph {
    fn default() -> Self {
        IdentityGraph::new(IdentityConfig::default())
    }
}

mod snapshot;
pub use snapshot::SnapshotError;

#[cfg(test)]
mod tests;
