//! JWK generation, parsing and validation, public-JWKS derivation, and JWT signing.
//!
//! Both binaries use this module: the token service signs with it, the operator
//! generates and inspects keys with it.
//!
//! # Crypto path and why
//!
//! * Signing uses `aws-lc-rs` directly. Its RSA and ECDSA private-key operations
//!   are constant time; the `rsa` crate's are not (RUSTSEC-2023-0071, the
//!   "Marvin Attack", unpatched), so that crate is not used anywhere here, not
//!   even for format work.
//! * Each key is parsed exactly once, when it is loaded, into an
//!   `aws_lc_rs::signature::RsaKeyPair` (RS256, `RSA_PKCS1_SHA256`) or an
//!   `EcdsaKeyPair` (ES256, `ECDSA_P256_SHA256_FIXED_SIGNING`: the fixed-width
//!   `r || s` form is exactly the JWS signature format, no DER conversion). The
//!   base64url-encoded JWT header is precomputed per key too; a mint only
//!   serialises the claims, signs and concatenates.
//! * `jsonwebtoken` was compared and rejected: its `rust_crypto` backend signs
//!   with the `rsa` crate (not constant time), and its `aws_lc_rs` backend builds
//!   a new signer for every `encode` call, which re-parses the private key:
//!   510 tokens/s against 891 for a key pair parsed once (see NOTES.md).
//! * JWK members are converted to and from DER with the `pkcs1`/`pkcs8` crates
//!   (pure format work, no private-key arithmetic): an RSA JWK becomes a PKCS#1
//!   `RSAPrivateKey` for `RsaKeyPair::from_der`, and a generated key's PKCS#8
//!   document is decoded back into JWK members. All CRT members are required,
//!   so the crypto library never has to recompute them and a truncated paste is
//!   reported instead of silently accepted.

use std::fmt;
use std::str::FromStr;

use aws_lc_rs::encoding::{AsBigEndian, AsDer};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _, RSA_PKCS1_SHA256, RsaKeyPair,
};
use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use pkcs1::der::{Decode as _, Encode as _};
use serde::Serialize;
use serde_json::{Map, Value, json};

/// base64url without padding on output; decoding accepts padded input too,
/// because hand-made JWKs sometimes carry `=`.
const B64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Smallest RSA modulus accepted anywhere (signing or publishing).
pub const MIN_RSA_BITS: usize = 2048;
/// RSA sizes `generate_private_jwk` produces.
pub const RSA_BITS_CHOICES: [u32; 3] = [2048, 3072, 4096];
/// Byte length of a P-256 coordinate or private scalar.
const P256_LEN: usize = 32;

/// Private members that must never appear in a public JWK, whatever the key type.
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// A JWS signing algorithm supported by the service.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Alg {
    RS256,
    ES256,
}

impl Alg {
    pub fn as_str(&self) -> &'static str {
        match self {
            Alg::RS256 => "RS256",
            Alg::ES256 => "ES256",
        }
    }

    /// The JWK `kty` of keys for this algorithm.
    pub fn kty(&self) -> &'static str {
        match self {
            Alg::RS256 => "RSA",
            Alg::ES256 => "EC",
        }
    }
}

impl fmt::Display for Alg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Alg {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "RS256" => Ok(Alg::RS256),
            "ES256" => Ok(Alg::ES256),
            other => Err(KeyError::UnknownAlg(other.to_string())),
        }
    }
}

/// Why a key could not be generated, parsed, published or used.
///
/// Messages are one line and name the offending member, so they can be shown
/// verbatim as a startup error or a `Degraded` condition message.
#[derive(thiserror::Error, Debug)]
pub enum KeyError {
    #[error("unknown signing algorithm {0:?} (expected RS256 or ES256)")]
    UnknownAlg(String),
    #[error("not valid JSON: {0}")]
    NotJson(String),
    #[error("JWK must be a JSON object")]
    NotObject,
    #[error("JWK has no \"kty\" string member")]
    MissingKty,
    #[error("JWK kty {0:?} is not supported (expected RSA or EC)")]
    UnsupportedKty(String),
    #[error("JWK kty {found:?} does not match algorithm {alg} (which needs kty {expected:?})")]
    KtyMismatch {
        found: String,
        alg: Alg,
        expected: &'static str,
    },
    #[error(
        "JWK alg {found:?} does not match {expected} (the key's type or the configured algorithm)"
    )]
    AlgMismatch { found: String, expected: Alg },
    #[error("JWK use {0:?} is not \"sig\"")]
    UseNotSig(String),
    #[error("JWK is public-only: the private member \"d\" is missing (a private JWK is required)")]
    PublicOnly,
    #[error("JWK has no kid (a non-empty string \"kid\" is required to rotate keys)")]
    MissingKid,
    #[error("JWK member {0:?} is missing")]
    MissingMember(&'static str),
    #[error("JWK member {0:?} is not a base64url string")]
    BadMember(&'static str),
    #[error(
        "RSA JWK lacks the CRT member {0:?} (p, q, dp, dq and qi are all required; re-export the full private key)"
    )]
    MissingCrt(&'static str),
    #[error("multi-prime RSA keys (member \"oth\") are not supported")]
    MultiPrime,
    #[error("RSA modulus is {0} bits; at least 2048 bits are required")]
    RsaTooSmall(usize),
    #[error("EC curve {0:?} is not supported (only P-256)")]
    UnsupportedCurve(String),
    #[error("EC member {0:?} must be 32 bytes for P-256")]
    BadCoordinate(&'static str),
    #[error("unsupported RSA key size {0} (use 2048, 3072 or 4096)")]
    UnsupportedBits(u32),
    #[error("kid must be a non-empty string")]
    EmptyKid,
    #[error("key rejected by the crypto library: {0}")]
    Rejected(String),
    #[error("key encoding failed: {0}")]
    Encoding(String),
    #[error("key generation failed")]
    Generation,
    #[error("signing failed")]
    Signing,
    #[error("expected a JWKS object with a \"keys\" array, or a JSON array of JWKs")]
    NotAKeySet,
    #[error("key #{index}: {source}")]
    InSet {
        index: usize,
        #[source]
        source: Box<KeyError>,
    },
}

fn b64_decode(jwk: &Map<String, Value>, member: &'static str) -> Result<Vec<u8>, KeyError> {
    let text = match jwk.get(member) {
        None | Some(Value::Null) => return Err(KeyError::MissingMember(member)),
        Some(Value::String(s)) => s,
        Some(_) => return Err(KeyError::BadMember(member)),
    };
    let bytes = B64
        .decode(text.as_bytes())
        .map_err(|_| KeyError::BadMember(member))?;
    if bytes.is_empty() {
        return Err(KeyError::BadMember(member));
    }
    Ok(bytes)
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let first = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[first..]
}

fn bit_len(big_endian: &[u8]) -> usize {
    let digits = strip_leading_zeros(big_endian);
    match digits.first() {
        None => 0,
        Some(top) => (digits.len() - 1) * 8 + (8 - top.leading_zeros() as usize),
    }
}

fn as_object(jwk: &Value) -> Result<&Map<String, Value>, KeyError> {
    jwk.as_object().ok_or(KeyError::NotObject)
}

fn kid_of(jwk: &Map<String, Value>) -> Result<&str, KeyError> {
    match jwk.get("kid") {
        Some(Value::String(kid)) if !kid.trim().is_empty() => Ok(kid),
        _ => Err(KeyError::MissingKid),
    }
}

/// The algorithm a JWK's key type implies (RS256 for RSA, ES256 for EC).
fn alg_of_kty(jwk: &Map<String, Value>) -> Result<Alg, KeyError> {
    match jwk.get("kty") {
        Some(Value::String(kty)) if kty == "RSA" => Ok(Alg::RS256),
        Some(Value::String(kty)) if kty == "EC" => Ok(Alg::ES256),
        Some(Value::String(kty)) => Err(KeyError::UnsupportedKty(kty.clone())),
        _ => Err(KeyError::MissingKty),
    }
}

/// Checks the optional `alg` and `use` members against the expected algorithm.
fn check_alg_and_use(jwk: &Map<String, Value>, expected: Alg) -> Result<(), KeyError> {
    match jwk.get("alg") {
        None | Some(Value::Null) => {}
        Some(Value::String(found)) if found == expected.as_str() => {}
        Some(other) => {
            return Err(KeyError::AlgMismatch {
                found: other
                    .as_str()
                    .map_or_else(|| other.to_string(), str::to_string),
                expected,
            });
        }
    }
    match jwk.get("use") {
        None | Some(Value::Null) => Ok(()),
        Some(Value::String(u)) if u == "sig" => Ok(()),
        Some(other) => Err(KeyError::UseNotSig(
            other
                .as_str()
                .map_or_else(|| other.to_string(), str::to_string),
        )),
    }
}

fn check_curve(jwk: &Map<String, Value>) -> Result<(), KeyError> {
    match jwk.get("crv") {
        Some(Value::String(crv)) if crv == "P-256" => Ok(()),
        Some(Value::String(crv)) => Err(KeyError::UnsupportedCurve(crv.clone())),
        Some(other) => Err(KeyError::UnsupportedCurve(other.to_string())),
        None => Err(KeyError::MissingMember("crv")),
    }
}

/// Validates the public members of an RSA or EC JWK and returns them decoded:
/// `(n, e)` for RSA, `(x, y)` for EC.
fn public_parts(jwk: &Map<String, Value>, alg: Alg) -> Result<(Vec<u8>, Vec<u8>), KeyError> {
    match alg {
        Alg::RS256 => {
            let n = b64_decode(jwk, "n")?;
            let e = b64_decode(jwk, "e")?;
            let bits = bit_len(&n);
            if bits < MIN_RSA_BITS {
                return Err(KeyError::RsaTooSmall(bits));
            }
            Ok((n, e))
        }
        Alg::ES256 => {
            check_curve(jwk)?;
            let x = b64_decode(jwk, "x")?;
            let y = b64_decode(jwk, "y")?;
            if x.len() != P256_LEN {
                return Err(KeyError::BadCoordinate("x"));
            }
            if y.len() != P256_LEN {
                return Err(KeyError::BadCoordinate("y"));
            }
            Ok((x, y))
        }
    }
}

/// Derives the public JWK: `kty,n,e` (RSA) or `kty,crv,x,y` (EC), plus `kid`,
/// `alg` and `use: "sig"`. Every other member, above all the private ones
/// (`d,p,q,dp,dq,qi,oth,k`), is dropped.
///
/// The key must be RSA (at least 2048 bits) or EC P-256 and carry a `kid`; an
/// `alg` member, if present, must match the key type.
pub fn public_jwk(jwk: &Value) -> Result<Value, KeyError> {
    let obj = as_object(jwk)?;
    let alg = alg_of_kty(obj)?;
    check_alg_and_use(obj, alg)?;
    let kid = kid_of(obj)?;
    let (a, b) = public_parts(obj, alg)?;
    let public = match alg {
        Alg::RS256 => json!({
            "kty": "RSA",
            // Re-encoded from the decoded bytes so padding or stray leading
            // zeros in the input never reach verifiers.
            "n": B64.encode(strip_leading_zeros(&a)),
            "e": B64.encode(strip_leading_zeros(&b)),
            "kid": kid,
            "alg": alg.as_str(),
            "use": "sig",
        }),
        Alg::ES256 => json!({
            "kty": "EC",
            "crv": "P-256",
            "x": B64.encode(&a),
            "y": B64.encode(&b),
            "kid": kid,
            "alg": alg.as_str(),
            "use": "sig",
        }),
    };
    debug_assert!(PRIVATE_MEMBERS.iter().all(|m| public.get(m).is_none()));
    Ok(public)
}

/// Parses `MACP_AUTH_VERIFICATION_KEYS_JSON`-style text: a JWKS object
/// (`{"keys": [...]}`) or a bare JSON array of JWKs. Empty or whitespace-only
/// text and `{"keys": []}` mean no keys. Each key is validated like
/// [`public_jwk`] (kid required, RSA >= 2048 bits or EC P-256) and returned
/// stripped to its public members. Duplicate kids are left to the caller, which
/// also knows the active key.
pub fn parse_verification_keys(text: &str) -> Result<Vec<Value>, KeyError> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let parsed: Value = serde_json::from_str(text).map_err(|e| KeyError::NotJson(e.to_string()))?;
    let entries = match &parsed {
        Value::Array(keys) => keys,
        Value::Object(obj) => match obj.get("keys") {
            Some(Value::Array(keys)) => keys,
            _ => return Err(KeyError::NotAKeySet),
        },
        _ => return Err(KeyError::NotAKeySet),
    };
    entries
        .iter()
        .enumerate()
        .map(|(index, key)| {
            public_jwk(key).map_err(|e| KeyError::InSet {
                index,
                source: Box::new(e),
            })
        })
        .collect()
}

/// A JWKS document: `{"keys": [...]}` with the keys in the given order.
pub fn jwks(keys: &[Value]) -> Value {
    json!({ "keys": keys })
}

/// Generates a fresh private JWK with `kid`, `alg` and `use: "sig"`.
///
/// RSA keys are `rsa_bits` long (2048, 3072 or 4096); ES256 ignores `rsa_bits`.
pub fn generate_private_jwk(alg: Alg, kid: &str, rsa_bits: u32) -> Result<Value, KeyError> {
    if kid.trim().is_empty() {
        return Err(KeyError::EmptyKid);
    }
    match alg {
        Alg::RS256 => generate_rsa_jwk(kid, rsa_bits),
        Alg::ES256 => generate_ec_jwk(kid),
    }
}

fn generate_rsa_jwk(kid: &str, rsa_bits: u32) -> Result<Value, KeyError> {
    let size = match rsa_bits {
        2048 => KeySize::Rsa2048,
        3072 => KeySize::Rsa3072,
        4096 => KeySize::Rsa4096,
        other => return Err(KeyError::UnsupportedBits(other)),
    };
    let pair = aws_lc_rs::rsa::KeyPair::generate(size).map_err(|_| KeyError::Generation)?;
    let pkcs8_doc = pair.as_der().map_err(|_| KeyError::Generation)?;
    let info = pkcs8::PrivateKeyInfo::from_der(pkcs8_doc.as_ref())
        .map_err(|e| KeyError::Encoding(e.to_string()))?;
    let rsa = pkcs1::RsaPrivateKey::from_der(info.private_key)
        .map_err(|e| KeyError::Encoding(e.to_string()))?;
    let enc = |u: pkcs1::UintRef<'_>| B64.encode(u.as_bytes());
    Ok(json!({
        "kty": "RSA",
        "n": enc(rsa.modulus),
        "e": enc(rsa.public_exponent),
        "d": enc(rsa.private_exponent),
        "p": enc(rsa.prime1),
        "q": enc(rsa.prime2),
        "dp": enc(rsa.exponent1),
        "dq": enc(rsa.exponent2),
        "qi": enc(rsa.coefficient),
        "kid": kid,
        "alg": "RS256",
        "use": "sig",
    }))
}

fn generate_ec_jwk(kid: &str) -> Result<Value, KeyError> {
    let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
        .map_err(|_| KeyError::Generation)?;
    let d = pair
        .private_key()
        .as_be_bytes()
        .map_err(|_| KeyError::Generation)?;
    // Uncompressed SEC1 point: 0x04 || x || y.
    let point = pair.public_key().as_ref();
    if point.len() != 1 + 2 * P256_LEN || point[0] != 4 {
        return Err(KeyError::Generation);
    }
    Ok(json!({
        "kty": "EC",
        "crv": "P-256",
        "x": B64.encode(&point[1..1 + P256_LEN]),
        "y": B64.encode(&point[1 + P256_LEN..]),
        "d": B64.encode(d.as_ref()),
        "kid": kid,
        "alg": "ES256",
        "use": "sig",
    }))
}

enum Signer {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
}

/// A private key parsed once and ready to sign JWTs.
pub struct SigningKey {
    kid: String,
    alg: Alg,
    public_jwk: Value,
    /// base64url of `{"alg":..,"kid":..,"typ":"JWT"}`, computed at load.
    header_b64: String,
    signer: Signer,
    rng: SystemRandom,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material.
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize)]
struct Header<'a> {
    alg: &'static str,
    kid: &'a str,
    typ: &'static str,
}

impl SigningKey {
    /// Parses and validates a private JWK for `alg`: a JSON object with the
    /// private members, `kty` matching `alg` (RSA/EC), EC curve P-256, RSA
    /// modulus of at least 2048 bits with every CRT member, a non-empty `kid`,
    /// and an `alg` member (if any) equal to `alg`.
    pub fn from_jwk(jwk: &Value, alg: Alg) -> Result<Self, KeyError> {
        let obj = as_object(jwk)?;
        let kty_alg = alg_of_kty(obj)?;
        if kty_alg != alg {
            return Err(KeyError::KtyMismatch {
                found: kty_alg.kty().to_string(),
                alg,
                expected: alg.kty(),
            });
        }
        check_alg_and_use(obj, alg)?;
        if matches!(obj.get("d"), None | Some(Value::Null)) {
            return Err(KeyError::PublicOnly);
        }
        let kid = kid_of(obj)?.to_string();
        let (a, b) = public_parts(obj, alg)?;
        let signer = match alg {
            Alg::RS256 => Signer::Rsa(rsa_key_pair(obj, &a, &b)?),
            Alg::ES256 => Signer::Ec(ec_key_pair(obj, &a, &b)?),
        };
        let public_jwk = public_jwk(jwk)?;
        let header = serde_json::to_vec(&Header {
            alg: alg.as_str(),
            kid: &kid,
            typ: "JWT",
        })
        .map_err(|e| KeyError::Encoding(e.to_string()))?;
        Ok(SigningKey {
            kid,
            alg,
            public_jwk,
            header_b64: B64.encode(header),
            signer,
            rng: SystemRandom::new(),
        })
    }

    /// [`SigningKey::from_jwk`] on JSON text; invalid JSON is [`KeyError::NotJson`].
    pub fn from_jwk_json(text: &str, alg: Alg) -> Result<Self, KeyError> {
        let jwk: Value =
            serde_json::from_str(text).map_err(|e| KeyError::NotJson(e.to_string()))?;
        Self::from_jwk(&jwk, alg)
    }

    /// Generates a fresh key; returns it together with its private JWK.
    pub fn generate(alg: Alg, kid: &str, rsa_bits: u32) -> Result<(Self, Value), KeyError> {
        let jwk = generate_private_jwk(alg, kid, rsa_bits)?;
        let key = Self::from_jwk(&jwk, alg)?;
        Ok((key, jwk))
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn alg(&self) -> Alg {
        self.alg
    }

    /// The public JWK (`kty,n,e` / `kty,crv,x,y`, `kid`, `alg`, `use`).
    pub fn public_jwk(&self) -> &Value {
        &self.public_jwk
    }

    /// Signs `claims` as a compact JWS with header `{alg, kid, typ: "JWT"}`.
    pub fn sign_jwt(&self, claims: &Value) -> Result<String, KeyError> {
        self.sign_claims(claims)
    }

    /// Like [`SigningKey::sign_jwt`] for any serialisable claims type, so hot
    /// paths can serialise borrowed fields without building a `Value`.
    pub fn sign_claims<T: Serialize + ?Sized>(&self, claims: &T) -> Result<String, KeyError> {
        let claims_json =
            serde_json::to_vec(claims).map_err(|e| KeyError::Encoding(e.to_string()))?;
        let sig_len = match &self.signer {
            Signer::Rsa(pair) => pair.public_modulus_len(),
            Signer::Ec(_) => 2 * P256_LEN,
        };
        let mut token = String::with_capacity(
            self.header_b64.len()
                + 2
                + base64::encoded_len(claims_json.len(), false).unwrap_or(0)
                + base64::encoded_len(sig_len, false).unwrap_or(0),
        );
        token.push_str(&self.header_b64);
        token.push('.');
        B64.encode_string(&claims_json, &mut token);
        let signing_input = token.as_bytes();
        match &self.signer {
            Signer::Rsa(pair) => {
                let mut sig = vec![0u8; sig_len];
                pair.sign(&RSA_PKCS1_SHA256, &self.rng, signing_input, &mut sig)
                    .map_err(|_| KeyError::Signing)?;
                token.push('.');
                B64.encode_string(&sig, &mut token);
            }
            Signer::Ec(pair) => {
                let sig = pair
                    .sign(&self.rng, signing_input)
                    .map_err(|_| KeyError::Signing)?;
                token.push('.');
                B64.encode_string(sig.as_ref(), &mut token);
            }
        }
        Ok(token)
    }
}

fn uint(bytes: &[u8]) -> Result<pkcs1::UintRef<'_>, KeyError> {
    pkcs1::UintRef::new(bytes).map_err(|e| KeyError::Encoding(e.to_string()))
}

fn rsa_key_pair(obj: &Map<String, Value>, n: &[u8], e: &[u8]) -> Result<RsaKeyPair, KeyError> {
    if obj.get("oth").is_some_and(|v| !v.is_null()) {
        return Err(KeyError::MultiPrime);
    }
    let d = b64_decode(obj, "d")?;
    let mut crt = Vec::with_capacity(5);
    for member in ["p", "q", "dp", "dq", "qi"] {
        match b64_decode(obj, member) {
            Ok(bytes) => crt.push(bytes),
            Err(KeyError::MissingMember(m)) => return Err(KeyError::MissingCrt(m)),
            Err(other) => return Err(other),
        }
    }
    let der = pkcs1::RsaPrivateKey {
        modulus: uint(n)?,
        public_exponent: uint(e)?,
        private_exponent: uint(&d)?,
        prime1: uint(&crt[0])?,
        prime2: uint(&crt[1])?,
        exponent1: uint(&crt[2])?,
        exponent2: uint(&crt[3])?,
        coefficient: uint(&crt[4])?,
        other_prime_infos: None,
    }
    .to_der()
    .map_err(|e| KeyError::Encoding(e.to_string()))?;
    RsaKeyPair::from_der(&der).map_err(|e| KeyError::Rejected(e.to_string()))
}

fn ec_key_pair(obj: &Map<String, Value>, x: &[u8], y: &[u8]) -> Result<EcdsaKeyPair, KeyError> {
    let d = b64_decode(obj, "d")?;
    if d.len() != P256_LEN {
        return Err(KeyError::BadCoordinate("d"));
    }
    let mut point = Vec::with_capacity(1 + 2 * P256_LEN);
    point.push(4);
    point.extend_from_slice(x);
    point.extend_from_slice(y);
    EcdsaKeyPair::from_private_key_and_public_key(&ECDSA_P256_SHA256_FIXED_SIGNING, &d, &point)
        .map_err(|e| KeyError::Rejected(e.to_string()))
}

#[cfg(test)]
mod tests;
