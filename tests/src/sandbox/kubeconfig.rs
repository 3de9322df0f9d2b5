//! The kubeconfig the sandbox writes: what `kubectl`, `helm` and the operator's
//! pods use to reach its API server.
//!
//! Plain HTTP without credentials: the fake API server speaks HTTP only and
//! treats an unauthenticated client as a cluster admin (tests/README.md).

use std::path::Path;

/// Context, cluster and user name in the kubeconfig.
pub const CONTEXT: &str = "macp-sandbox";

/// A kubeconfig for `server` (`http://127.0.0.1:<port>`) with namespace `namespace`.
pub fn render(server: &str, namespace: &str) -> String {
    // serde_json renders valid YAML scalars for any string (JSON is YAML).
    let q = |s: &str| serde_json::Value::from(s).to_string();
    format!(
        "apiVersion: v1\n\
         kind: Config\n\
         clusters:\n\
         - name: {c}\n  cluster:\n    server: {server}\n\
         users:\n\
         - name: {c}\n  user: {{}}\n\
         contexts:\n\
         - name: {c}\n  context:\n    cluster: {c}\n    user: {c}\n    namespace: {ns}\n\
         current-context: {c}\n\
         preferences: {{}}\n",
        c = q(CONTEXT),
        server = q(server),
        ns = q(namespace),
    )
}

/// Writes the kubeconfig to `path`, readable by its owner only (kubectl warns
/// about group- or world-readable ones).
pub fn write(path: &Path, server: &str, namespace: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(render(server, namespace).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kube_reads_it() {
        let yaml = render("http://127.0.0.1:6443", "macp");
        let kc: kube::config::Kubeconfig = serde_yaml::from_str(&yaml).unwrap();
        assert_eq!(kc.current_context.as_deref(), Some(CONTEXT));
        let cluster = kc.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(cluster.server.as_deref(), Some("http://127.0.0.1:6443"));
        let ctx = kc.contexts[0].context.as_ref().unwrap();
        assert_eq!(ctx.namespace.as_deref(), Some("macp"));
    }
}
