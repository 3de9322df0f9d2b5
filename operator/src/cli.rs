//! The command line: `crd` prints the CRD, `run` (the default) runs the operator.
//!
//! `run` is both a subcommand (what the Helm chart passes: `run --service-image X`)
//! and the default, so `macp-auth-operator --service-image X` keeps working. The
//! top-level flags conflict with subcommands: flags go either before nothing or
//! after `run`, never on both sides, so there is one place a value comes from.

use clap::{Parser, Subcommand};

use crate::config::Settings;

#[derive(Parser, Debug)]
#[command(
    name = "macp-auth-operator",
    version,
    about = "Kubernetes operator for the MACP auth-service and its signing keys",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Settings when no subcommand is given (`run` implied).
    #[command(flatten)]
    pub settings: Settings,
}

// Parsed once at startup: the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug, PartialEq)]
pub enum Command {
    /// Print the MacpAuth CustomResourceDefinition as YAML.
    Crd,
    /// Run the controllers (the default).
    Run(Settings),
}

impl Cli {
    /// The command to execute: `run` with the top-level settings when none was named.
    pub fn into_command(self) -> Command {
        self.command.unwrap_or(Command::Run(self.settings))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::LogFormat;

    fn parse(args: &[&str]) -> Result<Command, clap::Error> {
        let argv = std::iter::once("macp-auth-operator").chain(args.iter().copied());
        Cli::try_parse_from(argv).map(Cli::into_command)
    }

    fn run_settings(args: &[&str]) -> Settings {
        match parse(args) {
            Ok(Command::Run(s)) => s,
            other => panic!("{args:?} did not parse as run: {other:?}"),
        }
    }

    #[test]
    fn run_subcommand_takes_the_flags() {
        let s = run_settings(&[
            "run",
            "--service-image",
            "reg/svc:1",
            "--log-format",
            "json",
            "--leader-election",
            "--leader-election-namespace",
            "ops",
            "--leader-election-lease-name",
            "lease-1",
            "--leader-election-lease-duration",
            "2s",
        ]);
        assert_eq!(s.service_image, "reg/svc:1");
        assert_eq!(s.log_format, LogFormat::Json);
        assert!(s.leader_election);
        assert_eq!(s.leader_election_namespace.as_deref(), Some("ops"));
        assert_eq!(s.leader_election_lease_name, "lease-1");
        assert_eq!(s.leader_election_lease_duration, Duration::from_secs(2));
    }

    #[test]
    fn bare_flags_mean_run() {
        let s = run_settings(&["--service-image", "reg/svc:2", "--leader-election"]);
        assert_eq!(s.service_image, "reg/svc:2");
        assert!(s.leader_election);
    }

    #[test]
    fn nothing_means_run_with_defaults() {
        // Defaults may come from MACP_OPERATOR_* variables of the environment
        // running the test, so compare with an explicit `run` parse.
        assert_eq!(run_settings(&[]), run_settings(&["run"]));
    }

    #[test]
    fn crd_subcommand() {
        assert_eq!(parse(&["crd"]).unwrap(), Command::Crd);
    }

    #[test]
    fn bad_input_is_refused() {
        for args in [
            &["run", "--no-such-flag"][..],
            &["--no-such-flag"],
            &["run", "--leader-election-lease-duration", "soon"],
            &["crd", "--service-image", "x"],
            // Top-level flags and a subcommand together are ambiguous.
            &["--service-image", "x", "run"],
            &["launch"],
        ] {
            assert!(parse(args).is_err(), "{args:?} parsed");
        }
    }
}
