//! Contract with the MACP runtime's own verifier: the `macp-auth` crate's
//! `JwtBearerResolver::from_url` fetches our JWKS over HTTP and checks tokens
//! exactly as the runtime does.

mod common;

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::Request;
use common::{TestServer, ec_jwk, rsa_jwk, state};
use macp_auth::auth::resolvers::jwt_bearer::{JwtBearerResolver, JwtConfig};
use macp_auth::auth::{AuthError, AuthResolver, ResolvedIdentity};
use macp_auth_service::app::{self, AppState};
use macp_auth_service::keys::{Alg, SigningKey};
use reqwest::Client;
use serde_json::{Value, json};
use tonic::metadata::MetadataMap;
use tower::ServiceExt as _;

const ISSUER: &str = "macp-auth-service";
const AUDIENCE: &str = "macp-runtime";

fn resolver(jwks_url: String, cache_ttl_secs: u64) -> JwtBearerResolver {
    let config = JwtConfig {
        issuer: ISSUER.to_string(),
        audience: AUDIENCE.to_string(),
        algorithms: vec![
            jsonwebtoken::Algorithm::RS256,
            jsonwebtoken::Algorithm::ES256,
        ],
    };
    JwtBearerResolver::from_url(config, jwks_url, cache_ttl_secs)
}

async fn verify(resolver: &JwtBearerResolver, token: &str) -> Result<ResolvedIdentity, AuthError> {
    let mut metadata = MetadataMap::new();
    metadata.insert("authorization", format!("Bearer {token}").parse().unwrap());
    resolver
        .resolve(&metadata)
        .await
        .map(|identity| identity.expect("the JWT resolver must claim a bearer JWT"))
}

async fn mint(base: &str, body: Value) -> String {
    let response: Value = Client::new()
        .post(format!("{base}/tokens"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    response["token"].as_str().unwrap().to_string()
}

fn scopes() -> Value {
    json!({
        "allowed_modes": ["decision", "proposal"],
        "can_start_sessions": false,
        "max_open_sessions": 3,
        "can_manage_mode_registry": true,
        "is_observer": true,
        "vendor_extension": {"kept": true}
    })
}

fn assert_identity(identity: &ResolvedIdentity, sender: &str) {
    assert_eq!(identity.sender, sender);
    let modes = identity.allowed_modes.as_ref().unwrap();
    assert_eq!(modes.len(), 2);
    assert!(modes.contains("decision") && modes.contains("proposal"));
    assert!(!identity.can_start_sessions);
    assert_eq!(identity.max_open_sessions, Some(3));
    assert!(identity.can_manage_mode_registry);
    assert!(identity.is_observer);
    assert_eq!(identity.resolver, "jwt_bearer");
}

#[tokio::test]
async fn runtime_verifier_accepts_rs256_and_es256_tokens() {
    for (alg, jwk) in [
        ("RS256", rsa_jwk().clone()),
        ("ES256", ec_jwk("ec-contract")),
    ] {
        let server = TestServer::start(state(&[
            ("MACP_AUTH_SIGNING_ALG", alg.to_string()),
            ("MACP_AUTH_SIGNING_KEY_JSON", jwk.to_string()),
        ]))
        .await;
        let verifier = resolver(server.url("/.well-known/jwks.json"), 300);
        let sender = format!("agent://{alg}");
        let token = mint(
            &server.base,
            json!({"sender": sender, "scopes": scopes(), "ttl_seconds": 60}),
        )
        .await;
        let identity = verify(&verifier, &token).await.unwrap();
        assert_identity(&identity, &sender);

        // Omitted scopes: the runtime's defaults apply.
        let token = mint(&server.base, json!({"sender": "plain"})).await;
        let identity = verify(&verifier, &token).await.unwrap();
        assert_eq!(identity.sender, "plain");
        assert!(identity.allowed_modes.is_none());
        assert!(identity.can_start_sessions);
        assert!(!identity.is_observer);

        // A token signed for another audience is refused: the check is real.
        let other = TestServer::start(state(&[
            ("MACP_AUTH_SIGNING_ALG", alg.to_string()),
            ("MACP_AUTH_SIGNING_KEY_JSON", jwk.to_string()),
            ("MACP_AUTH_AUDIENCE", "someone-else".to_string()),
        ]))
        .await;
        let foreign = mint(&other.base, json!({"sender": "x"})).await;
        assert!(verify(&verifier, &foreign).await.is_err());
        other.stop().await;
        server.stop().await;
    }
}

/// Serves whichever `AppState` is current, so a test can change the keyset
/// behind a stable URL (as a rolling restart does behind a Service).
struct Swappable {
    current: Arc<RwLock<Arc<AppState>>>,
}

impl Swappable {
    async fn start(initial: Arc<AppState>) -> (Self, String) {
        let current = Arc::new(RwLock::new(initial));
        let shared = current.clone();
        let app = Router::new().fallback(move |request: Request| {
            let state = shared.read().unwrap().clone();
            async move { app::router(state).oneshot(request).await.unwrap() }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (Swappable { current }, base)
    }

    fn swap(&self, next: Arc<AppState>) {
        *self.current.write().unwrap() = next;
    }
}

fn sign_directly(key: &SigningKey, sender: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    key.sign_jwt(&json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": sender,
        "iat": now,
        "exp": now + 300,
        "macp_scopes": scopes(),
    }))
    .unwrap()
}

#[tokio::test]
async fn published_verification_key_verifies_and_removed_key_stops_verifying() {
    // A key that is published but does not sign (prepublished or retiring).
    let (retiring, retiring_jwk) = SigningKey::generate(Alg::ES256, "retiring-1", 0).unwrap();
    let active = rsa_jwk().to_string();
    let with_retiring = state(&[
        ("MACP_AUTH_SIGNING_KEY_JSON", active.clone()),
        (
            "MACP_AUTH_VERIFICATION_KEYS_JSON",
            // The private JWK on purpose: the service must strip it.
            json!({ "keys": [retiring_jwk] }).to_string(),
        ),
    ]);
    assert_eq!(with_retiring.published_kids, ["rsa-test-1", "retiring-1"]);
    let (server, base) = Swappable::start(with_retiring).await;

    let verifier = resolver(format!("{base}/.well-known/jwks.json"), 1);
    let old_token = sign_directly(&retiring, "agent://old");
    assert_identity(&verify(&verifier, &old_token).await.unwrap(), "agent://old");
    let new_token = mint(&base, json!({"sender": "agent://new", "scopes": scopes()})).await;
    assert_identity(&verify(&verifier, &new_token).await.unwrap(), "agent://new");

    // Retire the key: the next JWKS no longer has it.
    server.swap(state(&[("MACP_AUTH_SIGNING_KEY_JSON", active)]));
    // After the cache TTL the verifier refetches and refuses the token.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let refused = verify(&verifier, &old_token).await.unwrap_err();
    assert!(
        matches!(refused, AuthError::InvalidCredential(_)),
        "{refused}"
    );
    // Tokens of the active key still verify.
    assert_identity(&verify(&verifier, &new_token).await.unwrap(), "agent://new");
}
