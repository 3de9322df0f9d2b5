//! Secret volumes, as far as the simulated kubelet needs them: a pod's
//! processes share the machine's filesystem, so each Secret volume a container
//! mounts is written to a directory of its own and the container's environment
//! values that name a path under the mount point are rewritten to point there.
//! (Written once at container start: the real kubelet's refresh of a changed
//! Secret is not simulated.)

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// One mounted Secret volume: where the container expects it, and its files
/// (path relative to the mount point, content).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretMount {
    pub volume: String,
    pub mount_path: String,
    pub files: Vec<(String, String)>,
}

/// The Secret volumes `container` mounts, with their files. `secret` returns a
/// Secret's decoded data. A missing non-optional Secret or key is an error, as
/// the kubelet's `FailedMount`.
pub fn secret_mounts(
    container: &Value,
    volumes: &Value,
    secret: impl Fn(&str) -> Option<BTreeMap<String, String>>,
) -> Result<Vec<SecretMount>, String> {
    let mut out = Vec::new();
    for mount in container
        .get("volumeMounts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = mount
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let mount_path = mount
            .get("mountPath")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let Some(source) = volumes
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v.get("name").and_then(Value::as_str) == Some(name))
            .and_then(|v| v.get("secret"))
        else {
            continue;
        };
        let secret_name = source
            .get("secretName")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let optional = source
            .get("optional")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let Some(data) = secret(secret_name) else {
            if optional {
                continue;
            }
            return Err(format!("volume {name}: secret {secret_name:?} not found"));
        };
        let files = match source.get("items").and_then(Value::as_array) {
            None => data.into_iter().collect(),
            Some(items) => {
                let mut files = Vec::new();
                for item in items {
                    let key = item.get("key").and_then(Value::as_str).unwrap_or_default();
                    let path = item.get("path").and_then(Value::as_str).unwrap_or(key);
                    match data.get(key) {
                        Some(v) => files.push((path.to_string(), v.clone())),
                        None if optional => {}
                        None => {
                            return Err(format!(
                                "volume {name}: secret {secret_name:?} has no key {key:?}"
                            ));
                        }
                    }
                }
                files
            }
        };
        out.push(SecretMount {
            volume: name.to_string(),
            mount_path: mount_path.to_string(),
            files,
        });
    }
    Ok(out)
}

/// Rewrites every value under a mount point to the same path under its host
/// directory (`mounts`: mount path, host directory).
pub fn rewrite_paths(env: &mut BTreeMap<String, String>, mounts: &[(String, PathBuf)]) {
    for value in env.values_mut() {
        for (mount_path, host) in mounts {
            let Some(rest) = value.strip_prefix(mount_path.as_str()) else {
                continue;
            };
            if rest.is_empty() || rest.starts_with('/') {
                let joined = host.join(rest.trim_start_matches('/'));
                *value = joined.to_string_lossy().into_owned();
                break;
            }
        }
    }
}

/// Writes `mounts` under `root` (one directory per volume); returns the
/// (mount path, host directory) pairs for [`rewrite_paths`].
pub fn write_mounts(
    root: &Path,
    mounts: &[SecretMount],
) -> std::io::Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for m in mounts {
        let dir = root.join(&m.volume);
        std::fs::create_dir_all(&dir)?;
        for (path, content) in &m.files {
            let file = dir.join(path);
            if let Some(parent) = file.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(file, content)?;
        }
        out.push((m.mount_path.clone(), dir));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lookup(name: &str) -> Option<BTreeMap<String, String>> {
        (name == "callers").then(|| BTreeMap::from([("tokens".to_string(), "t1\n".to_string())]))
    }

    #[test]
    fn mounts_secret_items_and_rewrites_env_paths() {
        let container = json!({"volumeMounts": [
            {"name": "callers", "mountPath": "/etc/macp-auth/callers", "readOnly": true},
            {"name": "scratch", "mountPath": "/tmp"}
        ]});
        let volumes = json!([
            {"name": "callers", "secret": {"secretName": "callers", "items": [{"key": "tokens", "path": "tokens"}]}},
            {"name": "scratch", "emptyDir": {}}
        ]);
        let mounts = secret_mounts(&container, &volumes, lookup).unwrap();
        assert_eq!(
            mounts,
            vec![SecretMount {
                volume: "callers".into(),
                mount_path: "/etc/macp-auth/callers".into(),
                files: vec![("tokens".into(), "t1\n".into())],
            }]
        );
        let root = std::env::temp_dir().join(format!("macp-volumes-test-{}", std::process::id()));
        let pairs = write_mounts(&root, &mounts).unwrap();
        let mut env = BTreeMap::from([
            (
                "FILE".to_string(),
                "/etc/macp-auth/callers/tokens".to_string(),
            ),
            ("OTHER".to_string(), "/etc/macp-auth/callersX".to_string()),
        ]);
        rewrite_paths(&mut env, &pairs);
        assert_eq!(std::fs::read_to_string(&env["FILE"]).unwrap(), "t1\n");
        assert_eq!(env["OTHER"], "/etc/macp-auth/callersX");
        let _ = std::fs::remove_dir_all(root);
    }

    #[test]
    fn a_missing_secret_fails_unless_optional() {
        let container = json!({"volumeMounts": [{"name": "v", "mountPath": "/m"}]});
        let volumes = json!([{"name": "v", "secret": {"secretName": "nope"}}]);
        assert!(secret_mounts(&container, &volumes, lookup).is_err());
        let volumes = json!([{"name": "v", "secret": {"secretName": "nope", "optional": true}}]);
        assert_eq!(secret_mounts(&container, &volumes, lookup).unwrap(), vec![]);
    }
}
