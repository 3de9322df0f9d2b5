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

    /// This operator's pod name (downward API), reported as the events' reporting instance.
    #[arg(long, env = "MACP_OPERATOR_POD_NAME")]
    pub pod_name: Option<String>,
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
            pod_name: None,
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
}
