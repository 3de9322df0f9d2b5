//! The mint request handling on arbitrary bytes: never a panic, never a 5xx,
//! always a JSON body with either a token or an error.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use macp_auth_service::app::{AppState, mint_from_body};
use macp_auth_service::config::Config;

fn state() -> &'static AppState {
    static STATE: OnceLock<AppState> = OnceLock::new();
    STATE.get_or_init(|| {
        // ES256: signing is cheap, so the fuzzer spends its time on parsing.
        let config = Config::from_vars([("MACP_AUTH_SIGNING_ALG", "ES256")]).unwrap();
        let keys = config.load_keys(|_| unreachable!()).unwrap();
        AppState::new(&config, keys)
    })
}

fuzz_target!(|data: &[u8]| {
    let (status, body) = mint_from_body(state(), data);
    assert!(!status.is_server_error(), "{status}");
    let value: serde_json::Value = serde_json::from_slice(&body).expect("JSON body");
    if status.is_success() {
        assert!(value["token"].is_string());
    } else {
        assert!(value["error"].is_string());
    }
});
