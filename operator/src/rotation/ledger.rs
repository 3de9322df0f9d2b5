//! The drain ledger: for every key in the Secret, the longest token lifetime
//! any pod could mint with while it signed (docs/architecture.md, "The drain
//! ledger").
//!
//! A key's tokens live as long as the max TTL *in effect when they were
//! minted*, not the one in the spec now. Lowering `maxTtlSeconds` in the same
//! apply as a rotation request (or an operator restart in between) must not
//! shorten the drain of a key that signed under a higher limit, so the drain
//! is computed from this ledger, persisted in `status.keys`, never from the
//! current spec alone.

use chrono::{DateTime, Utc};

use crate::crd::{KeyRole, KeyStatus, MacpAuthSpec, VERIFIER_LEEWAY_SECONDS};
use crate::rotation::{KeysetPlan, KeysetView};

/// `status.keys` for `keyset`: every key in the Secret with its role, the
/// ledger carried over from `previous`, and the ledgers of the keys that may
/// sign now raised to `max_ttl_in_effect` (the highest max TTL rendered or
/// still running on any pod this round). Those are the active key and, while
/// `rolling_out` (pods of an older template may still run), the previous
/// one: a round whose status write was lost after the write that demoted it
/// must not have lost what its last pods minted with. Keys no longer in the
/// Secret are dropped.
pub fn update(
    previous: &[KeyStatus],
    keyset: &KeysetView,
    max_ttl_in_effect: i64,
    rolling_out: bool,
) -> Vec<KeyStatus> {
    keyset
        .kids()
        .into_iter()
        .map(|kid| {
            let role = role_of(keyset, &kid);
            let mut entry = entry_for(previous, &kid, role);
            let may_sign = role == KeyRole::Active || (rolling_out && role == KeyRole::Previous);
            if may_sign {
                entry.max_token_ttl_seconds = Some(
                    entry
                        .max_token_ttl_seconds
                        .map_or(max_ttl_in_effect, |t| t.max(max_ttl_in_effect)),
                );
            }
            if role == KeyRole::Active {
                // Signing again (a rollback made it active): any earlier end no longer holds.
                entry.stopped_signing_at = None;
                entry.retire_after = None;
                entry.retire_reason = None;
            }
            entry
        })
        .collect()
}

/// `kid`'s entry in `keys` (its ledger and retirement kept), or a new one,
/// in `role`.
fn entry_for(keys: &[KeyStatus], kid: &str, role: KeyRole) -> KeyStatus {
    let mut entry = keys
        .iter()
        .find(|k| k.kid == kid)
        .cloned()
        .unwrap_or(KeyStatus {
            kid: kid.to_string(),
            role,
            max_token_ttl_seconds: None,
            stopped_signing_at: None,
            retire_after: None,
            retire_reason: None,
        });
    entry.role = role;
    entry
}

fn role_of(keyset: &KeysetView, kid: &str) -> KeyRole {
    if keyset.active.kid == kid {
        KeyRole::Active
    } else if keyset.next.as_ref().is_some_and(|k| k.kid == kid) {
        KeyRole::Next
    } else if keyset.previous.as_ref().is_some_and(|k| k.kid == kid) {
        KeyRole::Previous
    } else {
        KeyRole::Published
    }
}

/// `status.keys` once this round's write of `plan` lands: the keys the plan
/// keeps, in their new roles, with their ledgers; the keys it drops are gone
/// from the Secret, so from the status too. The status then describes the
/// Secret after the write, like the rest of the decision's status.
pub(crate) fn after_plan(keys: &[KeyStatus], plan: &KeysetPlan) -> Vec<KeyStatus> {
    let mut kids: Vec<&String> = vec![&plan.active];
    for kid in plan
        .published
        .iter()
        .chain(plan.next.iter())
        .chain(plan.previous.iter())
    {
        if !kids.contains(&kid) {
            kids.push(kid);
        }
    }
    kids.into_iter()
        .map(|kid| {
            let role = if *kid == plan.active {
                KeyRole::Active
            } else if plan.next.as_ref() == Some(kid) {
                KeyRole::Next
            } else if plan.previous.as_ref() == Some(kid) {
                KeyRole::Previous
            } else {
                KeyRole::Published
            };
            entry_for(keys, kid, role)
        })
        .collect()
}

/// How long a key that stopped signing must stay published, and why: its
/// ledger plus the verifiers' leeway, never less than `drainSeconds` in
/// effect. A key with no ledger entry (it signed before the ledger existed)
/// counts the spec's max TTL.
pub fn drain_seconds(spec: &MacpAuthSpec, keys: &[KeyStatus], kid: &str) -> (i64, String) {
    let configured = spec.effective_drain_seconds();
    let ledger = keys
        .iter()
        .find(|k| k.kid == kid)
        .and_then(|k| k.max_token_ttl_seconds);
    let lifetime = ledger.unwrap_or(spec.max_ttl_seconds);
    let needed = lifetime.saturating_add(VERIFIER_LEEWAY_SECONDS);
    if needed > configured {
        (
            needed,
            format!(
                "tokens it signed live up to {lifetime}s (the highest max TTL in effect while it signed) + {VERIFIER_LEEWAY_SECONDS}s verifier leeway"
            ),
        )
    } else if spec.rotation.drain_seconds.is_some() {
        (
            configured,
            format!("rotation.drainSeconds is {configured}s"),
        )
    } else {
        (
            configured,
            format!(
                "tokens it signed live up to {lifetime}s + {VERIFIER_LEEWAY_SECONDS}s verifier leeway"
            ),
        )
    }
}

/// Records on `kid`'s entry that it stopped signing at `at` and may leave the
/// JWKS at `retire_after`, for `reason`.
pub(crate) fn mark_stopped(
    keys: &mut [KeyStatus],
    kid: &str,
    at: DateTime<Utc>,
    retire_after: DateTime<Utc>,
    reason: String,
) {
    if let Some(entry) = keys.iter_mut().find(|k| k.kid == kid) {
        entry.stopped_signing_at = Some(at);
        entry.retire_after = Some(retire_after);
        entry.retire_reason = Some(reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::spec;
    use crate::rotation::tests::keyset;

    fn ttl_of(keys: &[KeyStatus], kid: &str) -> Option<i64> {
        keys.iter().find(|k| k.kid == kid)?.max_token_ttl_seconds
    }

    struct Step {
        what: &'static str,
        keyset: KeysetView,
        in_effect: i64,
        k1: Option<i64>,
        k2: Option<i64>,
    }

    #[test]
    fn the_ledger_keeps_the_highest_ttl_a_key_signed_under_across_spec_changes_and_restarts() {
        let steps = [
            Step {
                what: "K1 signs under 600",
                keyset: keyset("k1", &[], None, None),
                in_effect: 600,
                k1: Some(600),
                k2: None,
            },
            Step {
                what: "maxTtlSeconds lowered to 5: K1 keeps 600",
                keyset: keyset("k1", &[], None, None),
                in_effect: 5,
                k1: Some(600),
                k2: None,
            },
            Step {
                what: "K2 generated and published: it has not signed",
                keyset: keyset("k1", &["k2"], Some("k2"), None),
                in_effect: 5,
                k1: Some(600),
                k2: None,
            },
            Step {
                what: "K2 active under the emergency clamp of 30",
                keyset: keyset("k2", &["k1"], None, Some("k1")),
                in_effect: 30,
                k1: Some(600),
                k2: Some(30),
            },
            Step {
                what: "the clamp lifts: K2's pods mint up to 300",
                keyset: keyset("k2", &["k1"], None, Some("k1")),
                in_effect: 300,
                k1: Some(600),
                k2: Some(300),
            },
        ];
        let mut keys: Vec<KeyStatus> = Vec::new();
        for step in steps {
            keys = update(&keys, &step.keyset, step.in_effect, false);
            // A restarted operator starts from the persisted status: a JSON round trip.
            let text = serde_json::to_string(&keys).unwrap();
            keys = serde_json::from_str(&text).unwrap();
            assert_eq!(ttl_of(&keys, "k1"), step.k1, "{}", step.what);
            assert_eq!(ttl_of(&keys, "k2"), step.k2, "{}", step.what);
        }
        // K1 retired: it leaves the ledger with the Secret.
        keys = update(&keys, &keyset("k2", &[], None, None), 300, false);
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].role, KeyRole::Active);
    }

    #[test]
    fn roles_follow_the_secret_slots() {
        let keys = update(
            &[],
            &keyset("a", &["b", "c"], Some("b"), Some("c")),
            60,
            false,
        );
        let roles: Vec<(&str, KeyRole)> = keys.iter().map(|k| (k.kid.as_str(), k.role)).collect();
        assert_eq!(
            roles,
            vec![
                ("a", KeyRole::Active),
                ("b", KeyRole::Next),
                ("c", KeyRole::Previous)
            ]
        );
        let published_only = update(&[], &keyset("a", &["z"], None, None), 60, false);
        assert_eq!(published_only[1].role, KeyRole::Published);
    }

    #[test]
    fn the_drain_is_the_ledger_plus_leeway_never_below_drain_seconds() {
        let lowered = spec(serde_json::json!({"maxTtlSeconds": 5}));
        let keys = update(&[], &keyset("k1", &[], None, None), 600, false);
        let keys = update(&keys, &keyset("k1", &[], None, None), 5, false);
        let (secs, why) = drain_seconds(&lowered, &keys, "k1");
        assert_eq!(secs, 660, "600 s tokens + 60 s, not 5 + 60: {why}");
        assert!(why.contains("600s"), "{why}");

        let pinned =
            spec(serde_json::json!({"maxTtlSeconds": 5, "rotation": {"drainSeconds": 900}}));
        let (secs, why) = drain_seconds(&pinned, &keys, "k1");
        assert_eq!(secs, 900, "{why}");
        assert!(why.contains("drainSeconds"), "{why}");

        // A key the ledger never saw sign counts the spec.
        let (secs, _) = drain_seconds(&lowered, &keys, "unknown");
        assert_eq!(secs, 65);
    }

    #[test]
    fn after_a_write_the_status_lists_the_keys_the_plan_keeps_in_their_new_roles() {
        let mut keys = update(&[], &keyset("k2", &["k1"], None, Some("k1")), 60, false);
        if let Some(k1) = keys.iter_mut().find(|k| k.kid == "k1") {
            k1.max_token_ttl_seconds = Some(600);
        }
        // The retiring write: k2 alone.
        let last = KeysetPlan {
            active: "k2".into(),
            published: vec![],
            next: None,
            previous: None,
        };
        let after = after_plan(&keys, &last);
        assert_eq!(after.len(), 1);
        assert_eq!(
            (after[0].kid.as_str(), after[0].role),
            ("k2", KeyRole::Active)
        );
        assert_eq!(after[0].max_token_ttl_seconds, Some(60));
        // A rollback write: k1 active again, k2 published and previous, ledgers kept.
        let back = KeysetPlan {
            active: "k1".into(),
            published: vec!["k2".into()],
            next: None,
            previous: Some("k2".into()),
        };
        let after = after_plan(&keys, &back);
        let roles: Vec<(&str, KeyRole, Option<i64>)> = after
            .iter()
            .map(|k| (k.kid.as_str(), k.role, k.max_token_ttl_seconds))
            .collect();
        assert_eq!(
            roles,
            vec![
                ("k1", KeyRole::Active, Some(600)),
                ("k2", KeyRole::Previous, Some(60))
            ]
        );
    }

    #[test]
    fn while_a_rollout_runs_the_previous_key_may_still_sign_and_its_ledger_grows() {
        let demoted = keyset("k2", &["k1"], None, Some("k1"));
        let keys = update(&[], &demoted, 60, false);
        // Pods of the older template, still signing with k1, run with 600.
        let rolling = update(&keys, &demoted, 600, true);
        let ttl = |keys: &[KeyStatus], kid: &str| {
            keys.iter()
                .find(|k| k.kid == kid)
                .and_then(|k| k.max_token_ttl_seconds)
        };
        assert_eq!(ttl(&rolling, "k1"), Some(600));
        assert_eq!(ttl(&rolling, "k2"), Some(600));
        // Once no pod of the older template is left, k1 signs no more.
        let done = update(&keys, &demoted, 900, false);
        assert_eq!(ttl(&done, "k1"), None);
        assert_eq!(ttl(&done, "k2"), Some(900));
    }

    #[test]
    fn a_key_that_signs_again_loses_its_retirement() {
        let t = chrono::DateTime::<Utc>::UNIX_EPOCH;
        let mut keys = update(&[], &keyset("k2", &["k1"], None, Some("k1")), 60, false);
        let mut with_k1 = keys.clone();
        with_k1.push(KeyStatus {
            kid: "k1".into(),
            role: KeyRole::Previous,
            max_token_ttl_seconds: Some(60),
            stopped_signing_at: None,
            retire_after: None,
            retire_reason: None,
        });
        mark_stopped(&mut with_k1, "k1", t, t, "drain".into());
        keys = update(
            &with_k1,
            &keyset("k1", &["k2"], None, Some("k2")),
            60,
            false,
        );
        let k1 = keys.iter().find(|k| k.kid == "k1").unwrap();
        assert_eq!(k1.role, KeyRole::Active);
        assert_eq!(k1.retire_after, None);
    }
}
