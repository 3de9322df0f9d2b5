//! The keyset last parsed from each signing-keys Secret, by its uid and
//! resourceVersion. Parsing validates every private key with the service's
//! key module (an EC point multiplication or an RSA key check each), and
//! every round reads the Secret: in a storm of rotations that parsing was
//! the largest part of a round's own CPU. The same uid and resourceVersion
//! are the same bytes, already validated, so the earlier result stands; a
//! new version reuses the earlier version's keys whose text it still holds
//! ([`Keyset::from_secret_data_reusing`]), so only a new key is validated.

use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;

use crate::keyset::{Keyset, KeysetError};

/// What a parse is remembered by: the Secret's uid and resourceVersion.
type Version = (String, String);

#[derive(Default)]
pub(super) struct ParsedKeysets {
    /// `(namespace, name)` → the version parsed and its keyset. One entry
    /// per Secret: a new version replaces the old one.
    last: Mutex<HashMap<(String, String), (Version, Keyset)>>,
}

impl ParsedKeysets {
    /// The keyset `secret` holds, parsed unless this version was parsed before.
    pub(super) fn parse(&self, secret: &Secret) -> Result<Keyset, KeysetError> {
        let empty = BTreeMap::<String, ByteString>::new();
        let data = secret.data.as_ref().unwrap_or(&empty);
        let (Some(uid), Some(rv)) = (secret.uid(), secret.resource_version()) else {
            // Nothing to know it by (never from the API server): parse.
            return Keyset::from_secret_data(data);
        };
        let place = (secret.namespace().unwrap_or_default(), secret.name_any());
        let version = (uid, rv);
        let known = match self.last.lock().get(&place) {
            Some((seen, keyset)) if *seen == version => return Ok(keyset.clone()),
            Some((_, keyset)) => Some(keyset.clone()),
            None => None,
        };
        // A new version mostly holds the same keys in a new layout: only
        // the new ones are parsed and validated.
        let keyset = Keyset::from_secret_data_reusing(data, known.as_ref())?;
        self.last.lock().insert(place, (version, keyset.clone()));
        Ok(keyset)
    }

    /// Drops what is remembered of the Secret `name` in `namespace`.
    pub(super) fn forget(&self, namespace: &str, name: &str) {
        self.last
            .lock()
            .remove(&(namespace.to_string(), name.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::SigningAlg;
    use crate::keyset::PrivateKey;

    fn secret(keyset: &Keyset, uid: &str, rv: &str) -> Secret {
        let mut s = Secret::default();
        s.metadata.name = Some("a-signing-keys".into());
        s.metadata.namespace = Some("ns".into());
        s.metadata.uid = Some(uid.into());
        s.metadata.resource_version = Some(rv.into());
        s.data = Some(keyset.to_secret_data());
        s
    }

    fn keyset(kid: &str) -> Keyset {
        Keyset::initial(PrivateKey::generate(SigningAlg::ES256, kid, 0).unwrap())
    }

    #[test]
    fn a_version_is_parsed_once_and_a_new_version_or_secret_again() {
        let parsed = ParsedKeysets::default();
        let (one, two) = (keyset("k1"), keyset("k2"));
        assert_eq!(parsed.parse(&secret(&one, "u1", "5")).unwrap(), one);
        // The same version is the same bytes: the remembered keyset stands
        // (the different data here shows that it was not parsed again).
        assert_eq!(parsed.parse(&secret(&two, "u1", "5")).unwrap(), one);
        assert_eq!(parsed.parse(&secret(&two, "u1", "6")).unwrap(), two);
        // A Secret deleted and made again has another uid.
        assert_eq!(parsed.parse(&secret(&one, "u2", "6")).unwrap(), one);
        parsed.forget("ns", "a-signing-keys");
        assert_eq!(parsed.parse(&secret(&two, "u2", "6")).unwrap(), two);
    }

    #[test]
    fn an_unusable_secret_is_refused_every_time_and_not_remembered() {
        let parsed = ParsedKeysets::default();
        let mut broken = secret(&keyset("k1"), "u1", "5");
        broken.data = Some(BTreeMap::new());
        assert!(matches!(
            parsed.parse(&broken),
            Err(KeysetError::MissingActive)
        ));
        assert!(matches!(
            parsed.parse(&broken),
            Err(KeysetError::MissingActive)
        ));
    }
}
