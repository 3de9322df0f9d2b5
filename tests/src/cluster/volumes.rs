//! Secret volumes, as far as the simulated kubelet needs them: a pod's
//! processes share the machine's filesystem, so each Secret volume a container
//! mounts is written to a directory of its own and the container's environment
//! values that name a path under the mount point are rewritten to point there.
//! (Written once at container start: the real kubelet's refresh of a changed
//! Secret is not simulated.)
//!
//! File modes and ownership are the kubelet's: each file gets its item's
//! `mode`, else the volume's `defaultMode`, else 0644, owned by root; with a
//! pod `fsGroup` the file's group is that group and group read is added
//! (the kubelet's read-only ownership mask, 0440), so `mode: 0400` becomes
//! 0440. A file the container's user could not read (by owner, group or
//! other bits, without CAP_DAC_OVERRIDE, which the pods drop) is not written
//! at all: the tests run as root, which would read anything, so the process
//! sees the file missing where a real container gets EACCES.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// One mounted Secret volume: where the container expects it, and its files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretMount {
    pub volume: String,
    pub mount_path: String,
    pub files: Vec<MountedFile>,
}

/// A file of a Secret volume as the kubelet writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountedFile {
    /// Relative to the mount point.
    pub path: String,
    pub content: String,
    /// Permission bits after the kubelet's ownership change.
    pub mode: u32,
    /// Owner is root; the group is the pod's `fsGroup`, else root's.
    pub gid: u32,
    /// Whether the container's user may read it.
    pub readable: bool,
}

/// Mode of a Secret volume file when neither the item nor the volume sets one.
pub const DEFAULT_SECRET_MODE: u32 = 0o644;
/// Bits the kubelet adds to each file of a read-only volume with an `fsGroup`.
const FS_GROUP_READ_MASK: u32 = 0o440;

/// The user and groups a container's process runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    /// `fsGroup` and `supplementalGroups`.
    pub groups: Vec<u32>,
}

fn security_u32(context: Option<&Value>, field: &str) -> Option<u32> {
    context?
        .get(field)?
        .as_u64()
        .and_then(|v| u32::try_from(v).ok())
}

impl Identity {
    /// From the container's and the pod's `securityContext`. An unset user
    /// is the image's: root, unless `runAsNonRoot` (then 65532, the
    /// distroless `nonroot` user this repository's images run as).
    pub fn of(container: &Value, pod_spec: &Value) -> Self {
        let c = container.get("securityContext");
        let p = pod_spec.get("securityContext");
        let non_root = [c, p]
            .into_iter()
            .flatten()
            .find_map(|ctx| ctx.get("runAsNonRoot").and_then(Value::as_bool))
            .unwrap_or(false);
        let uid = security_u32(c, "runAsUser")
            .or_else(|| security_u32(p, "runAsUser"))
            .unwrap_or(if non_root { 65532 } else { 0 });
        let gid = security_u32(c, "runAsGroup")
            .or_else(|| security_u32(p, "runAsGroup"))
            .unwrap_or(if non_root { 65532 } else { 0 });
        let mut groups: Vec<u32> = security_u32(p, "fsGroup").into_iter().collect();
        groups.extend(
            p.and_then(|p| p.get("supplementalGroups"))
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|g| g.as_u64().and_then(|g| u32::try_from(g).ok())),
        );
        Identity { uid, gid, groups }
    }

    /// Unix permission check of a root-owned file, without CAP_DAC_OVERRIDE.
    pub fn may_read(&self, mode: u32, gid: u32) -> bool {
        if self.uid == 0 {
            mode & 0o400 != 0
        } else if self.gid == gid || self.groups.contains(&gid) {
            mode & 0o040 != 0
        } else {
            mode & 0o004 != 0
        }
    }
}

fn mode_of(v: Option<&Value>) -> Result<Option<u32>, String> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(m) => match m.as_u64().and_then(|m| u32::try_from(m).ok()) {
            Some(m) if m <= 0o777 => Ok(Some(m)),
            _ => Err(format!("mode {m} is not between 0 and 0777")),
        },
    }
}

/// The Secret volumes `container` mounts, with their files. `secret` returns a
/// Secret's decoded data. A missing non-optional Secret or key is an error, as
/// the kubelet's `FailedMount`. `pod_spec` gives the `fsGroup` and, with the
/// container, the user the files must be readable by.
pub fn secret_mounts(
    container: &Value,
    volumes: &Value,
    pod_spec: &Value,
    secret: impl Fn(&str) -> Option<BTreeMap<String, String>>,
) -> Result<Vec<SecretMount>, String> {
    let identity = Identity::of(container, pod_spec);
    let fs_group = security_u32(pod_spec.get("securityContext"), "fsGroup");
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
        let default_mode = mode_of(source.get("defaultMode"))
            .map_err(|e| format!("volume {name}: defaultMode: {e}"))?
            .unwrap_or(DEFAULT_SECRET_MODE);
        // (path, content, mode before the ownership change)
        let chosen: Vec<(String, String, u32)> = match source.get("items").and_then(Value::as_array)
        {
            None => data
                .into_iter()
                .map(|(k, v)| (k, v, default_mode))
                .collect(),
            Some(items) => {
                let mut files = Vec::new();
                for item in items {
                    let key = item.get("key").and_then(Value::as_str).unwrap_or_default();
                    let path = item.get("path").and_then(Value::as_str).unwrap_or(key);
                    let mode = mode_of(item.get("mode"))
                        .map_err(|e| format!("volume {name}: item {key:?}: {e}"))?
                        .unwrap_or(default_mode);
                    match data.get(key) {
                        Some(v) => files.push((path.to_string(), v.clone(), mode)),
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
        let files = chosen
            .into_iter()
            .map(|(path, content, mode)| {
                let (mode, gid) = match fs_group {
                    Some(g) => (mode | FS_GROUP_READ_MASK, g),
                    None => (mode, 0),
                };
                MountedFile {
                    readable: identity.may_read(mode, gid),
                    path,
                    content,
                    mode,
                    gid,
                }
            })
            .collect();
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

/// Writes `mounts` under `root` (one directory per volume), each readable
/// file with its mode; returns the (mount path, host directory) pairs for
/// [`rewrite_paths`].
pub fn write_mounts(
    root: &Path,
    mounts: &[SecretMount],
) -> std::io::Result<Vec<(String, PathBuf)>> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    for m in mounts {
        let dir = root.join(&m.volume);
        std::fs::create_dir_all(&dir)?;
        for f in m.files.iter().filter(|f| f.readable) {
            let file = dir.join(&f.path);
            if let Some(parent) = file.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&file, &f.content)?;
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(f.mode))?;
        }
        out.push((m.mount_path.clone(), dir));
    }
    Ok(out)
}

/// The content of the file at `path` (as the container names it) if a
/// mount holds it and the container's user may read it: how a pod stand-in
/// without a filesystem of its own reads its mounted files.
pub fn read_mounted(mounts: &[SecretMount], path: &Path) -> std::io::Result<String> {
    let path = path.to_string_lossy();
    for m in mounts {
        let Some(rest) = path.strip_prefix(m.mount_path.as_str()) else {
            continue;
        };
        let rest = rest.trim_start_matches('/');
        if let Some(f) = m.files.iter().find(|f| f.path == rest) {
            if !f.readable {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!("{path}: mode {:o}, group {}", f.mode, f.gid),
                ));
            }
            return Ok(f.content.clone());
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::NotFound,
        format!("{path}: no such file in the pod's volumes"),
    ))
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
        let mounts = secret_mounts(&container, &volumes, &json!({}), lookup).unwrap();
        assert_eq!(
            mounts,
            vec![SecretMount {
                volume: "callers".into(),
                mount_path: "/etc/macp-auth/callers".into(),
                files: vec![MountedFile {
                    path: "tokens".into(),
                    content: "t1\n".into(),
                    mode: 0o644,
                    gid: 0,
                    readable: true,
                }],
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
        assert!(secret_mounts(&container, &volumes, &json!({}), lookup).is_err());
        let volumes = json!([{"name": "v", "secret": {"secretName": "nope", "optional": true}}]);
        assert_eq!(
            secret_mounts(&container, &volumes, &json!({}), lookup).unwrap(),
            vec![]
        );
    }

    /// The kubelet's modes: 0400 is readable by root only; an `fsGroup`
    /// makes it 0440 for that group, which is how a non-root user reads it.
    #[test]
    fn modes_follow_the_kubelet_and_decide_who_reads() {
        let container = json!({
            "securityContext": {"runAsNonRoot": true},
            "volumeMounts": [{"name": "callers", "mountPath": "/m", "readOnly": true}]
        });
        let volumes = json!([{"name": "callers", "secret": {"secretName": "callers",
            "defaultMode": 0o400, "items": [{"key": "tokens", "path": "t", "mode": 0o400}]}}]);
        let pod = |ctx: Value| json!({"securityContext": ctx});
        let file = |pod_spec: Value| {
            secret_mounts(&container, &volumes, &pod_spec, lookup).unwrap()[0].files[0].clone()
        };

        let no_group = file(pod(json!({"runAsUser": 65532, "runAsGroup": 65532})));
        assert_eq!(
            (no_group.mode, no_group.gid, no_group.readable),
            (0o400, 0, false)
        );
        let grouped = file(pod(
            json!({"runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532}),
        ));
        assert_eq!(
            (grouped.mode, grouped.gid, grouped.readable),
            (0o440, 65532, true)
        );
        // In the file's group (root's), but 0400 has no group bits.
        let other = file(pod(
            json!({"runAsUser": 1000, "runAsGroup": 1000, "supplementalGroups": [0]}),
        ));
        assert!(!other.readable);
        // Root reads 0400 by its owner bits.
        let root = file(json!({}));
        let root_container = json!({"volumeMounts": container["volumeMounts"]});
        let as_root = secret_mounts(&root_container, &volumes, &json!({}), lookup).unwrap();
        assert!(as_root[0].files[0].readable && root.mode == 0o400);

        // Only readable files are written, with their mode.
        use std::os::unix::fs::PermissionsExt;
        let root_dir =
            std::env::temp_dir().join(format!("macp-volumes-mode-{}", std::process::id()));
        let mounts = vec![SecretMount {
            volume: "callers".into(),
            mount_path: "/m".into(),
            files: vec![
                grouped.clone(),
                MountedFile {
                    path: "hidden".into(),
                    ..no_group
                },
            ],
        }];
        let pairs = write_mounts(&root_dir, &mounts).unwrap();
        let written = pairs[0].1.join("t");
        let mode = std::fs::metadata(&written).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o440);
        assert!(!pairs[0].1.join("hidden").exists());
        let _ = std::fs::remove_dir_all(root_dir);
        assert_eq!(read_mounted(&mounts, Path::new("/m/t")).unwrap(), "t1\n");
        assert_eq!(
            read_mounted(&mounts, Path::new("/m/hidden"))
                .unwrap_err()
                .kind(),
            std::io::ErrorKind::PermissionDenied
        );
        assert_eq!(
            read_mounted(&mounts, Path::new("/m/none"))
                .unwrap_err()
                .kind(),
            std::io::ErrorKind::NotFound
        );

        // A mode the API server would refuse is refused here too.
        let bad = json!([{"name": "callers", "secret": {"secretName": "callers", "defaultMode": 0o1777}}]);
        assert!(secret_mounts(&container, &bad, &json!({}), lookup).is_err());
    }
}
