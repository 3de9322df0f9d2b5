//! Mint audit log (`MACP_AUTH_AUDIT_LOG=stdout`): one JSON line per
//! `POST /tokens` attempt, never containing a bearer token or a minted JWT.
//!
//! Requests hand a serialized line to a bounded channel; one writer thread
//! owns the output, batches whatever is queued and flushes when the queue is
//! empty, so request handlers never contend on the stdout lock. A full queue
//! (stdout stalled) makes minting wait rather than drop audit lines: an
//! unaudited mint is worse than a slow one.

use std::io::Write;

use serde::Serialize;
use serde_json::Value;
use tokio::sync::mpsc;

/// Lines queued before minting waits for the writer.
const QUEUE: usize = 8192;

/// One audit record.
#[derive(Serialize, Debug, Clone)]
pub struct AuditRecord<'a> {
    /// RFC 3339, UTC, milliseconds.
    pub ts: String,
    pub event: &'static str,
    /// `caller-<hash prefix>` with caller authentication on, else `null`.
    pub caller: Option<&'a str>,
    /// The TCP peer address, when known.
    pub client: Option<String>,
    pub sender: Option<&'a str>,
    pub scopes: Option<&'a Value>,
    /// Effective TTL of the token (issued) or that it would have had.
    pub ttl_seconds: Option<u64>,
    pub kid: &'a str,
    pub alg: &'static str,
    pub status: u16,
    /// `issued`, or the error message returned to the caller.
    pub outcome: &'a str,
}

pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Where audit lines go.
#[derive(Debug)]
pub struct AuditLog {
    tx: mpsc::Sender<Vec<u8>>,
}

impl AuditLog {
    /// Starts the writer thread on `out` (stdout in production).
    pub fn spawn<W: Write + Send + 'static>(out: W) -> std::io::Result<AuditLog> {
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(QUEUE);
        std::thread::Builder::new()
            .name("audit-writer".to_string())
            .spawn(move || {
                let mut out = std::io::BufWriter::new(out);
                while let Some(line) = rx.blocking_recv() {
                    let mut ok = out.write_all(&line).is_ok();
                    while let Ok(line) = rx.try_recv() {
                        ok &= out.write_all(&line).is_ok();
                    }
                    ok &= out.flush().is_ok();
                    if !ok {
                        tracing::error!("cannot write the audit log");
                    }
                }
            })?;
        Ok(AuditLog { tx })
    }

    /// Queues one record (waits if the writer is behind).
    pub async fn record(&self, record: &AuditRecord<'_>) {
        let mut line = match serde_json::to_vec(record) {
            Ok(line) => line,
            Err(e) => {
                tracing::error!(error = %e, "cannot serialize an audit record");
                return;
            }
        };
        line.push(b'\n');
        if self.tx.send(line).await.is_err() {
            tracing::error!("audit writer stopped; audit line lost");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use parking_lot::Mutex;

    use serde_json::json;

    use super::*;

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn writes_one_json_line_per_record() {
        let out = Shared::default();
        let log = AuditLog::spawn(out.clone()).unwrap();
        let scopes = json!({"read": true});
        for outcome in ["issued", "sender is required"] {
            log.record(&AuditRecord {
                ts: now_rfc3339(),
                event: "mint",
                caller: Some("caller-0123abcd"),
                client: Some("127.0.0.1:5000".into()),
                sender: Some("agent-1"),
                scopes: Some(&scopes),
                ttl_seconds: Some(300),
                kid: "k1",
                alg: "ES256",
                status: 200,
                outcome,
            })
            .await;
        }
        let text = loop {
            let text = String::from_utf8(out.0.lock().clone()).unwrap();
            if text.lines().count() == 2 {
                break text;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        };
        let first: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(first["caller"], "caller-0123abcd");
        assert_eq!(first["scopes"], scopes);
        assert_eq!(first["outcome"], "issued");
        assert!(
            chrono::DateTime::parse_from_rfc3339(first["ts"].as_str().unwrap()).is_ok(),
            "{first}"
        );
    }
}
