//! Keyset layouts by kid, and the checks of a layout against the Secret.

use crate::crd::{RotationOutcome, RotationStatus};

use super::KeysetView;

/// A Secret layout by kid. The reconciler fills each slot from key material
/// the Secret already holds; it never invents a key for a plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeysetPlan {
    /// Kid of `active.jwk.json` (a private key the Secret holds in some slot).
    pub active: String,
    /// Kids of `published.jwks.json`, in order (public keys derived from any slot).
    pub published: Vec<String>,
    /// Kid of `next.jwk.json`, removed when `None`.
    pub next: Option<String>,
    /// Kid of `previous.jwk.json`, removed when `None`.
    pub previous: Option<String>,
}

/// Why a plan cannot be laid out from the observed Secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PlanError {
    #[error("the Secret holds no private key {0} for slot {1}")]
    MissingPrivate(String, &'static str),
    #[error("the Secret holds no key {0} to publish")]
    MissingPublic(String),
}

impl KeysetPlan {
    /// Checks that every kid of the plan can be taken from `keyset`: private
    /// slots from a private key, published kids from any key.
    pub(crate) fn check(&self, keyset: &KeysetView) -> Result<(), PlanError> {
        let private = [
            (Some(&self.active), "active"),
            (self.next.as_ref(), "next"),
            (self.previous.as_ref(), "previous"),
        ];
        for (kid, slot) in private {
            if let Some(kid) = kid
                && !keyset.holds_private(kid)
            {
                return Err(PlanError::MissingPrivate(kid.clone(), slot));
            }
        }
        match self.published.iter().find(|k| !keyset.contains(k)) {
            Some(kid) => Err(PlanError::MissingPublic(kid.clone())),
            None => Ok(()),
        }
    }

    /// Whether the Secret already has exactly this layout.
    pub fn matches(&self, keyset: &KeysetView) -> bool {
        keyset.active.kid == self.active
            && keyset.published == self.published
            && keyset.next.as_ref().map(|k| &k.kid) == self.next.as_ref()
            && keyset.previous.as_ref().map(|k| &k.kid) == self.previous.as_ref()
    }

    /// Kids every pod of this keyset serves: active first, then published.
    pub fn served(&self) -> Vec<String> {
        let mut kids = vec![self.active.clone()];
        kids.extend(
            self.published
                .iter()
                .filter(|k| **k != self.active)
                .cloned(),
        );
        kids
    }
}

/// The phases' keysets, by the name the table tests know.
#[cfg(test)]
pub(crate) use super::phase::keyset as desired;

/// A layout by kid (the phases' keysets are in `phase::keyset`).
pub(crate) fn layout(
    active: &str,
    published: &[&str],
    next: Option<&str>,
    previous: Option<&str>,
) -> KeysetPlan {
    KeysetPlan {
        active: active.to_string(),
        published: published.iter().map(|k| k.to_string()).collect(),
        next: next.map(str::to_string),
        previous: previous.map(str::to_string),
    }
}

/// Whether a routine rotation was rolled back and now retires its new key instead of the old one.
pub fn reversed(rot: &RotationStatus) -> bool {
    rot.outcome == Some(RotationOutcome::RolledBack)
}

/// The keyset a rotation ends with: the key that kept signing, alone.
pub(crate) fn final_plan(rot: &RotationStatus) -> Option<KeysetPlan> {
    let (old, new) = (rot.old_kid.as_deref()?, rot.new_kid.as_deref()?);
    let keeper = if reversed(rot) { old } else { new };
    Some(layout(keeper, &[], None, None))
}

/// The keyset while the key that stopped signing drains.
pub(crate) fn draining(old: &str, new: &str, reversed: bool) -> KeysetPlan {
    // A rolled-back new key keeps its private half in `previous` while it drains,
    // so no write ever drops the private key of a key that signed last.
    if reversed {
        layout(old, &[new], None, Some(new))
    } else {
        layout(new, &[old], None, Some(old))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::SigningAlg;
    use crate::rotation::KeyView;

    fn key(kid: &str) -> KeyView {
        KeyView {
            kid: kid.into(),
            alg: SigningAlg::ES256,
            rsa_bits: None,
        }
    }

    #[test]
    fn check_finds_missing_material() {
        let ks = KeysetView {
            active: key("a"),
            published: vec!["p".into()],
            next: Some(key("n")),
            previous: None,
        };
        assert_eq!(layout("n", &["a", "p"], None, Some("a")).check(&ks), Ok(()));
        assert_eq!(
            layout("p", &[], None, None).check(&ks),
            Err(PlanError::MissingPrivate("p".into(), "active"))
        );
        assert_eq!(
            layout("a", &["x"], None, None).check(&ks),
            Err(PlanError::MissingPublic("x".into()))
        );
    }

    #[test]
    fn served_lists_active_first_without_duplicates() {
        assert_eq!(
            layout("a", &["b", "a"], None, None).served(),
            vec!["a", "b"]
        );
    }
}
