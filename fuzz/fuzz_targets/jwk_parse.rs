//! The JWK parsers on arbitrary bytes: a private signing JWK for both
//! algorithms and a verification JWKS must return `Ok` or `Err`, never panic,
//! and a parsed key's public JWK must hold no private member.
#![no_main]

use libfuzzer_sys::fuzz_target;
use macp_auth_service::keys::{Alg, SigningKey, parse_verification_keys};

const PRIVATE: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for alg in [Alg::RS256, Alg::ES256] {
        if let Ok(key) = SigningKey::from_jwk_json(text, alg) {
            let public = key.public_jwk();
            for member in PRIVATE {
                assert!(public.get(member).is_none(), "{member} published");
            }
        }
    }
    if let Ok(keys) = parse_verification_keys(text) {
        for key in &keys {
            for member in PRIVATE {
                assert!(key.get(member).is_none(), "{member} published");
            }
        }
    }
});
