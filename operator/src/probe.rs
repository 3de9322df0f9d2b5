//! Per-pod verification at the I/O edge: what a pod serves in its JWKS and
//! which kid it signs with. Behind a trait so tests substitute a fake.

use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use macp_auth_service::verifiers::VerifiersReport;
use serde_json::Value;

use crate::rotation::evidence::PROBE_USER_AGENT;

/// Sender name of probe tokens, recognisable in the service's logs and metrics.
const PROBE_SENDER: &str = "macp-operator-probe";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    #[error("request to {url} failed: {message}")]
    Request { url: String, message: String },
    #[error("{url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url} answered with an unexpected body: {message}")]
    Body { url: String, message: String },
}

/// Talks to one token-service pod.
#[async_trait]
pub trait PodProber: Send + Sync {
    /// Kids of the pod's `/.well-known/jwks.json`, in order.
    async fn served_kids(&self, ip: &str, port: u16) -> Result<Vec<String>, ProbeError>;
    /// Mints a probe token (`POST /tokens` on `mint_port`, which is `port`
    /// unless the service has a separate mint listener) and returns the `kid`
    /// of its header. `port` serves everything else (`/metrics`).
    async fn signing_kid(&self, ip: &str, port: u16, mint_port: u16) -> Result<String, ProbeError>;
    /// The pod's record of the clients that fetched its JWKS (`GET /verifiers` on `port`).
    async fn verifiers(&self, ip: &str, port: u16) -> Result<VerifiersReport, ProbeError>;
}

/// Kids of a JWKS document, in order.
fn jwks_kids(jwks: &Value) -> Result<Vec<String>, String> {
    let keys = jwks
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("no \"keys\" array")?;
    keys.iter()
        .map(|k| {
            k.get("kid")
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| "a key without kid".to_string())
        })
        .collect()
}

/// The `kid` in a compact JWT's header (no signature check: the pod is only
/// asked which key it signs with).
fn jwt_kid(token: &str) -> Result<String, String> {
    let header = token.split('.').next().ok_or("not a JWT")?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .map_err(|e| format!("header is not base64url: {e}"))?;
    let header: Value =
        serde_json::from_slice(&bytes).map_err(|e| format!("header is not JSON: {e}"))?;
    header
        .get("kid")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| "header has no kid".into())
}

/// The prober used in a cluster: plain HTTP to `podIP:port` with short timeouts.
#[derive(Clone, Debug)]
pub struct HttpProber {
    client: reqwest::Client,
}

impl HttpProber {
    pub fn new(timeout: Duration) -> Result<Self, ProbeError> {
        // kube enables reqwest's rustls backend without choosing a crypto
        // provider; reqwest panics without one. Installing fails harmlessly
        // when one is already installed.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            // Pod IPs are direct: a cluster-wide HTTP proxy must not intercept them.
            .no_proxy()
            // The pods record who fetches their JWKS; the operator's own
            // probes must not count as a verifier.
            .user_agent(PROBE_USER_AGENT)
            .build()
            .map_err(|e| ProbeError::Request {
                url: String::new(),
                message: e.to_string(),
            })?;
        Ok(Self { client })
    }

    async fn json(&self, req: reqwest::RequestBuilder, url: &str) -> Result<Value, ProbeError> {
        let request_err = |e: reqwest::Error| ProbeError::Request {
            url: url.to_string(),
            message: e.to_string(),
        };
        let resp = req.send().await.map_err(request_err)?;
        let status = resp.status();
        if !status.is_success() {
            return Err(ProbeError::Status {
                url: url.to_string(),
                status: status.as_u16(),
            });
        }
        resp.json::<Value>().await.map_err(|e| ProbeError::Body {
            url: url.to_string(),
            message: e.to_string(),
        })
    }
}

impl HttpProber {
    async fn metrics_signing_kid(&self, ip: &str, port: u16) -> Result<String, ProbeError> {
        let url = format!("{}/metrics", base(ip, port));
        let request_err = |e: reqwest::Error| ProbeError::Request {
            url: url.clone(),
            message: e.to_string(),
        };
        let resp = self.client.get(&url).send().await.map_err(request_err)?;
        if !resp.status().is_success() {
            return Err(ProbeError::Status {
                url: url.clone(),
                status: resp.status().as_u16(),
            });
        }
        let text = resp.text().await.map_err(request_err)?;
        metrics_kid(&text).map_err(|message| ProbeError::Body { url, message })
    }
}

/// The `kid` label of `macp_auth_signing_key_info{...} 1` in the service's
/// metrics: the key the process signs with.
fn metrics_kid(text: &str) -> Result<String, String> {
    const INFO: &str = "macp_auth_signing_key_info{";
    let line = text
        .lines()
        .find(|l| l.starts_with(INFO))
        .ok_or_else(|| "no macp_auth_signing_key_info series".to_string())?;
    let labels = &line[INFO.len()..line.find('}').unwrap_or(line.len())];
    labels
        .split(',')
        .find_map(|kv| kv.strip_prefix("kid=\""))
        .and_then(|v| v.strip_suffix('"'))
        .filter(|kid| !kid.is_empty())
        .map(str::to_string)
        .ok_or_else(|| format!("no kid label in {line:?}"))
}

fn base(ip: &str, port: u16) -> String {
    if ip.contains(':') {
        format!("http://[{ip}]:{port}")
    } else {
        format!("http://{ip}:{port}")
    }
}

#[async_trait]
impl PodProber for HttpProber {
    async fn served_kids(&self, ip: &str, port: u16) -> Result<Vec<String>, ProbeError> {
        let url = format!("{}/.well-known/jwks.json", base(ip, port));
        let body = self.json(self.client.get(&url), &url).await?;
        jwks_kids(&body).map_err(|message| ProbeError::Body { url, message })
    }

    async fn verifiers(&self, ip: &str, port: u16) -> Result<VerifiersReport, ProbeError> {
        let url = format!("{}/verifiers", base(ip, port));
        let body = self.json(self.client.get(&url), &url).await?;
        serde_json::from_value(body).map_err(|e| ProbeError::Body {
            url,
            message: e.to_string(),
        })
    }

    async fn signing_kid(&self, ip: &str, port: u16, mint_port: u16) -> Result<String, ProbeError> {
        let url = format!("{}/tokens", base(ip, mint_port));
        let req = self
            .client
            .post(&url)
            .json(&serde_json::json!({ "sender": PROBE_SENDER, "ttl_seconds": 1 }));
        let body = match self.json(req, &url).await {
            // Caller authentication is on (`spec.callerAuth`): by design the
            // operator holds no caller token (it never reads that Secret), so
            // it reads the kid the process loaded as its signing key from the
            // service's own `/metrics` instead. Weaker than a minted token (it
            // shows the loaded configuration, not a signature), but the JWKS
            // check and the verifiers' own checks still cover the key itself.
            Err(ProbeError::Status { status: 401, .. }) => {
                return self.metrics_signing_kid(ip, port).await;
            }
            other => other?,
        };
        let token = body
            .get("token")
            .and_then(Value::as_str)
            .ok_or_else(|| ProbeError::Body {
                url: url.clone(),
                message: "no \"token\" string".into(),
            })?;
        jwt_kid(token).map_err(|message| ProbeError::Body { url, message })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn kids_of_a_jwks() {
        assert_eq!(
            jwks_kids(&json!({"keys": [{"kid": "a"}, {"kid": "b"}]})),
            Ok(vec!["a".to_string(), "b".to_string()])
        );
        assert!(jwks_kids(&json!({"keys": [{"kty": "EC"}]})).is_err());
        assert!(jwks_kids(&json!([])).is_err());
    }

    #[test]
    fn kid_of_a_jwt_header() {
        let h = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"alg":"ES256","kid":"k-1","typ":"JWT"}"#);
        assert_eq!(jwt_kid(&format!("{h}.e30.sig")), Ok("k-1".to_string()));
        assert!(jwt_kid("!!!.e30.sig").is_err());
        let no_kid = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#);
        assert!(jwt_kid(&format!("{no_kid}.e30.")).is_err());
    }

    #[test]
    fn kid_of_the_metrics_info_series() {
        let text = "# HELP macp_auth_signing_key_info The active key.\n\
                    macp_auth_signing_key_info{kid=\"k-7\",alg=\"ES256\"} 1\n\
                    macp_auth_published_keys 2\n";
        assert_eq!(metrics_kid(text), Ok("k-7".to_string()));
        assert!(metrics_kid("macp_auth_published_keys 2\n").is_err());
        assert!(metrics_kid("macp_auth_signing_key_info{alg=\"ES256\"} 1\n").is_err());
    }

    #[tokio::test]
    async fn with_caller_auth_the_signing_kid_comes_from_metrics() {
        use axum::http::StatusCode;
        use axum::{Router, routing::get, routing::post};
        let app = Router::new()
            .route("/tokens", post(|| async { StatusCode::UNAUTHORIZED }))
            .route(
                "/metrics",
                get(|| async { "macp_auth_signing_key_info{kid=\"k-3\",alg=\"RS256\"} 1\n" }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let p = HttpProber::new(Duration::from_secs(2)).unwrap();
        assert_eq!(p.signing_kid("127.0.0.1", port, port).await.unwrap(), "k-3");
    }

    #[tokio::test]
    async fn http_prober_reads_a_real_endpoint() {
        use axum::{Json, Router, routing::get, routing::post};
        let h = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"kid":"k-9"}"#);
        let token = format!("{h}.e30.sig");
        let app = Router::new()
            .route(
                "/.well-known/jwks.json",
                get(|| async { Json(json!({"keys": [{"kid": "k-9"}, {"kid": "k-8"}]})) }),
            )
            .route(
                "/tokens",
                post(move || async move { Json(json!({"token": token})) }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let p = HttpProber::new(Duration::from_secs(2)).unwrap();
        assert_eq!(
            p.served_kids("127.0.0.1", port).await.unwrap(),
            vec!["k-9", "k-8"]
        );
        assert_eq!(p.signing_kid("127.0.0.1", port, port).await.unwrap(), "k-9");
        // Nothing listens on port 1: a request error, not a panic.
        assert!(matches!(
            p.served_kids("127.0.0.1", 1).await,
            Err(ProbeError::Request { .. })
        ));
    }

    #[tokio::test]
    async fn with_a_mint_port_the_probe_mints_there_and_reads_metrics_on_the_main_port() {
        use axum::http::StatusCode;
        use axum::{Json, Router, routing::get, routing::post};
        let h = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"kid":"k-m"}"#);
        let token = format!("{h}.e30.sig");
        let main = Router::new()
            .route("/tokens", post(|| async { StatusCode::NOT_FOUND }))
            .route(
                "/metrics",
                get(|| async { "macp_auth_signing_key_info{kid=\"k-5\",alg=\"RS256\"} 1\n" }),
            );
        let mint = Router::new().route(
            "/tokens",
            post(move || async move { Json(json!({"token": token})) }),
        );
        let serve = |app: Router| async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
            port
        };
        let (port, mint_port) = (serve(main).await, serve(mint).await);
        let p = HttpProber::new(Duration::from_secs(2)).unwrap();
        assert_eq!(
            p.signing_kid("127.0.0.1", port, mint_port).await.unwrap(),
            "k-m"
        );
        // The main port refuses minting: asking it there is an error, not a kid.
        assert!(p.signing_kid("127.0.0.1", port, port).await.is_err());
        // Caller auth on the mint port: the kid comes from the main port's metrics.
        let locked = Router::new().route("/tokens", post(|| async { StatusCode::UNAUTHORIZED }));
        let locked_port = serve(locked).await;
        assert_eq!(
            p.signing_kid("127.0.0.1", port, locked_port).await.unwrap(),
            "k-5"
        );
    }
}
