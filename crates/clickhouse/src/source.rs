//! Reading a project back out of ClickHouse in the shapes the query engine consumes:
//! rows sorted by (person, time, arrival) with dictionary-coded dimensions, decoded events
//! by name or by node, and the identity mapping (who is who, by any id).
//!
//! Persons are resolved in SQL: each event's stored person goes through
//! `person_overrides` (argMax by version), joined GLOBAL so on a cluster every shard
//! resolves and sorts its own rows and the initiator merges sorted streams. Row filters
//! are Rust closures; they are pushed into SQL by evaluating them once per distinct
//! combination of (type, dimension values) and sending back only the kept combinations,
//! as dictionary codes (`transform`), so a scan moves about 20 bytes per row. Every read
//! drops a repeated `seq`, the trace a replayed insert can leave until ClickHouse merges.
//! Never interprets what it reads: that is crates/query's business.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use throughline_identity::{IdKind, IdentityConfig, IdentityGraph};
use throughline_model::{Event, Millis, DIMS, DIM_COUNT};
use throughline_query::rows::{Column, Load, Rows};
use throughline_query::source::{EventFilter, RemoteSource, Visit};
use throughline_query::QueryError;
use throughline_store::NO_VALUE;

use crate::client::quote;
use crate::rowbinary::Reader;
use crate::schema::Target;
use crate::ClickHouseError;

/// Distinct (type, dimension values) combinations a filter is evaluated on at most; past
/// it, rows come back with their strings and are filtered here.
pub const COMBOS_MAX: usize = 100_000;
/// The SQL text of one query at most (kept combinations and dictionaries are literals).
const QUERY_BYTES_MAX: &str = "268435456";

pub type Keep<'a> = dyn Fn(u8, &[Option<&str>; DIM_COUNT]) -> bool + Send + Sync + 'a;

/// What to read: `[from, to)`, the dimensions (indexes into `DIMS`), a row filter over the
/// type and those dimensions, and optionally only some persons' rows.
#[derive(Default)]
pub struct RowRequest<'a> {
    pub from: Option<Millis>,
    pub to: Option<Millis>,
    pub dims: Vec<usize>,
    pub keep: Option<&'a Keep<'a>>,
    pub persons: Option<&'a HashSet<u32>>,
}

/// One project in ClickHouse, read side.
#[derive(Clone)]
pub struct Source {
    target: Arc<Target>,
    project: String,
    /// Junk ids are never found by a lookup, as in the embedded graph.
    junk: Arc<IdentityGraph>,
}

/// One id of a person, as the identity mapping holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub node: u32,
    pub kind: IdKind,
    pub id: String,
    pub is_user: bool,
}

fn kind_of(code: u8) -> IdKind {
    match code {
        1 => IdKind::User,
        2 => IdKind::Email,
        _ => IdKind::Anonymous,
    }
}

impl Source {
    pub fn new(target: Arc<Target>, project: &str, identity: IdentityConfig) -> Source {
        Source {
            target,
            project: project.to_string(),
            junk: Arc::new(IdentityGraph::new(identity)),
        }
    }

    pub fn project(&self) -> &str {
        &self.project
    }

    fn where_range(&self, from: Option<Millis>, to: Option<Millis>) -> String {
        let mut w = format!("project = {}", quote(&self.project));
        if let Some(f) = from {
            w.push_str(&format!(" AND ts >= {f}"));
        }
        if let Some(t) = to {
            w.push_str(&format!(" AND ts < {t}"));
        }
        w
    }

    /// `FROM events ... JOIN overrides` giving `rp`, the person today.
    fn resolved_from(&self) -> String {
        format!(
            "{events} GLOBAL ANY LEFT JOIN (\
               SELECT old_person AS person, argMax(override_person, version) AS np, toUInt8(1) AS o \
               FROM {overrides} WHERE project = {p} GROUP BY old_person\
             ) AS ov USING person",
            events = self.target.table("events"),
            overrides = self.target.table("person_overrides"),
            p = quote(&self.project),
        )
    }

    fn stream(&self, sql: &str) -> Result<Reader<impl std::io::Read>, ClickHouseError> {
        Ok(Reader::new(self.target.client.query_stream(
            sql,
            &[("max_query_size", QUERY_BYTES_MAX)],
        )?))
    }

    /// Events stored (distinct), for stats.
    pub fn event_count(&self) -> Result<u64, ClickHouseError> {
        self.target
            .client
            .query_text(&format!(
                "SELECT uniqExact(seq) FROM {} WHERE project = {}",
                self.target.table("events"),
                quote(&self.project)
            ))?
            .parse()
            .map_err(|_| ClickHouseError::Decode("an event count".into()))
    }

    /// Ids stored (distinct nodes) and the persons they belong to now (each node's
    /// latest version), for stats: what the embedded graph's node and person counts say.
    pub fn identity_counts(&self) -> Result<(u64, u64), ClickHouseError> {
        let text = self.target.client.query_text(&format!(
            "SELECT count(), uniqExact(p) FROM (SELECT node, argMax(person, version) AS p \
             FROM {} WHERE project = {} GROUP BY node) FORMAT TabSeparated",
            self.target.table("identities"),
            quote(&self.project)
        ))?;
        let mut it = text.split('\t').map(|v| v.trim().parse::<u64>());
        match (it.next(), it.next()) {
            (Some(Ok(ids)), Some(Ok(persons))) => Ok((ids, persons)),
            _ => Err(ClickHouseError::Decode(format!(
                "identity counts, got {text:?}"
            ))),
        }
    }

    /// Rows in range that pass the filter, sorted by (person, ts, arrival).
    pub fn rows(&self, req: &RowRequest) -> Result<Rows, ClickHouseError> {
        let dims = &req.dims;
        let range = self.where_range(req.from, req.to);
        let dim_list: String = dims.iter().map(|&d| format!(", {}", DIMS[d])).collect();
        // Phase 1: the distinct combinations, with the filter evaluated on each.
        let mut r = self.stream(&format!(
            "SELECT kind{dim_list} FROM {} WHERE {range} GROUP BY kind{dim_list} LIMIT {} FORMAT RowBinary",
            self.target.table("events"),
            COMBOS_MAX + 1
        ))?;
        let mut combos: Vec<(u8, Vec<Option<String>>)> = Vec::new();
        while !r.at_end()? {
            let kind = r.u8()?;
            let mut values = Vec::with_capacity(dims.len());
            for _ in dims {
                values.push(r.opt_string()?);
            }
            combos.push((kind, values));
        }
        if combos.len() > COMBOS_MAX {
            return self.rows_filtered_here(req);
        }
        // Dictionaries hold every value seen, so a code never stands for two values.
        let mut dicts: Vec<Vec<String>> = vec![Vec::new(); dims.len()];
        let mut codes: Vec<HashMap<String, u32>> = vec![HashMap::new(); dims.len()];
        for (_, values) in &combos {
            for (j, v) in values.iter().enumerate() {
                if let Some(v) = v {
                    if !codes[j].contains_key(v) {
                        dicts[j].push(v.clone());
                        codes[j].insert(v.clone(), dicts[j].len() as u32);
                    }
                }
            }
        }
        let mut kept: Vec<String> = Vec::new();
        let mut all_kept = true;
        for (kind, values) in &combos {
            let mut arr: [Option<&str>; DIM_COUNT] = [None; DIM_COUNT];
            for (j, &d) in dims.iter().enumerate() {
                arr[d] = values[j].as_deref();
            }
            if req.keep.is_none_or(|k| k(*kind, &arr)) {
                let mut t = format!("({kind}");
                for (j, v) in values.iter().enumerate() {
                    t.push_str(&format!(", {}", v.as_ref().map_or(0, |v| codes[j][v])));
                }
                t.push(')');
                kept.push(t);
            } else {
                all_kept = false;
            }
        }
        let mut out = empty_rows(dims);
        for (j, &d) in dims.iter().enumerate() {
            out.dims[d].as_mut().expect("requested").dict = std::mem::take(&mut dicts[j]);
        }
        if kept.is_empty() {
            return Ok(out);
        }
        let code_exprs: Vec<String> = dims
            .iter()
            .enumerate()
            .map(|(j, &d)| {
                let dict = &out.dims[d].as_ref().expect("requested").dict;
                if dict.is_empty() {
                    return format!("toUInt32(0) AS c{j}");
                }
                let values: Vec<String> = dict.iter().map(|v| quote(v)).collect();
                let nums: Vec<String> = (1..=dict.len()).map(|n| n.to_string()).collect();
                format!(
                    "if(isNull({col}), toUInt32(0), transform(assumeNotNull({col}), [{}], [{}], toUInt32(0))) AS c{j}",
                    values.join(","),
                    nums.join(","),
                    col = DIMS[d],
                )
            })
            .collect();
        let select_codes: String = code_exprs.iter().map(|c| format!(", {c}")).collect();
        let filter = if all_kept {
            String::new()
        } else {
            let cols: String = (0..dims.len()).map(|j| format!(", c{j}")).collect();
            format!(" AND (kind{cols}) IN ({})", kept.join(", "))
        };
        let sql = format!(
            "SELECT if(o = 1, np, person) AS rp, ts, seq, kind{select_codes} FROM {} \
             WHERE {range}{filter} ORDER BY rp, ts, seq FORMAT RowBinary",
            self.resolved_from()
        );
        let mut r = self.stream(&sql)?;
        let mut last: Option<(u32, u64)> = None;
        let mut row_codes = vec![0u32; dims.len()];
        while !r.at_end()? {
            let person = r.u32()?;
            let ts = r.i64()?;
            let seq = r.u64()?;
            let kind = r.u8()?;
            for c in row_codes.iter_mut() {
                *c = r.u32()?;
            }
            if last == Some((person, seq)) || req.persons.is_some_and(|p| !p.contains(&person)) {
                continue;
            }
            last = Some((person, seq));
            out.person.push(person);
            out.ts.push(ts);
            out.seq.push(seq_u32(seq)?);
            out.kind.push(kind);
            for (j, &d) in dims.iter().enumerate() {
                let c = row_codes[j];
                out.dims[d]
                    .as_mut()
                    .expect("requested")
                    .codes
                    .push(if c == 0 { NO_VALUE } else { c - 1 });
            }
        }
        Ok(out)
    }

    /// The fallback for filters over too many distinct combinations: strings come back and
    /// are filtered and interned here.
    fn rows_filtered_here(&self, req: &RowRequest) -> Result<Rows, ClickHouseError> {
        let dims = &req.dims;
        let dim_list: String = dims.iter().map(|&d| format!(", {}", DIMS[d])).collect();
        let sql = format!(
            "SELECT if(o = 1, np, person) AS rp, ts, seq, kind{dim_list} FROM {} \
             WHERE {} ORDER BY rp, ts, seq FORMAT RowBinary",
            self.resolved_from(),
            self.where_range(req.from, req.to)
        );
        let mut r = self.stream(&sql)?;
        let mut out = empty_rows(dims);
        let mut interned: Vec<HashMap<String, u32>> = vec![HashMap::new(); dims.len()];
        let mut last: Option<(u32, u64)> = None;
        let mut values: Vec<Option<String>> = vec![None; dims.len()];
        let mut codes = vec![NO_VALUE; dims.len()];
        while !r.at_end()? {
            let person = r.u32()?;
            let ts = r.i64()?;
            let seq = r.u64()?;
            let kind = r.u8()?;
            for v in values.iter_mut() {
                *v = r.opt_string()?;
            }
            // Dictionaries hold every value seen, kept or not, as the first path's do (a
            // scan reads its dictionaries through a filter that keeps nothing).
            for (j, &d) in dims.iter().enumerate() {
                let col = out.dims[d].as_mut().expect("requested");
                codes[j] = match &values[j] {
                    None => NO_VALUE,
                    Some(v) => *interned[j].entry(v.clone()).or_insert_with(|| {
                        col.dict.push(v.clone());
                        (col.dict.len() - 1) as u32
                    }),
                };
            }
            if last == Some((person, seq)) || req.persons.is_some_and(|p| !p.contains(&person)) {
                continue;
            }
            let mut arr: [Option<&str>; DIM_COUNT] = [None; DIM_COUNT];
            for (j, &d) in dims.iter().enumerate() {
                arr[d] = values[j].as_deref();
            }
            if req.keep.is_some_and(|k| !k(kind, &arr)) {
                continue;
            }
            last = Some((person, seq));
            out.person.push(person);
            out.ts.push(ts);
            out.seq.push(seq_u32(seq)?);
            out.kind.push(kind);
            for (j, &d) in dims.iter().enumerate() {
                out.dims[d]
                    .as_mut()
                    .expect("requested")
                    .codes
                    .push(codes[j]);
            }
        }
        Ok(out)
    }

    /// Visits each event whose name passes `wanted` once, decoded, with its arrival number
    /// and node (in no particular order).
    pub fn events_named(
        &self,
        wanted: &dyn Fn(&str) -> bool,
        visit: &mut dyn FnMut(u32, u32, Event) -> Result<(), ClickHouseError>,
    ) -> Result<(), ClickHouseError> {
        let events = self.target.table("events");
        let p = quote(&self.project);
        let names = self.target.client.query_bytes(&format!(
            "SELECT DISTINCT assumeNotNull(name) FROM {events} WHERE project = {p} AND isNotNull(name) FORMAT RowBinary"
        ))?;
        let mut r = Reader::new(&names[..]);
        let mut list = Vec::new();
        let mut all = true;
        while !r.at_end()? {
            let n = r.string()?;
            if wanted(&n) {
                list.push(quote(&n));
            } else {
                all = false;
            }
        }
        if list.is_empty() {
            return Ok(());
        }
        let filter = if all {
            "isNotNull(name)".to_string()
        } else {
            format!("name IN ({})", list.join(", "))
        };
        self.decode(
            &format!(
                "SELECT seq, node, payload FROM {events} WHERE project = {p} AND {filter} FORMAT RowBinary"
            ),
            visit,
        )
    }

    /// Visits every event sent under one of `nodes`, decoded (a person's timeline).
    pub fn events_of_nodes(
        &self,
        nodes: &[u32],
        visit: &mut dyn FnMut(u32, u32, Event) -> Result<(), ClickHouseError>,
    ) -> Result<(), ClickHouseError> {
        if nodes.is_empty() {
            return Ok(());
        }
        let list: Vec<String> = nodes.iter().map(|n| n.to_string()).collect();
        self.decode(
            &format!(
                "SELECT seq, node, payload FROM {} WHERE project = {} AND node IN ({}) FORMAT RowBinary",
                self.target.table("events"),
                quote(&self.project),
                list.join(", ")
            ),
            visit,
        )
    }

    fn decode(
        &self,
        sql: &str,
        visit: &mut dyn FnMut(u32, u32, Event) -> Result<(), ClickHouseError>,
    ) -> Result<(), ClickHouseError> {
        let mut r = self.stream(sql)?;
        let mut seen: HashSet<u64> = HashSet::new();
        let mut buf = Vec::new();
        while !r.at_end()? {
            let seq = r.u64()?;
            let node = r.u32()?;
            r.bytes_into(&mut buf)?;
            if !seen.insert(seq) {
                continue;
            }
            let e: Event = serde_json::from_slice(&buf)
                .map_err(|e| ClickHouseError::Decode(format!("a stored event: {e}")))?;
            visit(seq_u32(seq)?, node, e)?;
        }
        Ok(())
    }

    /// Every id of the persons given (all persons when `None`), with each node's
    /// current person.
    pub fn identities(
        &self,
        persons: Option<&[u32]>,
    ) -> Result<Vec<(u32, Member)>, ClickHouseError> {
        let having = match persons {
            Some([]) => return Ok(Vec::new()),
            Some(ps) => format!(
                " HAVING person IN ({})",
                ps.iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None => String::new(),
        };
        let bytes = self.target.client.query_bytes(&format!(
            "SELECT node, argMax(kind, version) AS k, argMax(id, version) AS i, argMax(person, version) AS person, argMax(is_user, version) AS u \
             FROM {} WHERE project = {} GROUP BY node{having} ORDER BY node FORMAT RowBinary",
            self.target.table("identities"),
            quote(&self.project),
        ))?;
        let mut r = Reader::new(&bytes[..]);
        let mut out = Vec::new();
        while !r.at_end()? {
            let node = r.u32()?;
            let kind = kind_of(r.u8()?);
            let id = r.string()?;
            let person = r.u32()?;
            let is_user = r.u8()? != 0;
            out.push((
                person,
                Member {
                    node,
                    kind,
                    id,
                    is_user,
                },
            ));
        }
        Ok(out)
    }

    /// The person known by `id`: a user id, else an email, else an anonymous id (junk ids
    /// name nobody), as `IdentityGraph::find_person` answers.
    pub fn find_person(&self, id: &str) -> Result<Option<u32>, ClickHouseError> {
        let email = id.trim().to_lowercase();
        let bytes = self.target.client.query_bytes(&format!(
            "SELECT argMax(kind, version) AS k, argMax(id, version) AS i, argMax(person, version) FROM {} \
             WHERE project = {} AND id IN ({}, {}) GROUP BY node FORMAT RowBinary",
            self.target.table("identities"),
            quote(&self.project),
            quote(id),
            quote(&email)
        ))?;
        let mut r = Reader::new(&bytes[..]);
        let mut found: [Option<u32>; 3] = [None; 3];
        while !r.at_end()? {
            let kind = kind_of(r.u8()?);
            let text = r.string()?;
            let person = r.u32()?;
            if self.junk.is_junk(&text) {
                continue;
            }
            let slot = match kind {
                IdKind::User if text == id => 0,
                IdKind::Email if text == email => 1,
                IdKind::Anonymous if text == id => 2,
                _ => continue,
            };
            found[slot] = Some(person);
        }
        Ok(found.into_iter().flatten().next())
    }

    /// The names persons go by: their user id, else their first id (`canonical_id`).
    pub fn canonical_ids(&self, persons: &[u32]) -> Result<HashMap<u32, String>, ClickHouseError> {
        let mut by_person: HashMap<u32, Vec<Member>> = HashMap::new();
        for (p, m) in self.identities(Some(persons))? {
            by_person.entry(p).or_default().push(m);
        }
        Ok(persons
            .iter()
            .map(|&p| {
                let members = by_person.remove(&p).unwrap_or_default();
                let name = members
                    .iter()
                    .find(|m| m.is_user)
                    .or_else(|| members.iter().min_by_key(|m| m.node))
                    .map(|m| m.id.clone())
                    .unwrap_or_default();
                (p, name)
            })
            .collect())
    }
}

/// Every query kind reads ClickHouse through this: rows with persons resolved in SQL,
/// decoded events in arrival order, and the identity mapping rebuilt from `identities`.
impl RemoteSource for Source {
    fn rows(&self, req: &Load) -> Result<Rows, QueryError> {
        Source::rows(
            self,
            &RowRequest {
                from: req.from,
                to: req.to,
                dims: req.dims.clone(),
                keep: req.keep.as_deref(),
                persons: req.persons,
            },
        )
        .map_err(backend)
    }

    fn events(&self, filter: &EventFilter, visit: &mut Visit) -> Result<(), QueryError> {
        let events = self.target.table("events");
        let mut w = format!("project = {}", quote(&self.project));
        if let Some(name) = filter.name {
            let bytes = self
                .target
                .client
                .query_bytes(&format!(
                    "SELECT DISTINCT name FROM {events} WHERE {w} FORMAT RowBinary"
                ))
                .map_err(backend)?;
            let mut r = Reader::new(&bytes[..]);
            let (mut kept, mut null, mut all) = (Vec::new(), false, true);
            while !r.at_end().map_err(backend)? {
                let n = r.opt_string().map_err(backend)?;
                if !name(n.as_deref()) {
                    all = false;
                    continue;
                }
                match n {
                    Some(n) => kept.push(quote(&n)),
                    None => null = true,
                }
            }
            if !all {
                let mut any = Vec::new();
                if !kept.is_empty() {
                    any.push(format!("name IN ({})", kept.join(", ")));
                }
                if null {
                    any.push("isNull(name)".to_string());
                }
                if any.is_empty() {
                    return Ok(());
                }
                w.push_str(&format!(" AND ({})", any.join(" OR ")));
            }
        }
        let list = |xs: &mut dyn Iterator<Item = u32>| -> String {
            xs.map(|x| x.to_string()).collect::<Vec<_>>().join(", ")
        };
        if let Some(nodes) = filter.nodes {
            if nodes.is_empty() {
                return Ok(());
            }
            let mut sorted: Vec<u32> = nodes.iter().copied().collect();
            sorted.sort_unstable();
            w.push_str(&format!(" AND node IN ({})", list(&mut sorted.into_iter())));
        }
        if let Some(seqs) = filter.seqs {
            if seqs.is_empty() {
                return Ok(());
            }
            w.push_str(&format!(
                " AND seq IN ({})",
                list(&mut seqs.iter().copied())
            ));
        }
        let mut failed = None;
        let done = self.decode(
            &format!(
                "SELECT seq, node, payload FROM {events} WHERE {w} ORDER BY seq FORMAT RowBinary"
            ),
            &mut |seq, node, e| {
                visit(seq, node, e).map_err(|e| {
                    let stop = ClickHouseError::Invalid(e.to_string());
                    failed = Some(e);
                    stop
                })
            },
        );
        match (done, failed) {
            (_, Some(e)) => Err(e),
            (Err(e), None) => Err(backend(e)),
            (Ok(()), None) => Ok(()),
        }
    }

    fn event_count(&self) -> Result<u64, QueryError> {
        Source::event_count(self).map_err(backend)
    }

    fn newest_events(&self, limit: usize) -> Result<Vec<(u32, Event)>, QueryError> {
        // `LIMIT 1 BY seq` drops a replayed insert's second row before the limit counts it.
        let mut out = Vec::with_capacity(limit);
        self.decode(
            &format!(
                "SELECT seq, node, payload FROM {} WHERE project = {} \
                 ORDER BY ts DESC, seq DESC LIMIT 1 BY seq LIMIT {limit} FORMAT RowBinary",
                self.target.table("events"),
                quote(&self.project),
            ),
            &mut |_, node, e| {
                out.push((node, e));
                Ok(())
            },
        )
        .map_err(backend)?;
        Ok(out)
    }

    fn distinct(&self, dim: usize, limit: usize) -> Result<Vec<String>, QueryError> {
        let col = DIMS[dim];
        let bytes = self
            .target
            .client
            .query_bytes(&format!(
                "SELECT DISTINCT assumeNotNull({col}) AS v FROM {} WHERE project = {} AND isNotNull({col}) \
                 ORDER BY v LIMIT {limit} FORMAT RowBinary",
                self.target.table("events"),
                quote(&self.project),
            ))
            .map_err(backend)?;
        let mut r = Reader::new(&bytes[..]);
        let mut out = Vec::new();
        while !r.at_end().map_err(backend)? {
            out.push(r.string().map_err(backend)?);
        }
        Ok(out)
    }

    fn identity(&self) -> Result<IdentityGraph, QueryError> {
        let mut table: Vec<(IdKind, String, u32, bool)> = Vec::new();
        for (person, m) in self.identities(None).map_err(backend)? {
            let node = m.node as usize;
            // Node numbers are dense; one missing from the table (not forwarded yet) stands
            // alone with no id, as an erased node does.
            while table.len() < node {
                let n = table.len() as u32;
                table.push((IdKind::Anonymous, String::new(), n, false));
            }
            if table.len() == node {
                table.push((m.kind, m.id, person, m.is_user));
            }
        }
        Ok(IdentityGraph::from_nodes(self.junk.config().clone(), table))
    }
}

fn backend(e: ClickHouseError) -> QueryError {
    QueryError::Backend(e.to_string())
}

fn seq_u32(seq: u64) -> Result<u32, ClickHouseError> {
    u32::try_from(seq).map_err(|_| {
        ClickHouseError::Invalid(format!(
            "event number {seq} is past what one query addresses (2^32 events per project)"
        ))
    })
}

fn empty_rows(dims: &[usize]) -> Rows {
    Rows {
        dims: (0..DIM_COUNT)
            .map(|d| dims.contains(&d).then(Column::default))
            .collect(),
        ..Rows::default()
    }
}
