//! The file source for `replay`: one v1 event per line, read in order.
//!
//! Lines are read as bytes, so a line of invalid UTF-8 becomes an `invalid_utf8` reject like it
//! would from Kafka, instead of ending the replay. A line's position is partition 0, offset = its
//! 1-based line number, which is what dead-letter records and logs point at.

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
            line.clear();
            let n = reader
                .read_until(b'\n', &mut line)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
            if n == 0 {
                break;
            }
            line_no += 1;
            while matches!(line.last(), Some(b'\n' | b'\r')) {
                line.pop();
            }
            if line.iter().all(|b| b.is_ascii_whitespace()) {
                continue;
            }
            metrics.events_consumed.inc();
            let message = RawMessage {
                original_len: line.len(),
                payload: if line.len() > max_message_bytes {
                    Vec::new()
                } else {
                    line.clone()
                },
                key: None,
                position: SourcePosition {
                    partition: 0,
                    offset: line_no,
                },
            };
            if output.blocking_send(message).is_err() {
                anyhow::bail!("pipeline stopped before the input was read");
            }
            sent += 1;
        }
        Ok(sent)
    })
    .await
    .map_err(|e| anyhow::anyhow!("file reader panicked: {e}"))?
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
