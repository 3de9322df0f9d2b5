//! What a container's process gets: the arguments of the container spec and a
//! pod's view of the network and the API server.
//!
//! Every pod shares the machine's network here, so "listen on every address"
//! would collide across pods (and with the sandbox's own listeners). A pod on
//! a real node has a network namespace of its own, where `0.0.0.0:8080` means
//! its pod IP; the kubelet reproduces that by narrowing wildcard addresses in
//! the arguments and environment to the pod IP. And where a real pod gets a
//! service account token and `KUBERNETES_SERVICE_HOST`, a simulated one gets
//! `KUBECONFIG` naming a kubeconfig for the API server (unless its spec sets
//! `automountServiceAccountToken: false`).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;

use serde_json::Value;

/// The container's `args`. Its `command` would replace the image's entrypoint;
/// here the entrypoint is the mapped executable, so `command` is not run.
pub fn container_args(container: &Value, ip: Ipv4Addr) -> Vec<String> {
    container
        .get("args")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|a| narrow_wildcard(a, ip))
        .collect()
}

/// `0.0.0.0`, `0.0.0.0:<port>`, `[::]:<port>` and `:<port>` become the pod IP
/// (with the port); anything else is kept.
pub fn narrow_wildcard(value: &str, ip: Ipv4Addr) -> String {
    if value == "0.0.0.0" || value == "::" {
        return ip.to_string();
    }
    for prefix in ["0.0.0.0:", "[::]:", ":"] {
        if let Some(port) = value.strip_prefix(prefix)
            && !port.is_empty()
            && port.bytes().all(|b| b.is_ascii_digit())
        {
            return format!("{ip}:{port}");
        }
    }
    value.to_string()
}

/// The process environment: the resolved container env with wildcard addresses
/// narrowed, plus `KUBECONFIG` when the pod may reach the API server.
pub fn process_env(
    mut env: BTreeMap<String, String>,
    ip: Ipv4Addr,
    kubeconfig: Option<&Path>,
    pod_spec: &Value,
) -> BTreeMap<String, String> {
    for v in env.values_mut() {
        *v = narrow_wildcard(v, ip);
    }
    let automount = pod_spec
        .get("automountServiceAccountToken")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    if let Some(path) = kubeconfig
        && automount
    {
        env.insert("KUBECONFIG".into(), path.display().to_string());
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 7);

    #[test]
    fn wildcards_become_the_pod_ip() {
        for (v, want) in [
            ("0.0.0.0:8080", "127.0.0.7:8080"),
            ("[::]:8080", "127.0.0.7:8080"),
            (":9000", "127.0.0.7:9000"),
            ("0.0.0.0", "127.0.0.7"),
            ("127.0.0.1:8080", "127.0.0.1:8080"),
            ("0.0.0.0:http", "0.0.0.0:http"),
            (":", ":"),
            ("run", "run"),
        ] {
            assert_eq!(narrow_wildcard(v, IP), want, "{v}");
        }
        let c = json!({"command": ["/op"], "args": ["run", "--listen-address", "0.0.0.0:8080", 3]});
        assert_eq!(
            container_args(&c, IP),
            ["run", "--listen-address", "127.0.0.7:8080"]
        );
        assert!(container_args(&json!({}), IP).is_empty());
    }

    #[test]
    fn kubeconfig_unless_the_pod_opts_out() {
        let env = BTreeMap::from([("LISTEN".to_string(), "0.0.0.0:1".to_string())]);
        let kc = Path::new("/tmp/kc");
        let on = process_env(env.clone(), IP, Some(kc), &json!({}));
        assert_eq!(on["KUBECONFIG"], "/tmp/kc");
        assert_eq!(on["LISTEN"], "127.0.0.7:1");
        let off = process_env(
            env.clone(),
            IP,
            Some(kc),
            &json!({"automountServiceAccountToken": false}),
        );
        assert!(!off.contains_key("KUBECONFIG"));
        assert!(!process_env(env, IP, None, &json!({})).contains_key("KUBECONFIG"));
    }
}
