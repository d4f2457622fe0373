//! ClickHouse's RowBinary format, the one binary row format every version here speaks
//! (18.16 has no Arrow or Parquet): little-endian integers, strings as a LEB128 length and
//! bytes, `Nullable` as a flag byte before the value.
//!
//! Owns encoding and decoding only; which columns a row has is the caller's business.

use std::io::{BufRead, BufReader, Read};

use crate::ClickHouseError;

/// One string or column value read at most: a longer length can only be a damaged stream.
const VALUE_BYTES_MAX: u64 = 64 << 20;

/// Rows being encoded for one INSERT.
#[derive(Default)]
pub struct Writer {
    pub buf: Vec<u8>,
}

impl Writer {
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    pub fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn i64(&mut self, v: i64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn bytes(&mut self, v: &[u8]) {
        let mut n = v.len() as u64;
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                self.buf.push(byte);
                break;
            }
            self.buf.push(byte | 0x80);
        }
        self.buf.extend_from_slice(v);
    }
    pub fn str(&mut self, v: &str) {
        self.bytes(v.as_bytes());
    }
    pub fn opt_str(&mut self, v: Option<&str>) {
        match v {
            None => self.buf.push(1),
            Some(s) => {
                self.buf.push(0);
                self.str(s);
            }
        }
    }
    /// `FixedString(N)`: exactly the bytes, no length.
    pub fn fixed(&mut self, v: &[u8]) {
        self.buf.extend_from_slice(v);
    }
}

/// Decodes RowBinary from a stream.
pub struct Reader<R: Read> {
    inner: BufReader<R>,
}

impl<R: Read> Reader<R> {
    pub fn new(inner: R) -> Reader<R> {
        Reader {
            inner: BufReader::with_capacity(1 << 20, inner),
        }
    }

    /// Whether the stream has ended cleanly between rows.
    pub fn at_end(&mut self) -> Result<bool, ClickHouseError> {
        Ok(self.inner.fill_buf().map_err(read_error)?.is_empty())
    }

    fn exact<const N: usize>(&mut self) -> Result<[u8; N], ClickHouseError> {
        let mut b = [0u8; N];
        self.inner.read_exact(&mut b).map_err(read_error)?;
        Ok(b)
    }

    pub fn u8(&mut self) -> Result<u8, ClickHouseError> {
        Ok(self.exact::<1>()?[0])
    }
    pub fn u32(&mut self) -> Result<u32, ClickHouseError> {
        Ok(u32::from_le_bytes(self.exact()?))
    }
    pub fn u64(&mut self) -> Result<u64, ClickHouseError> {
        Ok(u64::from_le_bytes(self.exact()?))
    }
    pub fn i64(&mut self) -> Result<i64, ClickHouseError> {
        Ok(i64::from_le_bytes(self.exact()?))
    }
    pub fn f64(&mut self) -> Result<f64, ClickHouseError> {
        Ok(f64::from_le_bytes(self.exact()?))
    }

    fn len(&mut self) -> Result<usize, ClickHouseError> {
        let mut n = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            n |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                if n > VALUE_BYTES_MAX {
                    return Err(ClickHouseError::Decode(format!(
                        "a value of {n} bytes in a RowBinary stream (damaged, or an error message: {})",
                        self.peek_text()
                    )));
                }
                return Ok(n as usize);
            }
        }
        Err(ClickHouseError::Decode(
            "a length longer than 64 bits".into(),
        ))
    }

    pub fn bytes_into(&mut self, out: &mut Vec<u8>) -> Result<(), ClickHouseError> {
        let n = self.len()?;
        out.clear();
        out.resize(n, 0);
        self.inner.read_exact(out).map_err(read_error)
    }

    pub fn string(&mut self) -> Result<String, ClickHouseError> {
        let mut v = Vec::new();
        self.bytes_into(&mut v)?;
        String::from_utf8(v)
            .map_err(|e| ClickHouseError::Decode(format!("a string is not UTF-8: {e}")))
    }

    pub fn opt_string(&mut self) -> Result<Option<String>, ClickHouseError> {
        if self.u8()? != 0 {
            return Ok(None);
        }
        self.string().map(Some)
    }

    pub fn fixed<const N: usize>(&mut self) -> Result<[u8; N], ClickHouseError> {
        self.exact()
    }

    /// What the stream holds next, as text: a server error that arrived mid-stream.
    fn peek_text(&mut self) -> String {
        let buf = self.inner.fill_buf().unwrap_or_default();
        String::from_utf8_lossy(&buf[..buf.len().min(300)]).into_owned()
    }
}

fn read_error(e: std::io::Error) -> ClickHouseError {
    ClickHouseError::Decode(format!("reading a RowBinary stream: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip() {
        let mut w = Writer::default();
        w.u8(7);
        w.u32(70_000);
        w.i64(-5);
        w.str(&"x".repeat(300));
        w.opt_str(None);
        w.opt_str(Some("ü"));
        w.fixed(&[1; 16]);
        let mut r = Reader::new(&w.buf[..]);
        assert_eq!(r.u8().unwrap(), 7);
        assert_eq!(r.u32().unwrap(), 70_000);
        assert_eq!(r.i64().unwrap(), -5);
        assert_eq!(r.string().unwrap(), "x".repeat(300));
        assert_eq!(r.opt_string().unwrap(), None);
        assert_eq!(r.opt_string().unwrap().as_deref(), Some("ü"));
        assert_eq!(r.fixed::<16>().unwrap(), [1; 16]);
        assert!(r.at_end().unwrap());
    }

    #[test]
    fn a_truncated_stream_is_an_error_not_a_row() {
        let mut w = Writer::default();
        w.str("hello");
        let mut r = Reader::new(&w.buf[..3]);
        assert!(r.string().is_err());
    }
}
