//! The sandbox's live status line: for every MacpAuth its Ready condition,
//! rotation phase, active kid and ready pods, and the built-in load's rates.

use serde_json::Value;

/// The built-in load's rates over the last interval and its totals.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoadRates {
    pub mints_per_sec: f64,
    pub verifications_per_sec: f64,
    pub minted: u64,
    pub verified: u64,
    /// Failed verifications (at mint time and of held tokens re-verified later).
    pub verify_failures: u64,
    pub mint_errors: u64,
}

fn str_at<'a>(v: &'a Value, p: &str) -> Option<&'a str> {
    v.pointer(p).and_then(Value::as_str)
}

/// `ns/name Ready Idle kid=<kid> pods=2/2` for one MacpAuth, its Deployment
/// (same name and namespace) found in `deployments`.
pub fn macpauth_part(m: &Value, deployments: &[Value]) -> String {
    let ns = str_at(m, "/metadata/namespace").unwrap_or_default();
    let name = str_at(m, "/metadata/name").unwrap_or_default();
    let ready = m
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| {
            cs.iter()
                .find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"))
        });
    let readiness = match ready.and_then(|c| c.get("status")).and_then(Value::as_str) {
        Some("True") => "Ready".to_string(),
        Some(_) => {
            let reason = ready
                .and_then(|c| c.get("reason"))
                .and_then(Value::as_str)
                .unwrap_or("NotReady");
            format!("NotReady({reason})")
        }
        None => "Pending".to_string(),
    };
    let phase = str_at(m, "/status/rotation/phase").unwrap_or("-");
    let kid = str_at(m, "/status/activeKid").unwrap_or("-");
    let deployment = deployments.iter().find(|d| {
        str_at(d, "/metadata/namespace") == Some(ns) && str_at(d, "/metadata/name") == Some(name)
    });
    let int = |p: &str| {
        deployment
            .and_then(|d| d.pointer(p))
            .and_then(Value::as_i64)
            .unwrap_or(0)
    };
    format!(
        "{ns}/{name} {readiness} phase={phase} kid={kid} pods={}/{}",
        int("/status/readyReplicas"),
        int("/spec/replicas"),
    )
}

/// The whole line: every MacpAuth, then the load when it runs.
pub fn line(macpauths: &[Value], deployments: &[Value], load: Option<&LoadRates>) -> String {
    let mut parts: Vec<String> = macpauths
        .iter()
        .map(|m| macpauth_part(m, deployments))
        .collect();
    if parts.is_empty() {
        parts.push("no MacpAuth yet".into());
    }
    let mut out = parts.join(" | ");
    if let Some(l) = load {
        out.push_str(&format!(
            " | load {:.0} mints/s {:.0} verifications/s, {} failed verifications, {} failed mints",
            l.mints_per_sec, l.verifications_per_sec, l.verify_failures, l.mint_errors
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn shows_phase_kid_and_pods() {
        let m = json!({
            "metadata": {"namespace": "macp", "name": "auth"},
            "status": {"activeKid": "k1", "rotation": {"phase": "Propagating"},
                       "conditions": [{"type": "Ready", "status": "True"}]}
        });
        let d = json!({"metadata": {"namespace": "macp", "name": "auth"},
                       "spec": {"replicas": 2}, "status": {"readyReplicas": 1}});
        let other = json!({"metadata": {"namespace": "other", "name": "auth"},
                           "spec": {"replicas": 5}, "status": {"readyReplicas": 5}});
        assert_eq!(
            line(std::slice::from_ref(&m), &[other, d.clone()], None),
            "macp/auth Ready phase=Propagating kid=k1 pods=1/2"
        );
        let load = LoadRates {
            mints_per_sec: 39.6,
            verifications_per_sec: 41.0,
            verify_failures: 0,
            mint_errors: 2,
            ..Default::default()
        };
        assert!(line(&[m], &[d], Some(&load)).ends_with(
            "| load 40 mints/s 41 verifications/s, 0 failed verifications, 2 failed mints"
        ));
    }

    #[test]
    fn before_the_operator_writes_status() {
        let m = json!({"metadata": {"namespace": "macp", "name": "auth"}});
        assert_eq!(
            line(&[m], &[], None),
            "macp/auth Pending phase=- kid=- pods=0/0"
        );
        let m = json!({"metadata": {"namespace": "n", "name": "a"},
                       "status": {"conditions": [{"type": "Ready", "status": "False", "reason": "Degraded"}]}});
        assert!(line(&[m], &[], None).starts_with("n/a NotReady(Degraded)"));
        assert_eq!(line(&[], &[], None), "no MacpAuth yet");
    }
}
