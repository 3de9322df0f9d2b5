//! Signing cost alone, without HTTP: CPU time per JWT for RS256 (2048-bit) and
//! ES256 through `SigningKey::sign_jwt`, to compare with `openssl speed` (also
//! per CPU-second) and to separate crypto cost from request handling.
//! Run by `scripts/bench-service`; `cargo run --release -p macp-auth-service --example sign_throughput`.

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

fn main() -> Result<(), Box<dyn std::error::Error>> {
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
        let start = cpu_micros();
        for _ in 0..rounds {
            std::hint::black_box(key.sign_jwt(&claims)?);
        }
        let per_token = (cpu_micros() - start) / f64::from(rounds);
        println!(
            "  {alg} sign_jwt alone: {per_token:.1} us CPU per token = {:.0} tokens per CPU-second",
            1e6 / per_token
        );
    }
    Ok(())
}
