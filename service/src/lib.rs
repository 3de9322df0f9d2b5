//! The MACP auth-service library: configuration, key handling and the HTTP app.
//!
//! `config` turns environment variables into a validated [`config::Config`],
//! `keys` parses, generates and publishes JWKs and signs JWTs (the operator
//! uses it too), `app` builds the axum router from an [`app::AppState`], and
//! `metrics` holds the Prometheus registry, and `listener` serves a router
//! under header and request timeouts and a connection cap. The binary's `main` owns all side
//! effects (environment, files, sockets, signals, stdout).

pub mod app;
pub mod audit;
pub mod callers;
pub mod config;
pub mod exposition;
pub mod keys;
pub mod listener;
pub mod metrics;
pub mod ratelimit;
pub mod verifiers;
