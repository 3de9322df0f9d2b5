//! The operator binary as a process: `crd` prints the committed CRD, and bad
//! startup settings exit 1 with one line on stderr before touching a cluster.

use std::process::Command;

fn operator() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_macp-auth-operator"));
    // No cluster credentials may leak in from the machine running the tests.
    cmd.env_remove("KUBECONFIG")
        .env("HOME", env!("CARGO_TARGET_TMPDIR"))
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("RUST_BACKTRACE");
    cmd
}

#[test]
fn crd_prints_the_committed_crd() {
    let out = operator().arg("crd").output().unwrap();
    assert!(out.status.success());
    let committed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../crds/macpauths.macp.io.yaml"
    ))
    .unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), committed);
}

fn fails_with_one_line(args: &[&str], needle: &str) {
    let out = operator().args(args).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{args:?}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("macp-auth-operator: fatal: "),
        "{stderr}"
    );
    assert!(stderr.contains(needle), "{needle:?} not in {stderr}");
}

#[test]
fn leader_election_without_a_namespace_names_the_flag() {
    fails_with_one_line(
        &[
            "run",
            "--leader-election",
            "--listen-address",
            "127.0.0.1:0",
        ],
        "--leader-election-namespace",
    );
}

#[test]
fn no_cluster_is_a_clear_error() {
    fails_with_one_line(
        &["run", "--listen-address", "127.0.0.1:0"],
        "connecting to Kubernetes",
    );
}

#[test]
fn bad_flags_are_refused_by_the_parser() {
    let out = operator()
        .args(["run", "--log-format", "xml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8(out.stderr)
            .unwrap()
            .contains("--log-format")
    );
}
