//! Images as the simulated kubelet "pulls" them: an image reference maps to an
//! executable built from this repository, by the image's name (the last path
//! segment of the repository, tag and digest ignored), so
//! `ghcr.io/macp/macp-auth-operator:0.1.0` and `registry.test/macp-auth-operator:dev`
//! both run the operator binary. There is no registry and no container engine:
//! an image whose name is not mapped cannot be pulled, and its pod waits with
//! `ErrImagePull`, then `ImagePullBackOff`, as on a real node.

use std::path::{Path, PathBuf};

/// The token service's image name.
pub const SERVICE_IMAGE: &str = "macp-auth-service";
/// The operator's image name.
pub const OPERATOR_IMAGE: &str = "macp-auth-operator";

/// Image name -> executable.
#[derive(Clone, Debug, Default)]
pub struct ImageMap {
    entries: Vec<(String, PathBuf)>,
}

impl ImageMap {
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs images named `name` (see [`image_name`]) as `binary`; a later
    /// mapping of the same name replaces the earlier one.
    pub fn with(mut self, name: &str, binary: PathBuf) -> Self {
        self.entries.retain(|(n, _)| n != name);
        self.entries.push((name.to_string(), binary));
        self
    }

    /// The executable for `image`, or the message of a failed pull.
    pub fn binary_for(&self, image: &str) -> Result<&Path, String> {
        let name = image_name(image);
        self.entries
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, b)| b.as_path())
            .ok_or_else(|| {
                let known: Vec<&str> = self.entries.iter().map(|(n, _)| n.as_str()).collect();
                format!(
                    "failed to pull image {image:?}: the simulated cluster has no registry; \
                     it runs only images named {} (built from this repository)",
                    known.join(" or ")
                )
            })
    }
}

/// `registry:5000/org/name:tag@sha256:...` -> `name`.
pub fn image_name(image: &str) -> &str {
    let no_digest = image.split('@').next().unwrap_or(image);
    let last = no_digest.rsplit('/').next().unwrap_or(no_digest);
    // The tag follows the last ':' of the last segment (a registry port can
    // only appear in an earlier segment).
    last.split(':').next().unwrap_or(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_ignore_registry_tag_and_digest() {
        for (image, name) in [
            (
                "ghcr.io/macp/macp-auth-operator:0.1.0",
                "macp-auth-operator",
            ),
            ("localhost:5000/macp-auth-service", "macp-auth-service"),
            ("macp-auth-service:test", "macp-auth-service"),
            ("reg/x/macp-auth-service@sha256:abc", "macp-auth-service"),
            ("reg/x/macp-auth-service:1@sha256:abc", "macp-auth-service"),
            ("", ""),
        ] {
            assert_eq!(image_name(image), name, "{image}");
        }
    }

    #[test]
    fn unmapped_images_fail_to_pull_with_their_name() {
        let map = ImageMap::new()
            .with(SERVICE_IMAGE, "/bin/svc".into())
            .with(OPERATOR_IMAGE, "/bin/op".into());
        assert_eq!(
            map.binary_for("ghcr.io/macp/macp-auth-operator:0.1.0"),
            Ok(Path::new("/bin/op"))
        );
        let err = map.binary_for("nginx:1.27").unwrap_err();
        assert!(err.contains("\"nginx:1.27\""), "{err}");
        assert!(
            err.contains("macp-auth-service or macp-auth-operator"),
            "{err}"
        );
        // A later mapping replaces an earlier one.
        let map = map.with(SERVICE_IMAGE, "/bin/svc2".into());
        assert_eq!(
            map.binary_for("macp-auth-service"),
            Ok(Path::new("/bin/svc2"))
        );
    }
}
