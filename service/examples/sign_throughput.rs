//! Signing cost alone, without HTTP: CPU time per JWT for RS256 (2048-bit) and
//! ES256 through `SigningKey::sign_jwt`, to compare with `openssl speed` (also
//! per CPU-second) and to separate crypto cost from request handling.
//!
//! It also times a bare RS256 signature two ways with the same aws-lc-rs key:
//! parsed once (what `SigningKey` does) and parsed from its PKCS#8 DER before
//! every signature (what a signer that keeps the key as bytes does per token,
//! as `jsonwebtoken`'s `aws_lc_rs` backend does in `encode`). Given openssl's
//! one-process `rsa2048` sign/s as its argument, it prints each as a share of
//! that rate: the figure README's "Crypto choices" cites
//! (docs/performance.md, "Signing with a key parsed once").
//!
//! Run by `scripts/bench-service`;
//! `cargo run --release -p macp-auth-service --example sign_throughput [openssl-rsa2048-sign-per-s]`.

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use macp_auth_service::keys::{Alg, SigningKey};
use serde_json::json;

/// User plus system CPU time of this process, in microseconds.
fn cpu_micros() -> f64 {
    // SAFETY: getrusage only writes into the zero-initialised struct we own.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let micros = |t: libc::timeval| t.tv_sec as f64 * 1e6 + t.tv_usec as f64;
    micros(usage.ru_utime) + micros(usage.ru_stime)
}

/// Runs `sign` `rounds` times; the CPU-seconds it took, per call.
fn per_call(
    rounds: u32,
    mut sign: impl FnMut() -> Result<(), Box<dyn std::error::Error>>,
) -> Result<f64, Box<dyn std::error::Error>> {
    let start = cpu_micros();
    for _ in 0..rounds {
        sign()?;
    }
    Ok((cpu_micros() - start) / 1e6 / f64::from(rounds))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let openssl_rsa2048: Option<f64> = match std::env::args().nth(1) {
        Some(rate) => Some(rate.parse()?),
        None => None,
    };
    let claims = json!({
        "iss": "macp-auth-service",
        "aud": "macp-runtime",
        "sub": "agent://bench",
        "iat": 1_800_000_000u64,
        "exp": 1_800_000_120u64,
        "macp_scopes": {"allowed_modes": ["decision", "task"], "can_start_sessions": true}
    });
    for (alg, rounds) in [(Alg::RS256, 2_000u32), (Alg::ES256, 50_000)] {
        let (key, _) = SigningKey::generate(alg, "bench", 2048)?;
        let seconds = per_call(rounds, || {
            std::hint::black_box(key.sign_jwt(&claims)?);
            Ok(())
        })?;
        println!(
            "  {alg} sign_jwt alone: {:.1} us CPU per token = {:.0} tokens per CPU-second",
            seconds * 1e6,
            1.0 / seconds
        );
    }

    // A JWT's signing input is a few hundred bytes; its length does not matter
    // next to the RSA operation.
    let message = [b'x'; 300];
    let der = KeyPair::generate(KeySize::Rsa2048)
        .map_err(|_| "RSA key generation failed")?
        .as_der()
        .map_err(|_| "PKCS#8 encoding failed")?;
    let rng = SystemRandom::new();
    let once = RsaKeyPair::from_pkcs8(der.as_ref())?;
    let mut signature = vec![0; once.public_modulus_len()];
    let parsed_once = per_call(2_000, || {
        once.sign(&RSA_PKCS1_SHA256, &rng, &message, &mut signature)
            .map_err(|_| "signing failed")?;
        Ok(())
    })?;
    let parsed_each_time = per_call(1_000, || {
        let key = RsaKeyPair::from_pkcs8(der.as_ref())?;
        key.sign(&RSA_PKCS1_SHA256, &rng, &message, &mut signature)
            .map_err(|_| "signing failed")?;
        Ok(())
    })?;
    for (how, seconds) in [
        ("key parsed once", parsed_once),
        ("key parsed per signature", parsed_each_time),
    ] {
        let share = openssl_rsa2048
            .filter(|rate| *rate > 0.0)
            .map(|rate| format!(" = {:.2} of openssl's rsa2048 sign/s", 1.0 / seconds / rate))
            .unwrap_or_default();
        println!(
            "  RS256 signature, {how}: {:.0} per CPU-second{share}",
            1.0 / seconds
        );
    }
    Ok(())
}
