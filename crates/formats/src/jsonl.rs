//! JSON Lines: one Segment message per line, the shape of Segment's own archives.
//!
//! Export writes `Event::to_segment_json` plus `person_id`; import parses each line as a
//! JSON object and never lets a bad line stop the lines after it. Import drops
//! `person_id` and `receivedAt`, as CSV and Parquet do: the server computes them.

use std::io::{self, BufRead, BufWriter, Write};

use serde_json::Value;

use crate::mapping::{kind, SERVER_FIELDS};
use crate::{ExportRow, FormatError, RowError};

/// Bounds one imported line, so a file without newlines cannot take all memory. Segment
/// itself caps a message at 32 KiB; this leaves room for generous exports.
pub const LINE_BYTES_MAX: usize = 16 * 1024 * 1024;

pub(crate) struct JsonlWriter<W: Write> {
    out: BufWriter<W>,
}

impl<W: Write> JsonlWriter<W> {
    pub(crate) fn new(out: W) -> JsonlWriter<W> {
        JsonlWriter {
            out: BufWriter::new(out),
        }
    }

    pub(crate) fn write(&mut self, row: ExportRow<'_>) -> Result<(), FormatError> {
        let mut message = row.event.to_segment_json();
        message.insert("person_id".into(), Value::String(row.person_id.into()));
        serde_json::to_writer(&mut self.out, &message)?;
        self.out.write_all(b"\n")?;
        Ok(())
    }

    pub(crate) fn finish(self) -> Result<W, FormatError> {
        Ok(self.out.into_inner().map_err(|e| e.into_error())?)
    }
}

/// The messages of a JSONL stream, numbered by line.
pub(crate) struct JsonlReader<R: BufRead> {
    input: R,
    line_bytes_max: usize,
    line: u64,
    buf: Vec<u8>,
    done: bool,
}

impl<R: BufRead> JsonlReader<R> {
    pub(crate) fn new(input: R, line_bytes_max: usize) -> JsonlReader<R> {
        JsonlReader {
            input,
            line_bytes_max,
            line: 0,
            buf: Vec::new(),
            done: false,
        }
    }
}

impl<R: BufRead> Iterator for JsonlReader<R> {
    type Item = (u64, Result<Value, RowError>);

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            self.buf.clear();
            let read = read_line(&mut self.input, &mut self.buf, self.line_bytes_max);
            self.line += 1;
            match read {
                Ok(Line::End) => self.done = true,
                Ok(Line::TooLong) => {
                    return Some((self.line, Err(RowError::LineTooLong(self.line_bytes_max))))
                }
                Ok(Line::Read) => {
                    let mut text = self.buf.as_slice();
                    if self.line == 1 {
                        text = text.strip_prefix(b"\xef\xbb\xbf").unwrap_or(text);
                    }
                    if text.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    return Some((self.line, parse(text)));
                }
                // A stream that fails mid-way (a truncated gzip) cannot be resynchronised.
                Err(e) => {
                    self.done = true;
                    return Some((self.line, Err(RowError::Unreadable(e.to_string()))));
                }
            }
        }
        None
    }
}

fn parse(line: &[u8]) -> Result<Value, RowError> {
    match serde_json::from_slice::<Value>(line) {
        Ok(Value::Object(mut message)) => {
            for field in SERVER_FIELDS {
                message.remove(field);
            }
            Ok(Value::Object(message))
        }
        Ok(other) => Err(RowError::NotObject(kind(&other))),
        Err(e) => Err(RowError::Json(e.to_string())),
    }
}

enum Line {
    Read,
    TooLong,
    End,
}

/// Reads one line into `buf` without its newline, keeping at most `max` bytes: past that
/// the rest of the line is skipped rather than buffered.
fn read_line<R: BufRead>(input: &mut R, buf: &mut Vec<u8>, max: usize) -> io::Result<Line> {
    let mut any = false;
    let mut too_long = false;
    loop {
        let available = match input.fill_buf() {
            Ok(available) => available,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            break;
        }
        any = true;
        let newline = available.iter().position(|&b| b == b'\n');
        let content = newline.unwrap_or(available.len());
        if !too_long {
            if buf.len() + content > max {
                too_long = true;
                buf.clear();
            } else {
                buf.extend_from_slice(&available[..content]);
            }
        }
        let used = newline.map_or(content, |at| at + 1);
        input.consume(used);
        if newline.is_some() {
            break;
        }
    }
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    Ok(match (any, too_long) {
        (false, _) => Line::End,
        (true, true) => Line::TooLong,
        (true, false) => Line::Read,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn read(text: &str, max: usize) -> Vec<(u64, Result<Value, RowError>)> {
        JsonlReader::new(text.as_bytes(), max).collect()
    }

    #[test]
    fn a_malformed_line_in_the_middle_keeps_its_neighbours_and_their_line_numbers() {
        let text = "{\"type\":\"track\",\"event\":\"A\"}\n\
                    {\"type\":\"track\",\"event\":\n\
                    \n\
                    [1,2]\r\n\
                    {\"type\":\"page\",\"name\":\"Home\",\"person_id\":\"p\",\"receivedAt\":\"x\"}";
        let rows = read(text, LINE_BYTES_MAX);
        assert_eq!(rows.len(), 4, "{rows:?}");
        assert_eq!(rows[0], (1, Ok(json!({"type": "track", "event": "A"}))));
        assert_eq!(rows[1].0, 2);
        let Err(RowError::Json(message)) = &rows[1].1 else {
            panic!("{:?}", rows[1])
        };
        assert!(message.contains("EOF while parsing"), "{message}");
        assert_eq!(rows[2], (4, Err(RowError::NotObject("an array"))));
        // person_id and receivedAt are the server's to compute.
        assert_eq!(rows[3], (5, Ok(json!({"type": "page", "name": "Home"}))));
    }

    #[test]
    fn an_overlong_line_is_skipped_not_buffered() {
        let text = "{\"a\":1}\n{\"b\":\"0123456789\"}\n{\"c\":3}\n";
        let rows = read(text, 12);
        assert_eq!(
            rows,
            vec![
                (1, Ok(json!({"a": 1}))),
                (2, Err(RowError::LineTooLong(12))),
                (3, Ok(json!({"c": 3}))),
            ]
        );
    }

    #[test]
    fn a_byte_order_mark_and_blank_lines_are_not_rows() {
        let rows = read("\u{feff}{\"a\":1}\n  \n\n{\"b\":2}\n\n", LINE_BYTES_MAX);
        assert_eq!(
            rows,
            vec![(1, Ok(json!({"a": 1}))), (4, Ok(json!({"b": 2})))]
        );
    }
}
