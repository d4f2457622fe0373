//! A second copy of the records of a segment's rare event names (survey answers, support
//! tickets, orders), so that a query reading only those events decodes a few percent of
//! the payload instead of verifying and scanning all of it.
//!
//! Which names: the least frequent ones, as long as their rows together stay within
//! [`RARE_SHARE_MAX`] of the segment's; a name is copied whole or not at all, so a reader
//! can trust the copy to hold every row of a name it lists. Chosen anew by each segment
//! write (flush or merge) from the rows it writes, so an erased person's records leave the
//! copy with the rows.
//!
//! Columns (footer version 3): `rare_payload` (the records, checksummed in blocks as the
//! payload is), `rare_offsets` (one more than records), `rare_rows` (each record's row,
//! ascending), `rare_blocks` (first record and crc32 of each block).

use std::borrow::Cow;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::segment::NO_VALUE;

/// At most this share of a segment's rows is copied.
pub const RARE_SHARE_MAX: f64 = 0.05;

/// The names to copy, by dictionary code: the rarest first while their rows fit the
/// share. `None` when no name is rare enough to be worth a copy.
pub(crate) fn choose(codes: &[u32], dict: &[Cow<str>]) -> Option<(Vec<bool>, Vec<String>)> {
    let mut counts = vec![0u64; dict.len()];
    for &c in codes {
        if c != NO_VALUE {
            counts[c as usize] += 1;
        }
    }
    let mut order: Vec<usize> = (0..dict.len()).filter(|&c| counts[c] > 0).collect();
    order.sort_by_key(|&c| (counts[c], c));
    let budget = (codes.len() as f64 * RARE_SHARE_MAX) as u64;
    let mut used = 0u64;
    let mut rare = vec![false; dict.len()];
    let mut names = Vec::new();
    for c in order {
        if used + counts[c] > budget {
            break;
        }
        used += counts[c];
        rare[c] = true;
        names.push(dict[c].to_string());
    }
    (!names.is_empty()).then_some((rare, names))
}

/// Collects the copied records while the payload is written, in blocks on a spill file
/// beside the segment (memory stays at one block), to be appended once the payload is.
pub(crate) struct RareWriter {
    spill_path: PathBuf,
    spill: BufWriter<File>,
    block: Vec<u8>,
    block_first: usize,
    pub(crate) rows: Vec<u32>,
    pub(crate) offsets: Vec<u64>,
    pub(crate) blocks: Vec<u64>,
    column_crc: crc32fast::Hasher,
    at: u64,
    block_bytes: usize,
}

impl RareWriter {
    pub(crate) fn new(segment: &Path, block_bytes: usize) -> io::Result<RareWriter> {
        let spill_path = segment.with_extension("rare.tmp");
        let spill = BufWriter::with_capacity(1 << 20, File::create(&spill_path)?);
        Ok(RareWriter {
            spill_path,
            spill,
            block: Vec::with_capacity(block_bytes + (64 << 10)),
            block_first: 0,
            rows: Vec::new(),
            offsets: vec![0],
            blocks: Vec::new(),
            column_crc: crc32fast::Hasher::new(),
            at: 0,
            block_bytes,
        })
    }

    pub(crate) fn push(&mut self, row: usize, record: &[u8]) -> io::Result<()> {
        if self.block.len() >= self.block_bytes {
            self.end_block()?;
        }
        self.block.extend_from_slice(record);
        self.at += record.len() as u64;
        self.offsets.push(self.at);
        self.rows.push(row as u32);
        Ok(())
    }

    fn end_block(&mut self) -> io::Result<()> {
        if self.block.is_empty() {
            return Ok(());
        }
        self.blocks.extend([
            self.block_first as u64,
            u64::from(crc32fast::hash(&self.block)),
        ]);
        self.column_crc.update(&self.block);
        self.spill.write_all(&self.block)?;
        self.block.clear();
        self.block_first = self.rows.len();
        Ok(())
    }

    /// Ends the last block and hands the records back a piece at a time, with the
    /// column's length and crc32; the spill file is gone afterwards.
    pub(crate) fn finish(
        mut self,
        mut out: impl FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<(u64, u32, RareColumns)> {
        self.end_block()?;
        let file = self.spill.into_inner().map_err(|e| e.into_error())?;
        drop(file);
        let mut reader = BufReader::new(File::open(&self.spill_path)?);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = reader.read(&mut buf)?;
            if n == 0 {
                break;
            }
            out(&buf[..n])?;
        }
        std::fs::remove_file(&self.spill_path)?;
        Ok((
            self.at,
            self.column_crc.finalize(),
            RareColumns {
                rows: self.rows,
                offsets: self.offsets,
                blocks: self.blocks,
            },
        ))
    }
}

pub(crate) struct RareColumns {
    pub(crate) rows: Vec<u32>,
    pub(crate) offsets: Vec<u64>,
    pub(crate) blocks: Vec<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dict(names: &[&'static str]) -> Vec<Cow<'static, str>> {
        names.iter().map(|&n| Cow::Borrowed(n)).collect()
    }

    #[test]
    fn the_rarest_names_are_chosen_while_they_fit_the_share() {
        // 100 rows: page 90, order 4, survey 1, ticket 2, 3 without a name.
        let mut codes = vec![0u32; 90];
        codes.extend([1, 1, 1, 1, 2, 3, 3, NO_VALUE, NO_VALUE, NO_VALUE]);
        let (rare, names) = choose(&codes, &dict(&["page", "order", "survey", "ticket"])).unwrap();
        // Budget 5 rows: survey (1) and ticket (2) fit, order (4) would make 7.
        assert_eq!(names, vec!["survey", "ticket"]);
        assert_eq!(rare, vec![false, false, true, true]);
    }

    #[test]
    fn no_copy_when_every_name_is_common() {
        let codes = vec![0u32, 0, 1, 1];
        assert!(choose(&codes, &dict(&["a", "b"])).is_none());
    }
}
