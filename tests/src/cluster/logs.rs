//! Pod logs for the API server's `pods/{name}/log` ([`PodLogs`]): what each
//! pod's process printed on stdout and stderr, as the kubelet captured it.
//!
//! Simplifications: one log per pod, not per container instance, so a
//! restarted process's output follows its predecessor's after a
//! `[kubelet] process exited` line (`--previous` returns the same log);
//! only the last [`super::kubelet::LOG_LINES`] lines are kept; no timestamps.

use std::sync::Weak;

use crate::apiserver::{LogOptions, PodLogs};

use super::Inner;

/// The simulated kubelet as the API server's log source. Weak: the server
/// outlives nothing it serves, and the cluster holds the server's handle.
pub(super) struct ClusterLogs(pub(super) Weak<Inner>);

impl PodLogs for ClusterLogs {
    fn logs(
        &self,
        namespace: &str,
        pod: &str,
        container: Option<&str>,
        _opts: &LogOptions,
    ) -> Option<Vec<u8>> {
        let inner = self.0.upgrade()?;
        let st = inner.state.lock();
        let entry = st.pods.get(&(namespace.to_string(), pod.to_string()))?;
        // Only the first container runs; another name is not a container here.
        if let Some(c) = container
            && c != entry.container_name
        {
            return None;
        }
        let mut out = Vec::new();
        for line in entry.logs.lock().iter() {
            out.extend_from_slice(line.as_bytes());
            out.push(b'\n');
        }
        Some(out)
    }
}
