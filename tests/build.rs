//! `e2e_real_cluster`: set when `MACP_E2E_KUBECONFIG` is set at build time, so
//! the e2e scenarios that need the simulation's hooks are marked ignored, with
//! their reason, in a build meant for a real cluster (docs/testing.md).

fn main() {
    println!("cargo::rustc-check-cfg=cfg(e2e_real_cluster)");
    println!("cargo::rerun-if-env-changed=MACP_E2E_KUBECONFIG");
    if std::env::var_os("MACP_E2E_KUBECONFIG").is_some() {
        println!("cargo::rustc-cfg=e2e_real_cluster");
    }
}
