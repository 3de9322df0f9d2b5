//! The JWKS's HTTP caching (`Cache-Control`, `ETag`, 304) and the record of
//! who fetches it (`GET /verifiers`), on a real loopback socket, with clients
//! coming from different loopback addresses as verifiers on different nodes do.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::{TestServer, ec_jwk, state};
use macp_auth_service::verifiers::VerifiersReport;
use reqwest::{Client, StatusCode, header};

fn server_state(extra: &[(&str, String)]) -> std::sync::Arc<macp_auth_service::app::AppState> {
    let mut vars = vec![
        ("MACP_AUTH_SIGNING_ALG", "ES256".to_string()),
        ("MACP_AUTH_SIGNING_KEY_JSON", ec_jwk("k1").to_string()),
    ];
    vars.extend(extra.iter().cloned());
    state(&vars)
}

/// A client whose connections come from `source` (127.0.0.0/8 is all local).
fn client_from(source: [u8; 4], agent: &str) -> Client {
    Client::builder()
        .local_address(IpAddr::from(source))
        .user_agent(agent)
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

async fn metrics(server: &TestServer) -> String {
    Client::new()
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn report(server: &TestServer) -> VerifiersReport {
    Client::new()
        .get(server.url("/verifiers"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn the_jwks_says_how_long_to_cache_it_and_an_unchanged_one_costs_no_body() {
    let server = TestServer::start(server_state(&[(
        "MACP_AUTH_JWKS_MAX_AGE_SECONDS",
        "42".to_string(),
    )]))
    .await;
    let client = Client::new();
    let first = client
        .get(server.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let cache_control = first.headers()[header::CACHE_CONTROL].to_str().unwrap();
    assert_eq!(cache_control, "public, max-age=42");
    let etag = first.headers()[header::ETAG].to_str().unwrap().to_string();
    assert!(
        etag.starts_with('"') && etag.ends_with('"') && etag.len() > 10,
        "{etag}"
    );
    let body = first.text().await.unwrap();
    assert!(body.contains("\"k1\""), "{body}");

    for if_none_match in [
        etag.clone(),
        format!("W/{etag}"),
        format!("\"other\", {etag}"),
        "*".into(),
    ] {
        let again = client
            .get(server.url("/.well-known/jwks.json"))
            .header(header::IF_NONE_MATCH, &if_none_match)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED, "{if_none_match}");
        assert_eq!(again.headers()[header::ETAG].to_str().unwrap(), etag);
        assert_eq!(
            again.headers()[header::CACHE_CONTROL].to_str().unwrap(),
            "public, max-age=42"
        );
        assert!(again.bytes().await.unwrap().is_empty());
    }
    let other = client
        .get(server.url("/.well-known/jwks.json"))
        .header(header::IF_NONE_MATCH, "\"stale\"")
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::OK);
    assert_eq!(other.text().await.unwrap(), body);

    let metrics = metrics(&server).await;
    assert!(
        metrics.contains("macp_auth_jwks_max_age_seconds 42"),
        "{metrics}"
    );
    assert!(
        metrics.contains("macp_auth_jwks_not_modified_total 4"),
        "{metrics}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_different_jwks_has_a_different_etag() {
    let a = TestServer::start(server_state(&[])).await;
    let b = TestServer::start(state(&[
        ("MACP_AUTH_SIGNING_ALG", "ES256".to_string()),
        ("MACP_AUTH_SIGNING_KEY_JSON", ec_jwk("k2").to_string()),
    ]))
    .await;
    let tag = |s: &TestServer| {
        let url = s.url("/.well-known/jwks.json");
        async move {
            Client::new().get(url).send().await.unwrap().headers()[header::ETAG]
                .to_str()
                .unwrap()
                .to_string()
        }
    };
    assert_ne!(tag(&a).await, tag(&b).await);
    // The default max-age, when the service runs alone.
    let r = Client::new()
        .get(a.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()[header::CACHE_CONTROL], "public, max-age=300");
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn each_verifier_is_recorded_by_address_and_user_agent_with_its_fetches() {
    let server = TestServer::start(server_state(&[])).await;
    let jwks = server.url("/.well-known/jwks.json");
    let runtime_a = client_from([127, 0, 0, 51], "runtime-a");
    let runtime_b = client_from([127, 0, 0, 52], "runtime-b");
    for _ in 0..3 {
        runtime_a.get(&jwks).send().await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    runtime_b.get(&jwks).send().await.unwrap();
    // Minting and health checks are no JWKS fetches.
    runtime_b.get(server.url("/healthz")).send().await.unwrap();

    let r = report(&server).await;
    assert_eq!(r.kids, vec!["k1".to_string()]);
    assert_eq!(r.max_age_seconds, 300);
    assert_eq!(r.capacity, 1024);
    assert_eq!(r.clients.len(), 2, "{r:?}");
    // Most recent first.
    let b = &r.clients[0];
    assert_eq!(b.address, IpAddr::from([127, 0, 0, 52]));
    assert_eq!(b.user_agent.as_deref(), Some("runtime-b"));
    assert_eq!(b.fetches, 1);
    assert_eq!(b.shortest_interval_seconds, None);
    let a = &r.clients[1];
    assert_eq!(a.address, IpAddr::from([127, 0, 0, 51]));
    assert_eq!(a.fetches, 3);
    let shortest = a.shortest_interval_seconds.unwrap();
    assert!((0.04..5.0).contains(&shortest), "{shortest}");
    assert!(a.last_fetch_seconds_ago < a.first_fetch_seconds_ago);
    server.stop().await;
}

#[tokio::test]
async fn the_record_is_bounded_and_what_it_drops_is_counted() {
    let server = TestServer::start(server_state(&[(
        "MACP_AUTH_VERIFIER_RECORDS",
        "2".to_string(),
    )]))
    .await;
    let jwks = server.url("/.well-known/jwks.json");
    for last in [61u8, 62, 63, 64] {
        client_from([127, 0, 0, last], "v")
            .get(&jwks)
            .send()
            .await
            .unwrap();
    }
    let r = report(&server).await;
    let addresses: Vec<IpAddr> = r.clients.iter().map(|c| c.address).collect();
    assert_eq!(
        addresses,
        vec![IpAddr::from([127, 0, 0, 64]), IpAddr::from([127, 0, 0, 63])]
    );
    assert_eq!(r.evicted, 2);
    let metrics = metrics(&server).await;
    assert!(metrics.contains("macp_auth_jwks_clients 2"), "{metrics}");
    assert!(
        metrics.contains("macp_auth_jwks_clients_evicted_total 2"),
        "{metrics}"
    );
    server.stop().await;
}

#[tokio::test]
async fn the_verifier_record_is_not_served_on_the_mint_port() {
    let state = server_state(&[]);
    let main = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mint = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (main_addr, mint_addr): (SocketAddr, SocketAddr) =
        (main.local_addr().unwrap(), mint.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(macp_auth_service::app::serve_with_mint(
        main,
        mint,
        state,
        macp_auth_service::listener::Limits::defaults(1024),
        async move {
            let _ = stopped.await;
        },
    ));
    let on_mint = Client::new()
        .get(format!("http://{mint_addr}/verifiers"))
        .send()
        .await
        .unwrap();
    assert_eq!(on_mint.status(), StatusCode::NOT_FOUND);
    let on_main = Client::new()
        .get(format!("http://{main_addr}/verifiers"))
        .send()
        .await
        .unwrap();
    assert_eq!(on_main.status(), StatusCode::OK);
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_bad_record_count_is_refused_naming_the_variable() {
    let err =
        macp_auth_service::config::Config::from_vars([("MACP_AUTH_VERIFIER_RECORDS", "lots")])
            .unwrap_err();
    assert_eq!(err.variable, "MACP_AUTH_VERIFIER_RECORDS");
    let err =
        macp_auth_service::config::Config::from_vars([("MACP_AUTH_JWKS_MAX_AGE_SECONDS", "-1")])
            .unwrap_err();
    assert_eq!(err.variable, "MACP_AUTH_JWKS_MAX_AGE_SECONDS");
}
