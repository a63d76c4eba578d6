//! The file source for `replay`: one v1 event per line, read in order.
//!
//! Lines are read as bytes, so a line of invalid UTF-8 becomes an `invalid_utf8` reject like it
//! would from Kafka, instead of ending the replay. A line's position is partition 0, offset = its
//! 1-based line number, which is what dead-letter records and logs point at.
//!
//! Lines are read with a bound: at most `max_message_bytes + 1` bytes of a line are ever held, so
//! a hostile 100 MB line costs its length in a counter, not 100 MB of memory. The rest of an
//! over-long line is skipped as it streams past, and the line goes on as an empty payload with its
//! true length, which the pipeline rejects as `oversized` like an over-sized Kafka message
//! (counted, and dead-lettered by line number, never by content).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tokio::sync::mpsc;

use super::{DeadLetterSink, RawMessage, Rejection, SourcePosition};
use crate::export::Metrics;

/// Reads `path` into `output`, line by line, on a blocking thread. Blank lines are skipped.
pub async fn read_lines(
    path: PathBuf,
    output: mpsc::Sender<RawMessage>,
    max_message_bytes: usize,
    metrics: Metrics,
) -> anyhow::Result<u64> {
    tokio::task::spawn_blocking(move || -> anyhow::Result<u64> {
        let file = std::fs::File::open(&path)
            .map_err(|e| anyhow::anyhow!("cannot open input {}: {e}", path.display()))?;
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let mut line = Vec::new();
        let mut line_no = 0i64;
        let mut sent = 0u64;
        loop {
            let Some(read) = read_bounded_line(&mut reader, &mut line, max_message_bytes)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?
            else {
                break;
            };
            line_no += 1;
            if read.blank {
                continue;
            }
            metrics.events_consumed.inc();
            let started = std::time::Instant::now();
            let message = RawMessage {
                original_len: read.len,
                payload: if read.len > max_message_bytes {
                    Vec::new()
                } else {
                    line.clone()
                },
                key: None,
                position: SourcePosition {
                    partition: 0,
                    offset: line_no,
                },
                produced_at_ms: None,
            };
            if output.blocking_send(message).is_err() {
                anyhow::bail!("pipeline stopped before the input was read");
            }
            metrics.observe_stage("source", started.elapsed().as_secs_f64());
            sent += 1;
        }
        Ok(sent)
    })
    .await
    .map_err(|e| anyhow::anyhow!("file reader panicked: {e}"))?
}

/// One line as [`read_bounded_line`] saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LineRead {
    /// The line's full length without its line ending, however much of it was kept.
    len: usize,
    /// Only ASCII whitespace (such lines are skipped, as before).
    blank: bool,
}

/// Reads the next line into `line` (without its `\n` or trailing `\r`s), keeping at most
/// `max_len + 1` bytes of it: enough to tell "fits" from "too long" while never holding an
/// over-long line whole. `None` at end of input.
///
/// Works on the reader's buffer directly (`fill_buf`/`consume`), because `read_until` would grow
/// `line` to the whole line before we could look at its length.
fn read_bounded_line(
    reader: &mut impl BufRead,
    line: &mut Vec<u8>,
    max_len: usize,
) -> std::io::Result<Option<LineRead>> {
    line.clear();
    let keep = max_len.saturating_add(1);
    let mut total = 0usize;
    // Trailing `\r`s seen so far, kept or not: a CRLF file's lines are measured without them.
    let mut trailing_cr = 0usize;
    let mut blank = true;
    let mut read_any = false;
    loop {
        let chunk = match reader.fill_buf() {
            Ok(chunk) => chunk,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if chunk.is_empty() {
            break;
        }
        read_any = true;
        let (part, found_newline) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (&chunk[..i], true),
            None => (chunk, false),
        };
        if blank {
            blank = part.iter().all(u8::is_ascii_whitespace);
        }
        let crs = part.iter().rev().take_while(|&&b| b == b'\r').count();
        trailing_cr = if crs == part.len() {
            trailing_cr + crs
        } else {
            crs
        };
        let room = keep.saturating_sub(line.len());
        line.extend_from_slice(&part[..part.len().min(room)]);
        total = total.saturating_add(part.len());
        let used = part.len() + usize::from(found_newline);
        reader.consume(used);
        if found_newline {
            break;
        }
    }
    if !read_any {
        return Ok(None);
    }
    let len = total - trailing_cr;
    line.truncate(len);
    Ok(Some(LineRead { len, blank }))
}

/// Dead-letter records for replay: JSONL of `{line, reason, error}`. It never copies the rejected
/// line, which may hold raw conversation text; the line number points back into the input.
pub struct FileDeadLetter {
    writer: Option<Mutex<std::io::BufWriter<std::fs::File>>>,
}

impl FileDeadLetter {
    /// `None` logs rejects without writing a file.
    pub fn create(path: Option<&Path>) -> anyhow::Result<Self> {
        let writer = match path {
            Some(p) => Some(Mutex::new(std::io::BufWriter::new(
                std::fs::File::create(p)
                    .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", p.display()))?,
            ))),
            None => None,
        };
        Ok(FileDeadLetter { writer })
    }
}

#[async_trait::async_trait]
impl DeadLetterSink for FileDeadLetter {
    async fn write(&self, message: &RawMessage, rejection: &Rejection) -> anyhow::Result<()> {
        use std::io::Write;
        let Some(writer) = &self.writer else {
            return Ok(());
        };
        let record = serde_json::json!({
            "line": message.position.offset,
            "reason": rejection.reason,
            "error": rejection.detail,
            "bytes": message.original_len,
        });
        let mut w = writer
            .lock()
            .map_err(|_| anyhow::anyhow!("dead-letter writer poisoned"))?;
        writeln!(w, "{record}")?;
        w.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Cursor, Read};

    fn lines(input: &[u8], max_len: usize, buffer: usize) -> Vec<(Vec<u8>, LineRead)> {
        let mut reader = BufReader::with_capacity(buffer, Cursor::new(input.to_vec()));
        let mut line = Vec::new();
        let mut out = Vec::new();
        while let Some(read) = read_bounded_line(&mut reader, &mut line, max_len).unwrap() {
            out.push((line.clone(), read));
        }
        out
    }

    #[test]
    fn lines_come_back_without_their_endings() {
        // A 3-byte reader buffer makes every line span several `fill_buf` chunks.
        for buffer in [3, 1 << 10] {
            let got = lines(b"abc\r\n\n  \t\r\nlast\r\r", 100, buffer);
            let texts: Vec<&[u8]> = got.iter().map(|(l, _)| l.as_slice()).collect();
            assert_eq!(
                texts,
                [&b"abc"[..], b"", b"  \t", b"last"],
                "buffer {buffer}"
            );
            let blanks: Vec<bool> = got.iter().map(|(_, r)| r.blank).collect();
            assert_eq!(blanks, [false, true, true, false]);
            assert_eq!(got[0].1.len, 3);
            assert_eq!(got[3].1.len, 4);
        }
        assert!(lines(b"", 10, 8).is_empty());
    }

    #[test]
    fn an_over_long_line_is_measured_not_kept() {
        let got = lines(b"12345\n123456\r\n1234567890123\nok\n", 5, 4);
        assert_eq!(got[0].0, b"12345");
        assert_eq!(got[0].1.len, 5);
        assert_eq!(got[1].1.len, 6);
        assert_eq!(got[2].1.len, 13);
        assert!(got[2].0.len() <= 6, "kept {} bytes", got[2].0.len());
        assert_eq!(got[3].0, b"ok");
    }

    #[test]
    fn a_100_mb_line_is_never_held_whole() {
        const HUGE: usize = 100 * 1024 * 1024;
        const MAX: usize = 1 << 20;
        // Streamed, never materialised: the test itself must not hold 100 MB either.
        let input = Cursor::new(&b"{\"first\":1}\n"[..])
            .chain(std::io::repeat(b'x').take(HUGE as u64))
            .chain(Cursor::new(&b"\n{\"last\":1}\n"[..]));
        let mut reader = BufReader::with_capacity(1 << 16, input);
        let mut line = Vec::new();
        let mut peak_capacity = 0;
        let mut reads = Vec::new();
        while let Some(read) = read_bounded_line(&mut reader, &mut line, MAX).unwrap() {
            peak_capacity = peak_capacity.max(line.capacity());
            reads.push((read.len, line.len()));
        }
        assert_eq!(reads.len(), 3);
        assert_eq!(reads[1].0, HUGE, "the true length is reported");
        assert!(reads[1].1 <= MAX + 1);
        assert!(
            peak_capacity <= 2 * (MAX + 1),
            "line buffer grew to {peak_capacity} bytes"
        );
        assert_eq!(reads[2], (10, 10));
    }
}
