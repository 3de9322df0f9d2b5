//! Operator settings, from flags or environment variables.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, ValueEnum};

/// Image used when a `MacpAuth` does not name one: the service release matching this operator.
pub const DEFAULT_SERVICE_IMAGE: &str =
    concat!("ghcr.io/macp/macp-auth-service:", env!("CARGO_PKG_VERSION"));

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Settings of `macp-auth-operator run`.
#[derive(Args, Clone, Debug, PartialEq)]
pub struct Settings {
    /// Token service image for resources that do not set `spec.image`.
    #[arg(long, env = "MACP_OPERATOR_SERVICE_IMAGE", default_value = DEFAULT_SERVICE_IMAGE)]
    pub service_image: String,

    /// Namespaces to watch, comma separated; empty watches all namespaces
    /// (which needs cluster-wide RBAC).
    #[arg(long, env = "MACP_OPERATOR_WATCH_NAMESPACES", value_delimiter = ',')]
    pub watch_namespaces: Vec<String>,

    /// Log line format.
    #[arg(long, env = "MACP_OPERATOR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Address of the `/healthz`, `/readyz` and `/metrics` endpoints.
    #[arg(
        long,
        env = "MACP_OPERATOR_LISTEN_ADDRESS",
        default_value = "0.0.0.0:8080"
    )]
    pub listen_address: SocketAddr,

    /// Timeout of each probe request to a token-service pod.
    #[arg(long, env = "MACP_OPERATOR_PROBE_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration)]
    pub probe_timeout: Duration,

    /// Reconcile every resource at least this often even when nothing changes.
    #[arg(long, env = "MACP_OPERATOR_RESYNC_INTERVAL", default_value = "5m", value_parser = humantime::parse_duration)]
    pub resync_interval: Duration,

    /// Reconciles running at once, for all watched namespaces together. Each
    /// waits mostly on the API server and pod probes, so this bounds the load
    /// one operator puts on the API server rather than its CPU use. Rounds
    /// beyond it wait their turn in the order they fell due.
    #[arg(long, env = "MACP_OPERATOR_MAX_CONCURRENT_RECONCILES", default_value_t = DEFAULT_MAX_CONCURRENT_RECONCILES,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub max_concurrent_reconciles: u16,

    /// How long a MacpAuth's reconcile waits for more watch events before it
    /// runs, so that the events of one round's own writes (Secret, Deployment,
    /// status) bring one more reconcile instead of one each. The operator's
    /// own timers (a rotation's due moment, the end of a wait) are asked for
    /// this much earlier, so they are not delayed by it.
    #[arg(long, env = "MACP_OPERATOR_RECONCILE_DEBOUNCE", default_value = "500ms", value_parser = humantime::parse_duration)]
    pub reconcile_debounce: Duration,

    /// Signing keys generated at once, each on a blocking thread: RSA 4096
    /// takes seconds of CPU, and a storm of them must not starve the reconciles
    /// of other MacpAuths.
    #[arg(long, env = "MACP_OPERATOR_MAX_CONCURRENT_KEYGENS", default_value_t = DEFAULT_MAX_CONCURRENT_KEYGENS,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub max_concurrent_keygens: u16,

    /// This operator's pod name (downward API), reported as the events' reporting instance
    /// and used as the leader-election identity.
    #[arg(long, env = "MACP_OPERATOR_POD_NAME")]
    pub pod_name: Option<String>,

    /// This operator's namespace (downward API): the default leader-election namespace.
    #[arg(long, env = "MACP_OPERATOR_POD_NAMESPACE")]
    pub pod_namespace: Option<String>,

    /// Run as one of several replicas: only the holder of a `coordination.k8s.io`
    /// Lease runs the controllers.
    #[arg(long, env = "MACP_OPERATOR_LEADER_ELECTION")]
    pub leader_election: bool,

    /// Namespace of the leader-election Lease [default: --pod-namespace].
    #[arg(long, env = "MACP_OPERATOR_LEADER_ELECTION_NAMESPACE")]
    pub leader_election_namespace: Option<String>,

    /// Name of the leader-election Lease.
    #[arg(
        long,
        env = "MACP_OPERATOR_LEADER_ELECTION_LEASE_NAME",
        default_value = DEFAULT_LEASE_NAME
    )]
    pub leader_election_lease_name: String,

    /// How long a leader's lease lasts without renewal: the longest a crashed
    /// leader blocks a standby. Whole seconds (the Lease stores an integer).
    #[arg(long, env = "MACP_OPERATOR_LEADER_ELECTION_LEASE_DURATION", default_value = "15s", value_parser = humantime::parse_duration)]
    pub leader_election_lease_duration: Duration,

    /// How often the leader renews, and a standby retries [default: lease duration / 3].
    #[arg(long, env = "MACP_OPERATOR_LEADER_ELECTION_RENEW_INTERVAL", value_parser = humantime::parse_duration)]
    pub leader_election_renew_interval: Option<Duration>,
}

/// Default of `--max-concurrent-reconciles`.
const DEFAULT_MAX_CONCURRENT_RECONCILES: u16 = 16;
/// Default of `--max-concurrent-keygens`: the chart requests one CPU at most.
const DEFAULT_MAX_CONCURRENT_KEYGENS: u16 = 2;

/// Default name of the leader-election Lease (the chart passes its release name).
const DEFAULT_LEASE_NAME: &str = "macp-auth-operator";

/// Settings that cannot work together, reported at startup before anything runs.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error(
        "--leader-election needs a Lease namespace: set --leader-election-namespace \
         (MACP_OPERATOR_LEADER_ELECTION_NAMESPACE) or MACP_OPERATOR_POD_NAMESPACE"
    )]
    MissingLeaseNamespace,
    #[error("--leader-election-lease-name must not be empty")]
    EmptyLeaseName,
    #[error(
        "--leader-election-lease-duration must be a whole number of seconds, at least 1s \
         (Lease.spec.leaseDurationSeconds is an integer), got {0:?}"
    )]
    LeaseDuration(Duration),
    #[error(
        "--leader-election-renew-interval ({renew:?}) must be above zero and shorter than \
         --leader-election-lease-duration ({lease:?}), or the lease lapses between renewals"
    )]
    RenewInterval { renew: Duration, lease: Duration },
}

/// Leader-election settings, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderElection {
    pub namespace: String,
    pub lease_name: String,
    /// Holder identity written into the Lease; unique per running process.
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_interval: Duration,
}

impl Settings {
    /// The namespaces to watch, `None` for all (blank entries ignored).
    pub fn namespaces(&self) -> Option<Vec<String>> {
        let mut ns: Vec<String> = self
            .watch_namespaces
            .iter()
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty())
            .collect();
        ns.sort();
        ns.dedup();
        (!ns.is_empty()).then_some(ns)
    }

    /// The validated leader-election settings, `None` when leader election is off.
    /// `hostname` feeds the identity when no pod name is set.
    pub fn leader_election(&self, hostname: &str) -> Result<Option<LeaderElection>, ConfigError> {
        if !self.leader_election {
            return Ok(None);
        }
        let namespace = non_blank(self.leader_election_namespace.as_deref())
            .or_else(|| non_blank(self.pod_namespace.as_deref()))
            .ok_or(ConfigError::MissingLeaseNamespace)?;
        let lease_name =
            non_blank(Some(&self.leader_election_lease_name)).ok_or(ConfigError::EmptyLeaseName)?;
        let lease = self.leader_election_lease_duration;
        if lease.subsec_nanos() != 0 || lease.as_secs() == 0 || lease.as_secs() > i32::MAX as u64 {
            return Err(ConfigError::LeaseDuration(lease));
        }
        let renew = self.leader_election_renew_interval.unwrap_or(lease / 3);
        if renew.is_zero() || renew >= lease {
            return Err(ConfigError::RenewInterval { renew, lease });
        }
        Ok(Some(LeaderElection {
            namespace,
            lease_name,
            identity: identity(self.pod_name.as_deref(), hostname, std::process::id()),
            lease_duration: lease,
            renew_interval: renew,
        }))
    }
}

/// The pod name when known (unique among running pods), else hostname and pid so that
/// two processes on one host (a developer's laptop) never share an identity.
pub(crate) fn identity(pod_name: Option<&str>, hostname: &str, pid: u32) -> String {
    match non_blank(pod_name) {
        Some(pod) => pod,
        None => {
            let host = hostname.trim();
            let host = if host.is_empty() {
                "unknown-host"
            } else {
                host
            };
            format!("{host}-{pid}")
        }
    }
}

fn non_blank(s: Option<&str>) -> Option<String> {
    s.map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            service_image: DEFAULT_SERVICE_IMAGE.to_string(),
            watch_namespaces: Vec::new(),
            log_format: LogFormat::Text,
            listen_address: SocketAddr::from(([0, 0, 0, 0], 8080)),
            probe_timeout: Duration::from_secs(2),
            resync_interval: Duration::from_secs(300),
            max_concurrent_reconciles: DEFAULT_MAX_CONCURRENT_RECONCILES,
            max_concurrent_keygens: DEFAULT_MAX_CONCURRENT_KEYGENS,
            reconcile_debounce: Duration::from_millis(500),
            pod_name: None,
            pod_namespace: None,
            leader_election: false,
            leader_election_namespace: None,
            leader_election_lease_name: DEFAULT_LEASE_NAME.to_string(),
            leader_election_lease_duration: Duration::from_secs(15),
            leader_election_renew_interval: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        settings: Settings,
    }

    #[test]
    fn defaults_match_default_impl() {
        let cli = Cli::try_parse_from(["x"]).unwrap();
        assert_eq!(cli.settings, Settings::default());
        assert_eq!(cli.settings.namespaces(), None);
        assert!(DEFAULT_SERVICE_IMAGE.ends_with(env!("CARGO_PKG_VERSION")));
    }

    #[test]
    fn flags_parse() {
        let cli = Cli::try_parse_from([
            "x",
            "--service-image",
            "reg/img:2",
            "--watch-namespaces",
            "b, a,,b",
            "--log-format",
            "json",
            "--listen-address",
            "127.0.0.1:9000",
            "--probe-timeout",
            "500ms",
        ])
        .unwrap();
        let s = cli.settings;
        assert_eq!(s.service_image, "reg/img:2");
        assert_eq!(s.namespaces(), Some(vec!["a".to_string(), "b".to_string()]));
        assert_eq!(s.log_format, LogFormat::Json);
        assert_eq!(s.listen_address, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(s.probe_timeout, Duration::from_millis(500));
        assert!(Cli::try_parse_from(["x", "--log-format", "xml"]).is_err());
        assert!(Cli::try_parse_from(["x", "--listen-address", "nope"]).is_err());
    }

    #[test]
    fn concurrency_bounds_parse_and_refuse_zero() {
        let cli = Cli::try_parse_from([
            "x",
            "--max-concurrent-reconciles",
            "64",
            "--max-concurrent-keygens",
            "1",
            "--reconcile-debounce",
            "2s",
        ])
        .unwrap();
        assert_eq!(cli.settings.reconcile_debounce, Duration::from_secs(2));
        assert_eq!(cli.settings.max_concurrent_reconciles, 64);
        assert_eq!(cli.settings.max_concurrent_keygens, 1);
        for flag in ["--max-concurrent-reconciles", "--max-concurrent-keygens"] {
            let err = Cli::try_parse_from(["x", flag, "0"])
                .err()
                .unwrap()
                .to_string();
            assert!(err.contains(flag), "{err}");
        }
    }

    fn with_le(args: &[&str]) -> Settings {
        let argv = ["x", "--leader-election"].iter().chain(args).copied();
        Cli::try_parse_from(argv).unwrap().settings
    }

    #[test]
    fn leader_election_is_off_by_default() {
        assert_eq!(Settings::default().leader_election("h"), Ok(None));
    }

    #[test]
    fn leader_election_defaults() {
        let s = with_le(&["--pod-namespace", "ops", "--pod-name", "op-1"]);
        let le = s.leader_election("h").unwrap().unwrap();
        assert_eq!(
            le,
            LeaderElection {
                namespace: "ops".into(),
                lease_name: DEFAULT_LEASE_NAME.into(),
                identity: "op-1".into(),
                lease_duration: Duration::from_secs(15),
                renew_interval: Duration::from_secs(5),
            }
        );
    }

    #[test]
    fn leader_election_flags_win_over_the_pod_namespace() {
        let s = with_le(&[
            "--pod-namespace",
            "ops",
            "--leader-election-namespace",
            "leases",
            "--leader-election-lease-name",
            "l",
            "--leader-election-lease-duration",
            "2s",
            "--leader-election-renew-interval",
            "500ms",
        ]);
        let le = s.leader_election("node-a").unwrap().unwrap();
        assert_eq!(le.namespace, "leases");
        assert_eq!(le.lease_name, "l");
        assert_eq!(le.lease_duration, Duration::from_secs(2));
        assert_eq!(le.renew_interval, Duration::from_millis(500));
        assert_eq!(le.identity, format!("node-a-{}", std::process::id()));
    }

    #[test]
    fn leader_election_refuses_unusable_settings() {
        let err = with_le(&[]).leader_election("h").unwrap_err();
        assert_eq!(err, ConfigError::MissingLeaseNamespace);
        assert!(
            err.to_string().contains("--leader-election-namespace"),
            "{err}"
        );
        let blank = with_le(&["--leader-election-namespace", " "]);
        assert_eq!(
            blank.leader_election("h"),
            Err(ConfigError::MissingLeaseNamespace)
        );
        let ns = ["--leader-election-namespace", "ops"];
        /// Leader election flags refused: the error says `says`.
        struct Refused {
            name: &'static str,
            flags: [&'static str; 2],
            says: &'static str,
        }
        for Refused { name, flags, says } in [
            Refused {
                name: "an empty lease name",
                flags: ["--leader-election-lease-name", ""],
                says: "lease-name",
            },
            Refused {
                name: "a lease duration in milliseconds",
                flags: ["--leader-election-lease-duration", "1500ms"],
                says: "whole number",
            },
            Refused {
                name: "a lease duration of zero",
                flags: ["--leader-election-lease-duration", "0s"],
                says: "whole number",
            },
            Refused {
                name: "a renew interval as long as the lease",
                flags: ["--leader-election-renew-interval", "15s"],
                says: "shorter than",
            },
            Refused {
                name: "a renew interval of zero",
                flags: ["--leader-election-renew-interval", "0s"],
                says: "above zero",
            },
        ] {
            let args: Vec<&str> = ns.iter().chain(&flags).copied().collect();
            let err = with_le(&args).leader_election("h").unwrap_err();
            assert!(err.to_string().contains(says), "{name}: {err}");
        }
    }

    #[test]
    fn identity_prefers_the_pod_name() {
        assert_eq!(identity(Some("op-7"), "host", 42), "op-7");
        assert_eq!(identity(Some(" "), "host\n", 42), "host-42");
        assert_eq!(identity(None, "", 42), "unknown-host-42");
    }
}
