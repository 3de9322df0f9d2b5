//! Locating the executables the simulated pods run: the token service, and the
//! operator (the sandbox runs the chart's operator image as a pod); and the
//! `kubectl macp` plugin that the journey and the sandbox put on kubectl's PATH.
//!
//! Cargo builds a package's binaries for its own integration tests only, and the
//! service and operator live in other packages (artifact dependencies are
//! unstable). So, for each:
//! 1. `MACP_AUTH_SERVICE_BIN` / `MACP_AUTH_OPERATOR_BIN`, when set, names the
//!    executable (`scripts/test` sets both to what its own test build produced,
//!    and a scenario can test any build);
//! 2. otherwise the harness runs `cargo build -p <package> --bin <package>` once
//!    per process, into the target directory and profile of the running
//!    executable, and uses `<target>/<profile>/<package>`. Cargo makes that a
//!    no-op when the binary is fresh, and a stale binary can never be picked
//!    up by accident.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Env var naming a prebuilt service executable.
pub const SERVICE_BIN_ENV: &str = "MACP_AUTH_SERVICE_BIN";
/// Env var naming a prebuilt operator executable.
pub const OPERATOR_BIN_ENV: &str = "MACP_AUTH_OPERATOR_BIN";
/// Env var naming a prebuilt `kubectl-macp` plugin executable.
pub const KUBECTL_MACP_BIN_ENV: &str = "MACP_KUBECTL_MACP_BIN";

/// Why an executable is unavailable.
#[derive(Clone, Debug, thiserror::Error)]
#[error("an executable the simulated cluster runs is unavailable: {0}")]
pub struct BinaryError(String);

static SERVICE: OnceLock<Result<PathBuf, BinaryError>> = OnceLock::new();
static OPERATOR: OnceLock<Result<PathBuf, BinaryError>> = OnceLock::new();
static KUBECTL_MACP: OnceLock<Result<PathBuf, BinaryError>> = OnceLock::new();

/// The service executable, building it first when needed (blocking; see the module docs).
pub fn service_binary() -> Result<PathBuf, BinaryError> {
    SERVICE
        .get_or_init(|| locate_or_build("macp-auth-service", SERVICE_BIN_ENV))
        .clone()
}

/// [`service_binary`] off the async runtime's worker threads.
pub async fn service_binary_async() -> Result<PathBuf, BinaryError> {
    tokio::task::spawn_blocking(service_binary)
        .await
        .map_err(|e| BinaryError(format!("build task failed: {e}")))?
}

/// The operator executable, building it first when needed (blocking).
pub fn operator_binary() -> Result<PathBuf, BinaryError> {
    OPERATOR
        .get_or_init(|| locate_or_build("macp-auth-operator", OPERATOR_BIN_ENV))
        .clone()
}

/// [`operator_binary`] off the async runtime's worker threads.
pub async fn operator_binary_async() -> Result<PathBuf, BinaryError> {
    tokio::task::spawn_blocking(operator_binary)
        .await
        .map_err(|e| BinaryError(format!("build task failed: {e}")))?
}

/// The `kubectl-macp` plugin executable, building it first when needed (blocking).
pub fn kubectl_macp_binary() -> Result<PathBuf, BinaryError> {
    KUBECTL_MACP
        .get_or_init(|| locate_or_build("kubectl-macp", KUBECTL_MACP_BIN_ENV))
        .clone()
}

/// [`kubectl_macp_binary`] off the async runtime's worker threads.
pub async fn kubectl_macp_binary_async() -> Result<PathBuf, BinaryError> {
    tokio::task::spawn_blocking(kubectl_macp_binary)
        .await
        .map_err(|e| BinaryError(format!("build task failed: {e}")))?
}

fn locate_or_build(package: &str, env_var: &str) -> Result<PathBuf, BinaryError> {
    if let Some(p) = std::env::var_os(env_var) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(BinaryError(format!(
                "{env_var}={} is not a file",
                p.display()
            )))
        };
    }
    let exe = std::env::current_exe().map_err(|e| BinaryError(format!("current_exe: {e}")))?;
    let (target_dir, profile) = target_of(&exe).ok_or_else(|| {
        BinaryError(format!(
            "cannot find the target directory of {}",
            exe.display()
        ))
    })?;
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .arg("--manifest-path")
        .arg(workspace.join("Cargo.toml"))
        .args(["-p", package, "--bin", package])
        .arg("--target-dir")
        .arg(&target_dir);
    match profile.as_str() {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    tracing::info!(?cmd, "building {package} for the simulated cluster");
    let out = cmd
        .output()
        .map_err(|e| BinaryError(format!("running cargo: {e}")))?;
    if !out.status.success() {
        return Err(BinaryError(format!(
            "cargo build -p {package} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let bin = target_dir.join(&profile).join(package);
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(BinaryError(format!(
            "{} missing after the build",
            bin.display()
        )))
    }
}

/// `<target>/<profile>/deps/<test>` (or `<target>/<profile>/<exe>`) → (target, profile).
fn target_of(exe: &Path) -> Option<(PathBuf, String)> {
    let mut dir = exe.parent()?;
    if dir.file_name()? == "deps" {
        dir = dir.parent()?;
    }
    let profile = dir.file_name()?.to_str()?.to_string();
    Some((dir.parent()?.to_path_buf(), profile))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_dir_and_profile_from_test_exe() {
        let (t, p) = target_of(Path::new("/w/target/harness/debug/deps/cluster-abc")).unwrap();
        assert_eq!(
            (t.as_path(), p.as_str()),
            (Path::new("/w/target/harness"), "debug")
        );
        let (t, p) = target_of(Path::new("/w/target/release/tool")).unwrap();
        assert_eq!(
            (t.as_path(), p.as_str()),
            (Path::new("/w/target"), "release")
        );
    }
}
