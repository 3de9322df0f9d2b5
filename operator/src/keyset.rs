//! The signing-keys Secret `<name>-signing-keys` as a typed keyset.
//!
//! | Secret key | Content |
//! |---|---|
//! | `active.jwk.json` | private JWK the service signs with (required) |
//! | `published.jwks.json` | public JWKS of verification-only keys, maybe `{"keys":[]}` |
//! | `next.jwk.json` | private JWK of the pending key, only mid-rotation |
//! | `previous.jwk.json` | private JWK of the key that signed before, until retirement |
//!
//! Parsing validates every private key with the service's own key module, so
//! the operator never points a Deployment at a key the service would refuse.
//! Private keys keep their exact text: rendering a parsed keyset back produces
//! byte-identical entries, so adopting a Secret never rewrites its key.

use std::collections::BTreeMap;

use base64::Engine as _;
use k8s_openapi::ByteString;
use macp_auth_service::keys::{self, Alg, KeyError, SigningKey};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::crd::SigningAlg;
use crate::rotation::{KeyView, KeysetPlan, KeysetView};

pub const ACTIVE: &str = "active.jwk.json";
pub const PUBLISHED: &str = "published.jwks.json";
const NEXT: &str = "next.jwk.json";
pub const PREVIOUS: &str = "previous.jwk.json";

/// Why the Secret does not hold a usable keyset. Messages go verbatim into
/// the `Degraded` condition, so they name the Secret key at fault.
#[derive(Debug, thiserror::Error)]
pub enum KeysetError {
    #[error(
        "the Secret has no {ACTIVE}; a human must restore it or delete the Secret (the operator never regenerates an existing keyset)"
    )]
    MissingActive,
    #[error("{slot} is not UTF-8 text")]
    NotUtf8 { slot: &'static str },
    #[error("{slot}: {source}")]
    InvalidKey {
        slot: &'static str,
        #[source]
        source: KeyError,
    },
    #[error("{PUBLISHED}: {0}")]
    InvalidPublished(#[source] KeyError),
    #[error("kid {0:?} appears in more than one slot with different key material")]
    ConflictingKid(String),
}

/// `Degraded` reason: the Secret has no active key.
pub const REASON_MISSING_SIGNING_KEY: &str = "MissingSigningKey";
/// `Degraded` reason: the Secret holds a key the operator cannot use.
pub const REASON_INVALID_SIGNING_KEY: &str = "InvalidSigningKey";

impl KeysetError {
    /// `Degraded` reason for this error.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            KeysetError::MissingActive => REASON_MISSING_SIGNING_KEY,
            _ => REASON_INVALID_SIGNING_KEY,
        }
    }
}

/// Why a rotation plan or a new key could not be laid out.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("the Secret holds no private key {kid} for {slot}")]
    MissingPrivate { kid: String, slot: &'static str },
    #[error("the Secret holds no key {0} to publish")]
    MissingPublic(String),
}

/// A validated private JWK and the exact text it was read from.
#[derive(Clone, Debug, PartialEq)]
pub struct PrivateKey {
    pub kid: String,
    pub alg: SigningAlg,
    /// Modulus size for RSA keys, `None` for EC.
    pub rsa_bits: Option<u32>,
    public: Value,
    text: String,
}

impl PrivateKey {
    /// Parses and validates a private JWK (its type decides the algorithm).
    pub(crate) fn parse(text: &str) -> Result<Self, KeyError> {
        let jwk: Value =
            serde_json::from_str(text).map_err(|e| KeyError::NotJson(e.to_string()))?;
        let alg = match jwk.get("kty").and_then(Value::as_str) {
            Some("EC") => Alg::ES256,
            // RSA, and anything else: the RS256 parse reports the precise problem.
            _ => Alg::RS256,
        };
        let key = SigningKey::from_jwk(&jwk, alg)?;
        let rsa_bits = match alg {
            Alg::RS256 => modulus_bits(&jwk),
            Alg::ES256 => None,
        };
        Ok(Self {
            kid: key.kid().to_string(),
            alg: alg.into(),
            rsa_bits,
            public: key.public_jwk().clone(),
            text: text.to_string(),
        })
    }

    /// Generates a fresh key. RSA generation takes up to a second: call it off the async runtime.
    pub fn generate(alg: SigningAlg, kid: &str, rsa_bits: u32) -> Result<Self, KeyError> {
        let jwk = keys::generate_private_jwk(alg.into(), kid, rsa_bits)?;
        let text = serde_json::to_string(&jwk).map_err(|e| KeyError::Encoding(e.to_string()))?;
        Self::parse(&text)
    }

    /// The public JWK (no private members).
    pub fn public_jwk(&self) -> &Value {
        &self.public
    }

    fn view(&self) -> KeyView {
        KeyView {
            kid: self.kid.clone(),
            alg: self.alg,
            rsa_bits: self.rsa_bits,
        }
    }
}

fn modulus_bits(jwk: &Value) -> Option<u32> {
    let n = jwk.get("n")?.as_str()?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(n.trim_end_matches('='))
        .ok()?;
    let first = bytes.iter().position(|b| *b != 0)?;
    let significant = u32::try_from(bytes.len() - first).ok()?;
    Some(significant * 8 - bytes[first].leading_zeros())
}

/// The keys of one MacpAuth, slot by slot.
#[derive(Clone, Debug, PartialEq)]
pub struct Keyset {
    pub active: PrivateKey,
    /// Public JWKs of the verification-only keys, in order.
    pub published: Vec<Value>,
    pub next: Option<PrivateKey>,
    pub previous: Option<PrivateKey>,
}

fn slot_text<'a>(
    data: &'a BTreeMap<String, ByteString>,
    slot: &'static str,
) -> Result<Option<&'a str>, KeysetError> {
    data.get(slot)
        .map(|b| std::str::from_utf8(&b.0).map_err(|_| KeysetError::NotUtf8 { slot }))
        .transpose()
}

/// The private key in `slot`: taken from `known` when one of its keys has
/// exactly this text (parsing is deterministic), else parsed and validated.
fn parse_private(
    data: &BTreeMap<String, ByteString>,
    slot: &'static str,
    known: Option<&Keyset>,
) -> Result<Option<PrivateKey>, KeysetError> {
    slot_text(data, slot)?
        .map(|t| {
            if let Some(key) = known.and_then(|k| k.private_keys().find(|key| key.text == t)) {
                return Ok(key.clone());
            }
            PrivateKey::parse(t).map_err(|source| KeysetError::InvalidKey { slot, source })
        })
        .transpose()
}

impl Keyset {
    /// A keyset holding only a freshly generated active key.
    pub fn initial(active: PrivateKey) -> Self {
        Self {
            active,
            published: Vec::new(),
            next: None,
            previous: None,
        }
    }

    /// Parses the Secret's `data`. A missing or invalid active key is an error,
    /// never a reason to generate a new one.
    pub fn from_secret_data(data: &BTreeMap<String, ByteString>) -> Result<Self, KeysetError> {
        Self::from_secret_data_reusing(data, None)
    }

    /// [`Self::from_secret_data`], taking each private key whose text is
    /// that of a key in `known` (an earlier version of the same Secret) from
    /// there: validating a key is an EC point multiplication or an RSA key
    /// check, and a rotation writes the same keys in a new layout five times.
    pub(crate) fn from_secret_data_reusing(
        data: &BTreeMap<String, ByteString>,
        known: Option<&Keyset>,
    ) -> Result<Self, KeysetError> {
        let active = parse_private(data, ACTIVE, known)?.ok_or(KeysetError::MissingActive)?;
        let published = match slot_text(data, PUBLISHED)? {
            Some(text) => {
                keys::parse_verification_keys(text).map_err(KeysetError::InvalidPublished)?
            }
            None => Vec::new(),
        };
        let keyset = Self {
            active,
            published,
            next: parse_private(data, NEXT, known)?,
            previous: parse_private(data, PREVIOUS, known)?,
        };
        keyset.check_kids()?;
        Ok(keyset)
    }

    /// The private keys it holds: active, next, previous.
    fn private_keys(&self) -> impl Iterator<Item = &PrivateKey> {
        [
            Some(&self.active),
            self.next.as_ref(),
            self.previous.as_ref(),
        ]
        .into_iter()
        .flatten()
    }

    /// The same kid in two slots must be the same key, or "publish kid X" is ambiguous.
    fn check_kids(&self) -> Result<(), KeysetError> {
        let mut seen: BTreeMap<&str, &Value> = BTreeMap::new();
        let publics = self
            .private_keys()
            .map(|k| (k.kid.as_str(), &k.public))
            .chain(self.published.iter().filter_map(|p| Some((kid_of(p)?, p))));
        for (kid, public) in publics {
            if let Some(other) = seen.insert(kid, public)
                && !same_public_key(other, public)
            {
                return Err(KeysetError::ConflictingKid(kid.to_string()));
            }
        }
        Ok(())
    }

    /// The Secret `data` for this keyset; private keys keep their original text.
    pub fn to_secret_data(&self) -> BTreeMap<String, ByteString> {
        let mut data = BTreeMap::new();
        let text = |s: &str| ByteString(s.as_bytes().to_vec());
        data.insert(ACTIVE.to_string(), text(&self.active.text));
        data.insert(
            PUBLISHED.to_string(),
            text(&keys::jwks(&self.published).to_string()),
        );
        if let Some(k) = &self.next {
            data.insert(NEXT.to_string(), text(&k.text));
        }
        if let Some(k) = &self.previous {
            data.insert(PREVIOUS.to_string(), text(&k.text));
        }
        data
    }

    /// Kids of the verification-only keys, in order.
    pub fn published_kids(&self) -> Vec<String> {
        self.published
            .iter()
            .filter_map(kid_of)
            .map(str::to_string)
            .collect()
    }

    /// The pod-template annotation value for this keyset.
    pub(crate) fn hash(&self) -> String {
        keyset_hash(&self.active.kid, &self.published_kids())
    }

    /// What the rotation state machine sees.
    pub fn view(&self) -> KeysetView {
        KeysetView {
            active: self.active.view(),
            published: self.published_kids(),
            next: self.next.as_ref().map(PrivateKey::view),
            previous: self.previous.as_ref().map(PrivateKey::view),
        }
    }

    /// This keyset with `key` in `next.jwk.json` and nothing else changed.
    pub(crate) fn with_next(&self, key: PrivateKey) -> Self {
        Self {
            next: Some(key),
            ..self.clone()
        }
    }

    /// The private key `kid` from any slot.
    fn find_private(&self, kid: &str) -> Option<&PrivateKey> {
        [
            Some(&self.active),
            self.next.as_ref(),
            self.previous.as_ref(),
        ]
        .into_iter()
        .flatten()
        .find(|k| k.kid == kid)
    }

    fn private(&self, kid: &str, slot: &'static str) -> Result<PrivateKey, LayoutError> {
        self.find_private(kid)
            .cloned()
            .ok_or_else(|| LayoutError::MissingPrivate {
                kid: kid.to_string(),
                slot,
            })
    }

    fn public(&self, kid: &str) -> Result<Value, LayoutError> {
        self.find_private(kid)
            .map(|k| k.public.clone())
            .or_else(|| {
                self.published
                    .iter()
                    .find(|p| kid_of(p) == Some(kid))
                    .cloned()
            })
            .ok_or_else(|| LayoutError::MissingPublic(kid.to_string()))
    }

    /// Lays out `plan` from the material this keyset holds; never invents a key.
    pub(crate) fn apply_plan(&self, plan: &KeysetPlan) -> Result<Self, LayoutError> {
        Ok(Self {
            active: self.private(&plan.active, ACTIVE)?,
            published: plan
                .published
                .iter()
                .map(|kid| self.public(kid))
                .collect::<Result<_, _>>()?,
            next: plan
                .next
                .as_deref()
                .map(|kid| self.private(kid, NEXT))
                .transpose()?,
            previous: plan
                .previous
                .as_deref()
                .map(|kid| self.private(kid, PREVIOUS))
                .transpose()?,
        })
    }
}

fn kid_of(jwk: &Value) -> Option<&str> {
    jwk.get("kid").and_then(Value::as_str)
}

/// Two public JWKs are the same key when their key members match.
fn same_public_key(a: &Value, b: &Value) -> bool {
    ["kty", "n", "e", "crv", "x", "y"]
        .iter()
        .all(|m| a.get(m) == b.get(m))
}

/// `macp.io/keyset-hash`: SHA-256 (hex) over the active kid and the published
/// kids in order. Any change of what the pods must serve changes it, which
/// makes the Deployment roll.
pub fn keyset_hash(active_kid: &str, published_kids: &[String]) -> String {
    let mut h = Sha256::new();
    h.update(b"active\0");
    h.update(active_kid.as_bytes());
    for kid in published_kids {
        h.update(b"\0published\0");
        h.update(kid.as_bytes());
    }
    hex(&h.finalize())
}

/// Lower-case hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A new kid: `<name>-<UTC yyyymmddHHMMSS>-<4 hex>`; `random` supplies the suffix.
pub(crate) fn new_kid(name: &str, now: chrono::DateTime<chrono::Utc>, random: u16) -> String {
    format!("{name}-{}-{random:04x}", now.format("%Y%m%d%H%M%S"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use std::sync::OnceLock;

    fn rsa_key(kid: &str) -> PrivateKey {
        // RSA generation is slow; tests share generated material per kid.
        static CACHE: OnceLock<parking_lot::Mutex<BTreeMap<String, PrivateKey>>> = OnceLock::new();
        let cache = CACHE.get_or_init(Default::default);
        let mut cache = cache.lock();
        cache
            .entry(kid.to_string())
            .or_insert_with(|| PrivateKey::generate(SigningAlg::RS256, kid, 2048).unwrap())
            .clone()
    }

    fn ec_key(kid: &str) -> PrivateKey {
        PrivateKey::generate(SigningAlg::ES256, kid, 2048).unwrap()
    }

    fn data(entries: &[(&str, &str)]) -> BTreeMap<String, ByteString> {
        entries
            .iter()
            .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
            .collect()
    }

    #[test]
    fn round_trip_keeps_private_text_byte_identical() {
        let a = rsa_key("a");
        // Hand-formatted JSON (extra spaces) must survive adoption unchanged.
        let pretty =
            serde_json::to_string_pretty(&serde_json::from_str::<Value>(&a.text).unwrap()).unwrap();
        let d = data(&[(ACTIVE, &pretty)]);
        let ks = Keyset::from_secret_data(&d).unwrap();
        assert_eq!(ks.active.kid, "a");
        assert_eq!(ks.active.alg, SigningAlg::RS256);
        assert_eq!(ks.active.rsa_bits, Some(2048));
        assert!(ks.published.is_empty());
        let out = ks.to_secret_data();
        assert_eq!(out[ACTIVE].0, pretty.as_bytes());
        assert_eq!(
            serde_json::from_slice::<Value>(&out[PUBLISHED].0).unwrap(),
            serde_json::json!({"keys": []})
        );
        assert!(!out.contains_key(NEXT) && !out.contains_key(PREVIOUS));
        assert_eq!(Keyset::from_secret_data(&out).unwrap(), ks);
    }

    #[test]
    fn all_slots_parse_and_view() {
        let (a, b, c) = (ec_key("a"), ec_key("b"), ec_key("c"));
        let published = keys::jwks(std::slice::from_ref(&b.public)).to_string();
        let d = data(&[
            (ACTIVE, &a.text),
            (PUBLISHED, &published),
            (NEXT, &b.text),
            (PREVIOUS, &c.text),
        ]);
        let ks = Keyset::from_secret_data(&d).unwrap();
        let v = ks.view();
        assert_eq!(v.active.kid, "a");
        assert_eq!(v.active.alg, SigningAlg::ES256);
        assert_eq!(v.active.rsa_bits, None);
        assert_eq!(v.published, vec!["b"]);
        assert_eq!(v.next.unwrap().kid, "b");
        assert_eq!(v.previous.unwrap().kid, "c");
    }

    #[test]
    fn missing_active_is_an_error_not_a_new_key() {
        let e = Keyset::from_secret_data(&data(&[(PUBLISHED, "{\"keys\":[]}")])).unwrap_err();
        assert!(matches!(e, KeysetError::MissingActive));
        assert_eq!(e.reason(), "MissingSigningKey");
        assert!(e.to_string().contains(ACTIVE));
    }

    #[test]
    fn unparseable_active_names_the_slot() {
        for bad in [
            "not json",
            "{}",
            "[1]",
            "{\"kty\":\"oct\",\"k\":\"abc\",\"kid\":\"x\"}",
        ] {
            let e = Keyset::from_secret_data(&data(&[(ACTIVE, bad)])).unwrap_err();
            assert_eq!(e.reason(), "InvalidSigningKey", "{bad}");
            assert!(e.to_string().starts_with(ACTIVE), "{e}");
        }
        // A public-only key cannot sign.
        let a = ec_key("a");
        let public = a.public.to_string();
        let e = Keyset::from_secret_data(&data(&[(ACTIVE, &public)])).unwrap_err();
        assert!(
            matches!(e, KeysetError::InvalidKey { slot: ACTIVE, .. }),
            "{e}"
        );
        let e =
            Keyset::from_secret_data(&data(&[(ACTIVE, &a.text), (PUBLISHED, "{")])).unwrap_err();
        assert!(matches!(e, KeysetError::InvalidPublished(_)), "{e}");
        let e = Keyset::from_secret_data(&data(&[(ACTIVE, &a.text), (NEXT, "{}")])).unwrap_err();
        assert!(
            matches!(e, KeysetError::InvalidKey { slot: NEXT, .. }),
            "{e}"
        );
    }

    #[test]
    fn same_kid_with_different_material_is_refused() {
        let a = ec_key("a");
        let a2 = ec_key("a");
        let e =
            Keyset::from_secret_data(&data(&[(ACTIVE, &a.text), (NEXT, &a2.text)])).unwrap_err();
        assert!(matches!(e, KeysetError::ConflictingKid(k) if k == "a"));
    }

    #[test]
    fn hash_depends_on_active_and_published_in_order() {
        let base = keyset_hash("a", &[]);
        assert_eq!(base.len(), 64);
        assert_eq!(base, keyset_hash("a", &[]));
        assert_ne!(base, keyset_hash("b", &[]));
        let ab = keyset_hash("a", &["b".into()]);
        assert_ne!(base, ab);
        assert_ne!(
            keyset_hash("a", &["b".into(), "c".into()]),
            keyset_hash("a", &["c".into(), "b".into()])
        );
        // No ambiguity from concatenation.
        assert_ne!(keyset_hash("ab", &[]), keyset_hash("a", &["b".into()]));
    }

    #[test]
    fn plans_are_laid_out_from_existing_material_only() {
        let (a, b) = (ec_key("a"), ec_key("b"));
        let ks = Keyset::initial(a.clone()).with_next(b.clone());
        let activating = KeysetPlan {
            active: "b".into(),
            published: vec!["a".into()],
            next: None,
            previous: Some("a".into()),
        };
        let out = ks.apply_plan(&activating).unwrap();
        assert_eq!(out.active, b);
        assert_eq!(out.published, vec![a.public.clone()]);
        assert_eq!(out.previous, Some(a.clone()));
        assert_eq!(out.next, None);
        assert!(activating.matches(&out.view()));
        // A published-only key can stay published but can never become private.
        let retiring_old = KeysetPlan {
            active: "b".into(),
            published: vec!["a".into()],
            next: None,
            previous: None,
        };
        let only_public = out.apply_plan(&retiring_old).unwrap();
        assert!(only_public.apply_plan(&retiring_old).is_ok());
        let back = KeysetPlan {
            active: "a".into(),
            published: vec![],
            next: None,
            previous: None,
        };
        assert!(matches!(
            only_public.apply_plan(&back),
            Err(LayoutError::MissingPrivate { slot: ACTIVE, .. })
        ));
        let unknown = KeysetPlan {
            active: "b".into(),
            published: vec!["zzz".into()],
            next: None,
            previous: None,
        };
        assert!(matches!(
            ks.apply_plan(&unknown),
            Err(LayoutError::MissingPublic(k)) if k == "zzz"
        ));
    }

    #[test]
    fn kid_format() {
        let now = chrono::Utc.with_ymd_and_hms(2026, 11, 27, 1, 2, 3).unwrap();
        assert_eq!(new_kid("prod", now, 0xab), "prod-20261127010203-00ab");
    }

    #[test]
    fn generated_rsa_sizes_are_reported() {
        assert_eq!(rsa_key("a").rsa_bits, Some(2048));
    }

    #[test]
    fn keys_of_a_known_version_are_reused_and_new_ones_parsed() {
        let active = PrivateKey::generate(SigningAlg::ES256, "k-active", 2048).unwrap();
        let next = PrivateKey::generate(SigningAlg::ES256, "k-next", 2048).unwrap();
        let before = Keyset::initial(active.clone());
        let after = before.with_next(next.clone());
        let data = after.to_secret_data();

        let reused = Keyset::from_secret_data_reusing(&data, Some(&before)).unwrap();
        assert_eq!(reused, Keyset::from_secret_data(&data).unwrap());

        // The known key is taken as it is, not parsed: a marked copy shows it.
        let mut marked = before.clone();
        marked.active.rsa_bits = Some(1);
        let reused = Keyset::from_secret_data_reusing(&data, Some(&marked)).unwrap();
        assert_eq!(reused.active.rsa_bits, Some(1));
        assert_eq!(
            reused.next.map(|k| k.rsa_bits),
            Some(None),
            "a new key is parsed"
        );

        // Text that matches no known key is validated as always.
        let mut broken = data.clone();
        broken.insert(NEXT.into(), ByteString(b"{\"kty\":\"EC\"}".to_vec()));
        assert!(Keyset::from_secret_data_reusing(&broken, Some(&after)).is_err());
    }
}
