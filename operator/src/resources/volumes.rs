//! The pod's Secret volumes: the signing keys, and the caller tokens of
//! `spec.callerAuth`, each with its mount and file modes.

use k8s_openapi::api::core::v1::{KeyToPath, SecretVolumeSource, Volume, VolumeMount};

use super::Owner;
use crate::crd::CallerAuthSpec;
use crate::keyset;

/// Volume holding the caller tokens from `spec.callerAuth`.
const CALLER_TOKENS_VOLUME: &str = "caller-tokens";
/// Where that volume is mounted (a directory of its own, read-only).
const CALLER_TOKENS_DIR: &str = "/etc/macp-auth/callers";
/// File name of the tokens inside [`CALLER_TOKENS_DIR`], whatever the Secret's key is called.
const CALLER_TOKENS_FILE: &str = "tokens";
/// Mode of the tokens file: owner and group read only (0440); the group is
/// the pod's `fsGroup`, so the non-root service can read it and nobody else.
const CALLER_TOKENS_MODE: i32 = 0o440;
/// Volume holding the active private key and the published keys, from the
/// `<name>-signing-keys` Secret.
pub const SIGNING_KEYS_VOLUME: &str = "signing-keys";
/// Where that volume is mounted (read-only).
const SIGNING_KEYS_DIR: &str = "/etc/macp-auth/keys";
/// Mode of the key files: owner read only. The owner is root; the kubelet
/// adds group read for the pod's `fsGroup` (the service's group), so the
/// effective mode is 0440 root:65532 and no other user reads the key.
const SIGNING_KEYS_MODE: i32 = 0o400;

/// Path of the caller tokens file inside the pod.
pub(crate) fn caller_tokens_path() -> String {
    format!("{CALLER_TOKENS_DIR}/{CALLER_TOKENS_FILE}")
}

/// The Secret volume with only the tokens key of `auth`.
///
/// A volume rather than an env var on purpose: the kubelet refreshes a
/// mounted Secret in place when it changes (a symlink swap the service's
/// reload-by-path polling picks up), so adding or revoking a caller token
/// needs no restart. An env var, or a `subPath` mount, would freeze the value
/// at pod start. The operator itself never reads this Secret: the kubelet
/// mounts it, so the operator's RBAC needs nothing for it.
pub(super) fn caller_tokens_volume(auth: &CallerAuthSpec) -> Volume {
    Volume {
        name: CALLER_TOKENS_VOLUME.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(auth.secret_name.clone()),
            items: Some(vec![KeyToPath {
                key: auth.key.clone(),
                path: CALLER_TOKENS_FILE.into(),
                mode: Some(CALLER_TOKENS_MODE),
            }]),
            default_mode: Some(CALLER_TOKENS_MODE),
            // Starting without the tokens would silently open minting to anyone.
            optional: Some(false),
        }),
        ..Volume::default()
    }
}

/// The signing-keys Secret as files: only the active private key and the
/// published public keys (the Secret's next and previous private keys stay
/// out of the pod). Files rather than env variables: a variable is readable in
/// `/proc/<pid>/environ`, crash reports and debuggers; a file of mode 0400
/// (0440 for the service's group) on a read-only tmpfs is not. The service
/// reads them at start; a keyset change still rolls the pods (the keyset-hash
/// annotation), so a pod never mixes two keysets.
pub(super) fn signing_keys_volume(owner: &Owner) -> Volume {
    let item = |key: &str| KeyToPath {
        key: key.into(),
        path: key.into(),
        mode: Some(SIGNING_KEYS_MODE),
    };
    Volume {
        name: SIGNING_KEYS_VOLUME.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(owner.secret_name()),
            items: Some(vec![item(keyset::ACTIVE), item(keyset::PUBLISHED)]),
            default_mode: Some(SIGNING_KEYS_MODE),
            // Without the key the pod must not start (no ephemeral fallback).
            optional: Some(false),
        }),
        ..Volume::default()
    }
}

pub(super) fn signing_keys_mount() -> VolumeMount {
    VolumeMount {
        name: SIGNING_KEYS_VOLUME.into(),
        mount_path: SIGNING_KEYS_DIR.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    }
}

/// Path of a file of the signing-keys volume inside the pod.
pub(crate) fn signing_keys_path(key: &str) -> String {
    format!("{SIGNING_KEYS_DIR}/{key}")
}

pub(super) fn caller_tokens_mount() -> VolumeMount {
    VolumeMount {
        name: CALLER_TOKENS_VOLUME.into(),
        mount_path: CALLER_TOKENS_DIR.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    }
}

#[cfg(test)]
mod tests {
    use super::super::deployment::RUN_AS_USER;
    use super::super::testing::{mauth, spec_env, spec_pod};
    use super::*;
    use macp_auth_service::config as service_env;

    #[test]
    fn the_keys_volume_projects_only_the_active_and_published_keys_read_only() {
        let ps = spec_pod(&mauth(serde_json::json!({})).spec);
        let vols = ps.volumes.clone().unwrap();
        let sv = vols[0].secret.clone().unwrap();
        assert_eq!(sv.secret_name.as_deref(), Some("prod-signing-keys"));
        assert_eq!(sv.optional, Some(false));
        assert_eq!(sv.default_mode, Some(0o400));
        let items: Vec<(String, String, Option<i32>)> = sv
            .items
            .unwrap()
            .into_iter()
            .map(|i| (i.key, i.path, i.mode))
            .collect();
        // Only what the pod needs: not the next or previous private key.
        assert_eq!(
            items,
            [
                (keyset::ACTIVE.into(), keyset::ACTIVE.into(), Some(0o400)),
                (
                    keyset::PUBLISHED.into(),
                    keyset::PUBLISHED.into(),
                    Some(0o400)
                ),
            ]
        );
        let mounts = ps.containers[0].volume_mounts.clone().unwrap();
        assert_eq!(
            (
                mounts[0].name.as_str(),
                mounts[0].mount_path.as_str(),
                mounts[0].read_only
            ),
            (SIGNING_KEYS_VOLUME, "/etc/macp-auth/keys", Some(true))
        );
        // The kubelet writes the files as root: the service reads them through fsGroup.
        assert_eq!(
            ps.security_context.as_ref().unwrap().fs_group,
            Some(RUN_AS_USER)
        );
    }

    #[test]
    fn without_caller_auth_the_keys_are_the_only_volume() {
        let ps = spec_pod(&mauth(serde_json::json!({})).spec);
        let vols = ps.volumes.unwrap();
        assert_eq!(vols.len(), 1);
        assert_eq!(vols[0].name, SIGNING_KEYS_VOLUME);
        assert_eq!(ps.containers[0].volume_mounts.as_ref().unwrap().len(), 1);
    }

    #[test]
    fn caller_auth_mounts_only_the_tokens_key_read_only() {
        let spec = mauth(serde_json::json!({
            "callerAuth": {"secretName": "minters", "key": "callers.txt"}
        }))
        .spec;
        let env = spec_env(&spec);
        assert_eq!(
            env[service_env::MINT_TOKENS_FILE].value.as_deref(),
            Some("/etc/macp-auth/callers/tokens")
        );
        let ps = spec_pod(&spec);
        let vols = ps.volumes.clone().unwrap();
        assert_eq!(vols.len(), 2, "the keys and the tokens");
        let vols = &vols[1..];
        let sv = vols[0].secret.clone().unwrap();
        assert_eq!(sv.secret_name.as_deref(), Some("minters"));
        assert_eq!(sv.optional, Some(false));
        let items = sv.items.unwrap();
        assert_eq!(items.len(), 1, "only the tokens key is projected");
        assert_eq!(
            (items[0].key.as_str(), items[0].path.as_str()),
            ("callers.txt", "tokens")
        );
        // 0440 or tighter: no write bit, nothing for others.
        for mode in [items[0].mode.unwrap(), sv.default_mode.unwrap()] {
            assert_eq!(mode & !0o440, 0, "mode {mode:o}");
        }
        let mounts = ps.containers[0].volume_mounts.clone().unwrap();
        assert_eq!(mounts.len(), 2);
        let mounts = &mounts[1..];
        assert_eq!(mounts[0].name, vols[0].name);
        assert_eq!(mounts[0].mount_path, "/etc/macp-auth/callers");
        assert_eq!(mounts[0].read_only, Some(true));
        // No subPath: a subPath mount is never refreshed when the Secret changes.
        assert!(mounts[0].sub_path.is_none());
        assert_eq!(ps.security_context.unwrap().fs_group, Some(RUN_AS_USER));
    }
}
