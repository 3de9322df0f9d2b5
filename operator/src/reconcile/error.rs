//! What can fail in a round, with enough context to find the object.

use macp_auth_service::keys::KeyError;

use crate::keyset::LayoutError;
use crate::resources::BuildError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API request failed: `operation` (get, apply, ...) on the object `kind`/`name`.
    #[error("{operation} {kind} {name}: {source}")]
    Kube {
        operation: &'static str,
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error("generating key {kid}: {source}")]
    KeyGeneration {
        kid: String,
        #[source]
        source: KeyError,
    },
    #[error("generating key {kid}: no key generation slot: {source}")]
    KeygenSlot {
        kid: String,
        #[source]
        source: tokio::sync::AcquireError,
    },
    #[error("generating key {kid}: the generating task did not finish: {source}")]
    KeygenTask {
        kid: String,
        #[source]
        source: tokio::task::JoinError,
    },
    #[error("the Secret read back after the write does not hold what was written: {0}")]
    NotConfirmed(String),
    #[error("laying out the keyset: {0}")]
    Layout(#[from] LayoutError),
    #[error("serialising: {0}")]
    Json(#[from] serde_json::Error),
}

impl Error {
    /// Label for the errors metric.
    pub(crate) fn metric_reason(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "Kube",
            Error::Build(_) => "Build",
            Error::KeyGeneration { .. } | Error::KeygenSlot { .. } | Error::KeygenTask { .. } => {
                "KeyGeneration"
            }
            Error::NotConfirmed(_) => "NotConfirmed",
            Error::Layout(_) => "Layout",
            Error::Json(_) => "Json",
        }
    }

    /// [`Error::Kube`] for a failed `operation` on `kind` `name`.
    pub(super) fn kube(
        operation: &'static str,
        kind: &'static str,
        name: &str,
        source: kube::Error,
    ) -> Self {
        Error::Kube {
            operation,
            kind,
            name: name.to_string(),
            source,
        }
    }
}

/// Says what a failed API request was for, so the error names the object:
/// `api.get_opt(&name).await.ctx("get", "Secret", &name)?`. Status codes a
/// caller handles (404, 409) are matched on the `kube::Error` before this.
pub(super) trait KubeContext<T> {
    fn ctx(self, operation: &'static str, kind: &'static str, name: &str) -> Result<T, Error>;
}

impl<T> KubeContext<T> for Result<T, kube::Error> {
    fn ctx(self, operation: &'static str, kind: &'static str, name: &str) -> Result<T, Error> {
        self.map_err(|source| Error::kube(operation, kind, name, source))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_request_names_its_object_and_keeps_its_source() {
        let failed: Result<(), kube::Error> = Err(kube::Error::LinesCodecMaxLineLengthExceeded);
        let e = failed
            .ctx("get", "Secret", "auth-signing-keys")
            .unwrap_err();
        assert!(
            e.to_string().starts_with("get Secret auth-signing-keys: "),
            "{e}"
        );
        assert!(std::error::Error::source(&e).is_some());
        assert_eq!(e.metric_reason(), "Kube");
    }
}
