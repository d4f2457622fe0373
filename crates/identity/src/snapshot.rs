//! The identity graph's snapshot format.
//!
//! `MAGIC | header_len u32 | header JSON (config, stats) | nodes | persons | crc32`, all
//! little-endian. Nodes: count u64, then per node kind u8, person u32, id_len u32, id.
//! Persons: count u64, then per person root u32, user u32 (`u32::MAX` for none),
//! anonymous u64, emails u64. Members are not stored: they are the nodes whose person is
//! the root, in node order.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::{IdKind, IdentityConfig, IdentityGraph, MergeStats, Node, NodeId, Person};

const MAGIC: &[u8; 8] = b"TLIDG001";

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("identity snapshot is corrupt: {0}")]
    Corrupt(String),
}

#[derive(Serialize, Deserialize)]
struct Header {
    config: IdentityConfig,
    stats: MergeStats,
}

pub fn encode(g: &IdentityGraph) -> Vec<u8> {
    let header = serde_json::to_vec(&Header {
        config: g.config.clone(),
        stats: g.stats,
    })
    .expect("header serializes");
    let ids: usize = g.nodes.iter().map(|n| n.id.len() + 9).sum();
    let mut out = Vec::with_capacity(32 + header.len() + ids + g.persons.len() * 24);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(&(g.nodes.len() as u64).to_le_bytes());
    for n in &g.nodes {
        out.push(n.kind as u8);
        out.extend_from_slice(&n.person.to_le_bytes());
        out.extend_from_slice(&(n.id.len() as u32).to_le_bytes());
        out.extend_from_slice(n.id.as_bytes());
    }
    // Sorted, so equal graphs give equal bytes.
    let mut roots: Vec<&NodeId> = g.persons.keys().collect();
    roots.sort_unstable();
    out.extend_from_slice(&(roots.len() as u64).to_le_bytes());
    for root in roots {
        let p = &g.persons[root];
        out.extend_from_slice(&root.to_le_bytes());
        out.extend_from_slice(&p.user.unwrap_or(u32::MAX).to_le_bytes());
        out.extend_from_slice(&(p.anonymous as u64).to_le_bytes());
        out.extend_from_slice(&(p.emails as u64).to_le_bytes());
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], SnapshotError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or_else(|| SnapshotError::Corrupt("truncated".into()))?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32, SnapshotError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, SnapshotError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
}

pub fn decode(bytes: &[u8]) -> Result<IdentityGraph, SnapshotError> {
    let corrupt = |why: &str| SnapshotError::Corrupt(why.to_string());
    // Stores written before this format kept the graph as JSON.
    if bytes.first() == Some(&b'{') {
        return serde_json::from_slice(bytes).map_err(|e| corrupt(&e.to_string()));
    }
    if bytes.len() < MAGIC.len() + 4 || &bytes[..MAGIC.len()] != MAGIC {
        return Err(corrupt("not an identity snapshot"));
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    if crc32fast::hash(body) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
        return Err(corrupt("checksum mismatch"));
    }
    let mut r = Reader {
        bytes: body,
        at: MAGIC.len(),
    };
    let header_len = r.u32()? as usize;
    let header: Header =
        serde_json::from_slice(r.take(header_len)?).map_err(|e| corrupt(&e.to_string()))?;
    let count = r.u64()? as usize;
    let mut nodes = Vec::with_capacity(count.min(body.len() / 9));
    for _ in 0..count {
        let kind = match r.take(1)?[0] {
            0 => IdKind::Anonymous,
            1 => IdKind::User,
            2 => IdKind::Email,
            _ => return Err(corrupt("unknown id kind")),
        };
        let person = r.u32()?;
        let len = r.u32()? as usize;
        let id = std::str::from_utf8(r.take(len)?).map_err(|_| corrupt("id is not UTF-8"))?;
        nodes.push(Node {
            kind,
            id: id.to_string(),
            person,
        });
    }
    let count = r.u64()? as usize;
    let mut persons: HashMap<NodeId, Person> = HashMap::with_capacity(count.min(body.len() / 24));
    for _ in 0..count {
        let root = r.u32()?;
        let user = r.u32()?;
        let anonymous = r.u64()? as usize;
        let emails = r.u64()? as usize;
        persons.insert(
            root,
            Person {
                members: Vec::new(),
                user: (user != u32::MAX).then_some(user),
                anonymous,
                emails,
            },
        );
    }
    for (i, n) in nodes.iter().enumerate() {
        persons
            .get_mut(&n.person)
            .ok_or_else(|| corrupt("a node's person is missing"))?
            .members
            .push(i as NodeId);
    }
    if r.at != body.len() {
        return Err(corrupt("trailing bytes"));
    }
    Ok(IdentityGraph {
        config: header.config,
        nodes,
        persons,
        stats: header.stats,
        index: std::sync::OnceLock::new(),
        junk: Default::default(),
        junk_len_max: 0,
        journal: None,
    })
}
