//! The container images, checked statically: no container engine with base
//! images runs on the development and CI machines, so `scripts/build-images`
//! is run with `--dry-run`, and the Dockerfiles, the crates and the chart are
//! compared as text. Each Dockerfile must build a crate and binary that exist,
//! start that binary, and the script must tag what the chart pulls by default.

use std::fs;
use std::path::PathBuf;
use std::process::Command;

use macp_auth_e2e::helm::repo_root;
use serde_yaml::Value;

/// An image this repository builds.
struct Image {
    dockerfile: &'static str,
    /// The directory of the crate the Dockerfile builds.
    crate_dir: &'static str,
    /// The chart's values key of its reference (`image`, `serviceImage`).
    values_key: &'static str,
    /// The last path segment of its repository.
    name: &'static str,
}

const IMAGES: [Image; 2] = [
    Image {
        dockerfile: "operator/Dockerfile",
        crate_dir: "operator",
        values_key: "image",
        name: "macp-auth-operator",
    },
    Image {
        dockerfile: "service/Dockerfile",
        crate_dir: "service",
        values_key: "serviceImage",
        name: "macp-auth-service",
    },
];

fn read(path: &str) -> String {
    let p: PathBuf = repo_root().join(path);
    fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// `name = "..."` of the `[package]` table and of every `[[bin]]` table.
fn package_and_bins(manifest: &str) -> (String, Vec<String>) {
    let mut package = None;
    let mut bins = Vec::new();
    let mut section = String::new();
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line.to_string();
            continue;
        }
        let Some(value) = line
            .strip_prefix("name")
            .map(str::trim_start)
            .and_then(|r| r.strip_prefix('='))
            .map(|r| r.trim().trim_matches('"').to_string())
        else {
            continue;
        };
        match section.as_str() {
            "[package]" => package = Some(value),
            "[[bin]]" => bins.push(value),
            _ => {}
        }
    }
    (package.expect("[package] name"), bins)
}

/// The word after `flag` in `text` (e.g. `-p <crate>`).
fn word_after<'a>(text: &'a str, flag: &str) -> Option<&'a str> {
    let at = text.find(flag)? + flag.len();
    text[at..].split_whitespace().next()
}

#[test]
fn each_dockerfile_builds_an_existing_crate_and_runs_its_binary() {
    for Image {
        dockerfile,
        crate_dir,
        ..
    } in IMAGES
    {
        let text = read(dockerfile);
        let (package, bins) = package_and_bins(&read(&format!("{crate_dir}/Cargo.toml")));
        let built = word_after(&text, "cargo build --release --locked -p")
            .unwrap_or_else(|| panic!("{dockerfile}: no `cargo build --release --locked -p`"));
        assert_eq!(built, package, "{dockerfile} builds another crate");
        let binary = word_after(&text, "target/release/")
            .unwrap_or_else(|| panic!("{dockerfile}: no target/release/<binary>"));
        assert!(
            bins.iter().any(|b| b == binary),
            "{dockerfile} installs {binary}, but {crate_dir}/Cargo.toml has bins {bins:?}"
        );
        let entrypoint = text
            .lines()
            .find_map(|l| l.strip_prefix("ENTRYPOINT"))
            .unwrap_or_else(|| panic!("{dockerfile}: no ENTRYPOINT"));
        let entry: Vec<String> = serde_json::from_str(entrypoint.trim())
            .unwrap_or_else(|e| panic!("{dockerfile}: ENTRYPOINT is not exec form: {e}"));
        assert_eq!(
            entry[0],
            format!("/usr/local/bin/{binary}"),
            "{dockerfile}: the entrypoint is not the binary it built"
        );
        assert!(
            text.contains(&format!(
                "COPY --from=build /out/{binary} /usr/local/bin/{binary}"
            )),
            "{dockerfile}: the binary is not copied to the entrypoint's path"
        );
        assert!(
            text.contains("USER 65532:65532"),
            "{dockerfile}: not the non-root uid the Deployment runs as"
        );
    }
}

#[test]
fn build_images_tags_what_the_chart_pulls() {
    let values: Value =
        serde_yaml::from_str(&read("charts/macp-auth-operator/values.yaml")).unwrap();
    let chart: Value = serde_yaml::from_str(&read("charts/macp-auth-operator/Chart.yaml")).unwrap();
    let app_version = chart["appVersion"].as_str().expect("appVersion");

    let dry_run = |args: &[&str]| {
        let out = Command::new(repo_root().join("scripts/build-images"))
            .args(["--dry-run", "--engine", "buildah"])
            .args(args)
            .output()
            .expect("run scripts/build-images");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };

    // Defaults: exactly the chart's default images (repository:appVersion).
    let out = dry_run(&[]);
    for Image {
        dockerfile,
        values_key,
        name,
        ..
    } in IMAGES
    {
        let repository = values[values_key]["repository"]
            .as_str()
            .expect("repository");
        assert!(
            repository.ends_with(&format!("/{name}")),
            "values.yaml {values_key}.repository {repository} is not named {name}"
        );
        assert_eq!(
            values[values_key]["tag"].as_str(),
            Some(""),
            "{values_key}.tag defaults to appVersion"
        );
        let reference = format!("{repository}:{app_version}");
        assert!(
            out.lines().any(|l| l == format!("image {reference}")),
            "build-images does not tag {reference}:\n{out}"
        );
        assert!(
            out.lines().any(|l| l.starts_with("+ buildah bud")
                && l.contains(&format!("{dockerfile} -t {reference} "))),
            "{dockerfile} is not built as {reference}:\n{out}"
        );
    }
    assert!(!out.contains(" push "), "no push without --push:\n{out}");

    // Another registry and tag, pushed, with the matching --set lines.
    let out = dry_run(&[
        "--registry",
        "registry.example.com/platform/",
        "--tag",
        "9.9.9",
        "--push",
    ]);
    for Image {
        values_key, name, ..
    } in IMAGES
    {
        let reference = format!("registry.example.com/platform/{name}:9.9.9");
        assert!(
            out.contains(&format!("+ buildah push {reference}")),
            "{reference} not pushed:\n{out}"
        );
        assert!(
            out.contains(&format!(
                "--set {values_key}.repository=registry.example.com/platform/{name} --set {values_key}.tag=9.9.9"
            )),
            "no helm --set line for {values_key}:\n{out}"
        );
    }
}
