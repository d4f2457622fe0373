//! The identity graph's changes between full snapshots.
//!
//! A full snapshot of the graph grows with the store (tens of MB at ten million events),
//! so writing one at every flush would make flushing cost grow with the store, not with
//! the flush. Instead a flush writes the ids of the events of its table that changed the
//! graph (a new id, a merge or a refused merge), in arrival order; recovery loads the last
//! full snapshot and replays these logs. Events that changed nothing are left out:
//! observing them again would change nothing either, so the replay rebuilds the same
//! graph, node numbers and counters included.
//!
//! File: `MAGIC | entries | count u64 | crc32 u32`, little-endian. Entry: `flags u8` (bit 0
//! alias, bits 1-4 which of user id, anonymous id, email, previous id follow), then each
//! present id as `len u32 | UTF-8 bytes`.

use throughline_identity::{IdRefs, IdentityGraph, NodeId};

const MAGIC: &[u8; 8] = b"TLIDL001";

/// Graph-changing events of one in-memory table, encoded as they arrive.
#[derive(Default)]
pub(crate) struct IdentityLog {
    bytes: Vec<u8>,
    count: u64,
}

impl IdentityLog {
    /// Observes `ids` in `graph` and records them if the graph changed.
    pub fn observe(&mut self, graph: &mut IdentityGraph, ids: IdRefs<'_>) -> NodeId {
        let before = (graph.node_count(), graph.stats());
        let node = graph.observe_ids(ids);
        if (graph.node_count(), graph.stats()) != before {
            self.push(ids);
        }
        node
    }

    fn push(&mut self, ids: IdRefs<'_>) {
        let present = [ids.user_id, ids.anonymous_id, ids.email, ids.previous_id];
        let mut flags = u8::from(ids.alias);
        for (bit, id) in present.iter().enumerate() {
            if id.is_some() {
                flags |= 2 << bit;
            }
        }
        self.bytes.push(flags);
        for id in present.into_iter().flatten() {
            self.bytes
                .extend_from_slice(&(id.len() as u32).to_le_bytes());
            self.bytes.extend_from_slice(id.as_bytes());
        }
        self.count += 1;
    }

    /// Bytes the encoded entries take.
    pub fn len_bytes(&self) -> usize {
        self.bytes.len()
    }

    /// The file's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.bytes.len() + 24);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.bytes);
        out.extend_from_slice(&self.count.to_le_bytes());
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }
}

/// Replays a file written by [`IdentityLog::encode`] into `graph`.
pub(crate) fn replay(bytes: &[u8], graph: &mut IdentityGraph) -> Result<(), String> {
    if bytes.len() < MAGIC.len() + 12 || &bytes[..MAGIC.len()] != MAGIC {
        return Err("not an identity log".into());
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    if crc32fast::hash(body) != u32::from_le_bytes(crc.try_into().expect("four bytes")) {
        return Err("identity log checksum mismatch".into());
    }
    let (entries, count) = body[MAGIC.len()..].split_at(body.len() - MAGIC.len() - 8);
    let count = u64::from_le_bytes(count.try_into().expect("eight bytes"));
    let mut at = 0;
    let mut take = |n: usize| -> Result<&[u8], String> {
        let piece = entries
            .get(at..at + n)
            .ok_or_else(|| "identity log entry runs past its end".to_string())?;
        at += n;
        Ok(piece)
    };
    for _ in 0..count {
        let flags = take(1)?[0];
        let mut ids: [Option<&str>; 4] = [None; 4];
        for (bit, id) in ids.iter_mut().enumerate() {
            if flags & (2 << bit) != 0 {
                let len = u32::from_le_bytes(take(4)?.try_into().expect("four bytes")) as usize;
                let text = std::str::from_utf8(take(len)?)
                    .map_err(|_| "identity log id is not UTF-8".to_string())?;
                *id = Some(text);
            }
        }
        graph.observe_ids(IdRefs {
            alias: flags & 1 != 0,
            user_id: ids[0],
            anonymous_id: ids[1],
            email: ids[2],
            previous_id: ids[3],
        });
    }
    if at != entries.len() {
        return Err("identity log has bytes after its last entry".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use throughline_identity::IdentityConfig;

    /// Replaying the log of graph-changing events onto the starting graph gives the graph
    /// that observing every event gave.
    #[test]
    fn replaying_the_changes_rebuilds_the_graph() {
        let mut rng = crate::testutil::Rng::new(3);
        let ids: Vec<String> = (0..60).map(|i| format!("id{i}")).collect();
        let pick = |rng: &mut crate::testutil::Rng| -> Option<&str> {
            (rng.below(3) > 0).then(|| ids[rng.below(ids.len() as u64) as usize].as_str())
        };
        let mut base = IdentityGraph::new(IdentityConfig::default());
        for _ in 0..50 {
            base.observe_ids(IdRefs {
                anonymous_id: pick(&mut rng),
                user_id: Some("u-base"),
                ..IdRefs::default()
            });
        }
        let start = base.to_snapshot();
        let mut live = IdentityGraph::from_snapshot(&start).unwrap();
        let mut log = IdentityLog::default();
        let mut events = 0;
        for _ in 0..3000 {
            let e = IdRefs {
                alias: rng.below(20) == 0,
                user_id: pick(&mut rng).filter(|_| rng.below(4) == 0),
                anonymous_id: pick(&mut rng).or(Some("null")),
                email: pick(&mut rng).filter(|_| rng.below(6) == 0),
                previous_id: pick(&mut rng),
            };
            log.observe(&mut live, e);
            events += 1;
        }
        assert!(log.count > 0 && log.count < events, "{}", log.count);
        let mut replayed = IdentityGraph::from_snapshot(&start).unwrap();
        replay(&log.encode(), &mut replayed).unwrap();
        assert_eq!(replayed.to_snapshot(), live.to_snapshot());
        let mut damaged = log.encode();
        damaged[10] ^= 1;
        assert!(replay(&damaged, &mut IdentityGraph::default()).is_err());
    }
}
