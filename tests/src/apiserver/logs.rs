//! `GET /api/v1/namespaces/{ns}/pods/{name}/log`: container output from a
//! source the harness plugs in ([`PodLogs`]), since the store holds objects,
//! not processes.
//!
//! The hook returns everything a container has printed so far; the server
//! applies `tailLines` and `limitBytes` and, for `follow=true`, keeps polling
//! the hook and streams what was appended, like the kubelet's log endpoint.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{StatusCode, header};
use axum::response::Response;
use tokio::sync::mpsc;

use super::error::ApiError;
use super::server::{Shared, until};

/// How often a `follow` stream asks the hook for new output.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

/// The query parameters of a log request that a source may care about.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogOptions {
    /// `container`: absent means the pod's only (or first) container.
    pub container: Option<String>,
    /// `tailLines` (applied by the server to what the source returns).
    pub tail_lines: Option<usize>,
    /// `limitBytes` (applied by the server).
    pub limit_bytes: Option<usize>,
    /// `follow=true`: the server polls the source for appended output.
    pub follow: bool,
    /// `previous=true`: the output of the previous (crashed) instance.
    pub previous: bool,
    /// `timestamps=true`: a source that keeps timestamps may prefix each line.
    pub timestamps: bool,
}

impl LogOptions {
    fn from_query(q: &HashMap<String, String>) -> Result<Self, ApiError> {
        let num = |k: &str| -> Result<Option<usize>, ApiError> {
            q.get(k)
                .map(|v| {
                    v.parse::<usize>()
                        .map_err(|_| ApiError::bad_request(format!("invalid {k} {v:?}")))
                })
                .transpose()
        };
        let flag = |k: &str| q.get(k).is_some_and(|v| v == "true" || v == "1");
        Ok(Self {
            container: q.get("container").filter(|c| !c.is_empty()).cloned(),
            tail_lines: num("tailLines")?,
            limit_bytes: num("limitBytes")?,
            follow: flag("follow"),
            previous: flag("previous"),
            timestamps: flag("timestamps"),
        })
    }
}

/// Where pod logs come from (the simulated kubelet, or a test's fake).
pub trait PodLogs: Send + Sync {
    /// Everything `container` (None: the default container) of pod
    /// `namespace/pod` has printed so far, or None when the source knows no
    /// such pod or container (the server answers 404). Called again on every
    /// poll of a `follow` stream, so it must be cheap and append-only.
    fn logs(
        &self,
        namespace: &str,
        pod: &str,
        container: Option<&str>,
        opts: &LogOptions,
    ) -> Option<Vec<u8>>;
}

/// The last `n` lines of `out` (a final line without newline counts).
fn tail(out: &[u8], n: usize) -> &[u8] {
    if n == 0 {
        return &[];
    }
    let body = out.strip_suffix(b"\n").unwrap_or(out);
    let mut seen = 0;
    for (i, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            seen += 1;
            if seen == n {
                return &out[i + 1..];
            }
        }
    }
    out
}

/// Serves one log request; the pod itself must exist in the store.
pub(crate) fn serve(
    shared: &Arc<Shared>,
    ns: &str,
    pod: &str,
    query: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    let opts = LogOptions::from_query(query)?;
    let source = shared.pod_logs.lock().clone();
    let not_found = || {
        let what = match &opts.container {
            Some(c) => format!("container {c:?} in pod {pod:?}"),
            None => format!("pod {pod:?}"),
        };
        ApiError::not_found_message(format!("no logs for {what} in namespace {ns:?}"))
    };
    let source = source.ok_or_else(not_found)?;
    let out = source
        .logs(ns, pod, opts.container.as_deref(), &opts)
        .ok_or_else(not_found)?;
    let mut first = match opts.tail_lines {
        Some(n) => tail(&out, n).to_vec(),
        None => out.clone(),
    };
    if let Some(limit) = opts.limit_bytes {
        first.truncate(limit);
    }
    let ok = |body: Body| {
        Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "text/plain")
            .body(body)
            .map_err(|e| ApiError::unavailable(format!("cannot build log response: {e}")))
    };
    if !opts.follow {
        return ok(Body::from(first));
    }
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    tokio::spawn(follow(
        shared.clone(),
        source,
        (ns.to_string(), pod.to_string()),
        opts,
        out.len(),
        first,
        tx,
    ));
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    ok(Body::from_stream(stream))
}

/// Streams appended output until the client goes, the source forgets the pod,
/// or the server shuts down.
async fn follow(
    shared: Arc<Shared>,
    source: Arc<dyn PodLogs>,
    (ns, pod): (String, String),
    opts: LogOptions,
    mut sent: usize,
    first: Vec<u8>,
    tx: mpsc::Sender<Bytes>,
) {
    let mut shutdown = shared.shutdown.subscribe();
    if !first.is_empty() && tx.send(Bytes::from(first)).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            _ = tokio::time::sleep(FOLLOW_POLL) => {}
            _ = until(&mut shutdown, true) => return,
            _ = tx.closed() => return,
        }
        let Some(out) = source.logs(&ns, &pod, opts.container.as_deref(), &opts) else {
            return;
        };
        // A restarted container starts a new log: send it from the start.
        if out.len() < sent {
            sent = 0;
        }
        if out.len() > sent {
            let chunk = Bytes::copy_from_slice(&out[sent..]);
            sent = out.len();
            if tx.send(chunk).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_counts_lines_from_the_end() {
        let out = b"a\nb\nc\n";
        assert_eq!(tail(out, 1), b"c\n");
        assert_eq!(tail(out, 2), b"b\nc\n");
        assert_eq!(tail(out, 9), out);
        assert_eq!(tail(out, 0), b"");
        assert_eq!(tail(b"a\nb", 1), b"b");
    }

    #[test]
    fn options_from_query() {
        let q: HashMap<String, String> =
            [("tailLines", "3"), ("container", "c"), ("follow", "true")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        let o = LogOptions::from_query(&q).unwrap();
        assert_eq!(o.tail_lines, Some(3));
        assert_eq!(o.container.as_deref(), Some("c"));
        assert!(o.follow && !o.previous);
        let bad: HashMap<String, String> = [("tailLines".to_string(), "x".to_string())].into();
        assert_eq!(LogOptions::from_query(&bad).unwrap_err().code, 400);
    }
}
