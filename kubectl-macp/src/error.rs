//! The plugin's errors and the exit code of each (docs/kubectl-macp.md, Exit codes).

/// Success.
pub const EXIT_OK: i32 = 0;
/// The command could not do its work: no cluster, no such MacpAuth, an API error.
pub const EXIT_ERROR: i32 = 1;
/// Bad arguments (clap's own code for usage errors).
pub const EXIT_USAGE: i32 = 2;
/// `rotate --wait`: the rotation ended RolledBack, Failed or Superseded.
pub const EXIT_ROTATION_FAILED: i32 = 3;
/// `rotate --wait`: `--timeout` passed before the rotation ended.
pub const EXIT_TIMEOUT: i32 = 4;
/// `audit`: the answer may be incomplete (audit off, pods gone or unreadable).
pub const EXIT_INCOMPLETE: i32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot load the Kubernetes client configuration: {0}")]
    Config(String),
    #[error("MacpAuth {namespace}/{name} not found (kubectl get macpauths -n {namespace})")]
    NotFound { namespace: String, name: String },
    #[error("{what}: {source}")]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("MacpAuth {namespace}/{name}: {message}")]
    Invalid {
        namespace: String,
        name: String,
        message: String,
    },
    #[error("{0}")]
    Usage(String),
    #[error("rotation {request} of MacpAuth {namespace}/{name} did not succeed: {reason}")]
    RotationFailed {
        namespace: String,
        name: String,
        request: String,
        reason: String,
    },
    #[error(
        "rotation {request} of MacpAuth {namespace}/{name} did not end within {after}; last seen: {state}"
    )]
    Timeout {
        namespace: String,
        name: String,
        request: String,
        after: String,
        state: String,
    },
    #[error("the audit of kid {kid} in MacpAuth {namespace}/{name} may be incomplete: {why}")]
    Incomplete {
        namespace: String,
        name: String,
        kid: String,
        why: String,
    },
    #[error("writing the output: {0}")]
    Output(String),
}

impl Error {
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) => EXIT_USAGE,
            Error::RotationFailed { .. } => EXIT_ROTATION_FAILED,
            Error::Timeout { .. } => EXIT_TIMEOUT,
            Error::Incomplete { .. } => EXIT_INCOMPLETE,
            _ => EXIT_ERROR,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
