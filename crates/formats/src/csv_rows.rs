//! CSV with a header row, laid out by the shared column mapping (see [`crate::mapping`]).
//!
//! Rows are numbered by the line they start on, the header being line 1, which is what an
//! editor or a spreadsheet shows next to them.

use std::borrow::Cow;
use std::io::{Read, Write};

use csv::{ByteRecord, ErrorKind};
use serde_json::Value;

use crate::mapping::{export_cells, Cell, Plan, COLUMNS};
use crate::{ExportRow, FormatError, RowError};

pub(crate) struct CsvWriter<W: Write> {
    out: csv::Writer<W>,
}

impl<W: Write> CsvWriter<W> {
    pub(crate) fn new(out: W) -> Result<CsvWriter<W>, FormatError> {
        let mut out = csv::Writer::from_writer(out);
        out.write_record(COLUMNS)?;
        Ok(CsvWriter { out })
    }

    pub(crate) fn write(&mut self, row: ExportRow<'_>) -> Result<(), FormatError> {
        let cells = export_cells(&row);
        self.out
            .write_record(cells.iter().map(|c| c.as_deref().unwrap_or_default()))?;
        Ok(())
    }

    pub(crate) fn finish(self) -> Result<W, FormatError> {
        Ok(self.out.into_inner().map_err(|e| e.into_error())?)
    }
}

/// The messages of a CSV stream, numbered by the line each record starts on.
pub(crate) struct CsvReader<R: Read> {
    input: csv::Reader<R>,
    plan: Plan,
    record: ByteRecord,
    done: bool,
}

impl<R: Read> CsvReader<R> {
    pub(crate) fn new(input: R) -> Result<CsvReader<R>, FormatError> {
        let mut input = csv::ReaderBuilder::new()
            .has_headers(true)
            .from_reader(input);
        let header = input.byte_headers()?.clone();
        let names = header
            .iter()
            .map(|name| {
                std::str::from_utf8(name)
                    .map_err(|_| FormatError::CsvHeader("a column name is not utf-8".into()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let plan = Plan::new(names)?;
        Ok(CsvReader {
            input,
            plan,
            record: ByteRecord::new(),
            done: false,
        })
    }

    fn message(&self) -> Result<Value, RowError> {
        let mut cells = Vec::with_capacity(self.record.len());
        for (index, cell) in self.record.iter().enumerate() {
            let text = std::str::from_utf8(cell)
                .map_err(|_| RowError::column(self.plan.name(index), "not valid utf-8"))?;
            cells.push(Cell::Text(Cow::Borrowed(text)));
        }
        self.plan.message(cells)
    }
}

impl<R: Read> Iterator for CsvReader<R> {
    type Item = (u64, Result<Value, RowError>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.input.read_byte_record(&mut self.record) {
            Ok(false) => {
                self.done = true;
                None
            }
            Ok(true) => {
                let line = self.record.position().map_or(0, |p| p.line());
                Some((line, self.message()))
            }
            Err(e) => {
                let line = e.position().map_or(0, |p| p.line());
                match e.kind() {
                    // The record was read whole, so the next one starts cleanly.
                    ErrorKind::UnequalLengths { len, .. } => {
                        let expected = self.plan.len() as u64;
                        let found = *len;
                        Some((line, Err(RowError::CellCount { expected, found })))
                    }
                    _ => {
                        self.done = true;
                        Some((line, Err(RowError::Unreadable(e.to_string()))))
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn read(text: &str) -> Vec<(u64, Result<Value, RowError>)> {
        CsvReader::new(text.as_bytes()).unwrap().collect()
    }

    #[test]
    fn invalid_json_in_properties_names_the_column_and_spares_the_other_rows() {
        let text = "type,event,properties\n\
                    track,A,\"{\"\"n\"\":1}\"\n\
                    track,B,{not json\n\
                    track,C,\n";
        let rows = read(text);
        assert_eq!(rows.len(), 3);
        assert_eq!(
            rows[0],
            (
                2,
                Ok(json!({"type": "track", "event": "A", "properties": {"n": 1}}))
            )
        );
        let (line, Err(RowError::Column { column, reason })) = &rows[1] else {
            panic!("{:?}", rows[1])
        };
        assert_eq!((*line, column.as_str()), (3, "properties"));
        assert!(reason.starts_with("invalid json"), "{reason}");
        assert_eq!(rows[2], (4, Ok(json!({"type": "track", "event": "C"}))));
    }

    #[test]
    fn a_row_with_the_wrong_number_of_cells_is_rejected_alone() {
        let rows = read("type,event\ntrack,A\ntrack,B,extra\ntrack,C\n");
        assert_eq!(
            rows,
            vec![
                (2, Ok(json!({"type": "track", "event": "A"}))),
                (
                    3,
                    Err(RowError::CellCount {
                        expected: 2,
                        found: 3
                    })
                ),
                (4, Ok(json!({"type": "track", "event": "C"}))),
            ]
        );
    }

    #[test]
    fn quoted_newlines_keep_the_line_numbers_of_record_starts() {
        let rows = read("\u{feff}type,properties.note\ntrack,\"two\nlines\"\nidentify,x\n");
        assert_eq!(
            rows,
            vec![
                (
                    2,
                    Ok(json!({"type": "track", "properties": {"note": "two\nlines"}}))
                ),
                (
                    4,
                    Ok(json!({"type": "identify", "properties": {"note": "x"}}))
                ),
            ]
        );
    }

    #[test]
    fn an_unknown_column_fails_before_any_row() {
        let err = CsvReader::new("type,user_id\ntrack,u\n".as_bytes()).err();
        assert!(
            matches!(&err, Some(FormatError::UnknownColumn(c)) if c == "user_id"),
            "{err:?}"
        );
    }
}
