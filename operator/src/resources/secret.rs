//! The signing-keys Secret `<name>-signing-keys`. How it is written (created,
//! then replaced whole, never applied) is the reconciler's: `reconcile::secret`.

use k8s_openapi::api::core::v1::Secret;

use super::Owner;
use crate::keyset::Keyset;

pub(crate) fn secret(owner: &Owner, keys: &Keyset) -> Secret {
    Secret {
        metadata: owner.meta(owner.secret_name()),
        type_: Some("Opaque".into()),
        data: Some(keys.to_secret_data()),
        ..Secret::default()
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::owner;
    use super::*;
    use crate::crd::SigningAlg;
    use crate::keyset::{self, PrivateKey};

    #[test]
    fn secret_holds_the_keyset() {
        let ks = Keyset::initial(PrivateKey::generate(SigningAlg::ES256, "k1", 2048).unwrap());
        let s = secret(&owner(), &ks);
        let data = s.data.unwrap();
        assert!(data.contains_key(keyset::ACTIVE));
        assert!(data.contains_key(keyset::PUBLISHED));
        assert_eq!(Keyset::from_secret_data(&data).unwrap(), ks);
    }
}
