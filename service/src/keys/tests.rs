use std::sync::OnceLock;

use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED, RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey,
};

use super::*;

fn rsa_jwk() -> &'static Value {
    static JWK: OnceLock<Value> = OnceLock::new();
    JWK.get_or_init(|| generate_private_jwk(Alg::RS256, "rsa-1", 2048).unwrap())
}

fn ec_jwk() -> Value {
    generate_private_jwk(Alg::ES256, "ec-1", 0).unwrap()
}

fn weak_rsa_jwk() -> Value {
    serde_json::from_str(include_str!("../../tests/fixtures/rsa-1024.jwk.json")).unwrap()
}

fn with(mut jwk: Value, member: &str, value: Value) -> Value {
    jwk.as_object_mut().unwrap().insert(member.into(), value);
    jwk
}

fn without(mut jwk: Value, member: &str) -> Value {
    jwk.as_object_mut().unwrap().remove(member);
    jwk
}

fn decode_part(part: &str) -> Value {
    serde_json::from_slice(&B64.decode(part).unwrap()).unwrap()
}

/// Verifies a compact JWS with aws-lc-rs from the public JWK alone.
fn verify(token: &str, public: &Value) {
    let (input, sig) = token.rsplit_once('.').unwrap();
    let sig = B64.decode(sig).unwrap();
    match public["kty"].as_str().unwrap() {
        "RSA" => {
            let n = B64.decode(public["n"].as_str().unwrap()).unwrap();
            let e = B64.decode(public["e"].as_str().unwrap()).unwrap();
            aws_lc_rs::signature::RsaPublicKeyComponents { n: &n, e: &e }
                .verify(&RSA_PKCS1_2048_8192_SHA256, input.as_bytes(), &sig)
                .unwrap();
        }
        "EC" => {
            let mut point = vec![4u8];
            point.extend(B64.decode(public["x"].as_str().unwrap()).unwrap());
            point.extend(B64.decode(public["y"].as_str().unwrap()).unwrap());
            UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &point)
                .verify(input.as_bytes(), &sig)
                .unwrap();
        }
        other => panic!("unexpected kty {other}"),
    }
}

#[test]
fn alg_parses_exactly() {
    assert_eq!("RS256".parse::<Alg>().unwrap(), Alg::RS256);
    assert_eq!("ES256".parse::<Alg>().unwrap(), Alg::ES256);
    for bad in ["rs256", "HS256", "RS384", "", " RS256"] {
        assert!(
            matches!(bad.parse::<Alg>(), Err(KeyError::UnknownAlg(_))),
            "{bad}"
        );
    }
    assert_eq!(Alg::ES256.to_string(), "ES256");
    assert_eq!(Alg::RS256.as_str(), "RS256");
}

#[test]
fn generated_rsa_jwk_has_all_members_and_signs() {
    let jwk = rsa_jwk();
    for member in [
        "kty", "n", "e", "d", "p", "q", "dp", "dq", "qi", "kid", "alg", "use",
    ] {
        assert!(jwk.get(member).is_some(), "missing {member}");
    }
    assert_eq!(jwk["alg"], "RS256");
    assert_eq!(jwk["use"], "sig");
    assert_eq!(jwk["kid"], "rsa-1");
    assert_eq!(
        bit_len(&B64.decode(jwk["n"].as_str().unwrap()).unwrap()),
        2048
    );

    let key = SigningKey::from_jwk(jwk, Alg::RS256).unwrap();
    assert_eq!(key.kid(), "rsa-1");
    assert_eq!(key.alg(), Alg::RS256);
    let token = key.sign_jwt(&json!({"sub": "agent", "n": 1})).unwrap();
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3);
    assert_eq!(
        decode_part(parts[0]),
        json!({"alg": "RS256", "kid": "rsa-1", "typ": "JWT"})
    );
    assert_eq!(decode_part(parts[1]), json!({"sub": "agent", "n": 1}));
    verify(&token, key.public_jwk());
}

#[test]
fn generated_ec_jwk_signs_in_fixed_format() {
    let jwk = ec_jwk();
    assert_eq!(jwk["crv"], "P-256");
    assert_eq!(B64.decode(jwk["d"].as_str().unwrap()).unwrap().len(), 32);
    let key = SigningKey::from_jwk(&jwk, Alg::ES256).unwrap();
    let token = key.sign_jwt(&json!({"sub": "agent"})).unwrap();
    let sig = B64.decode(token.rsplit('.').next().unwrap()).unwrap();
    assert_eq!(sig.len(), 64, "JWS ES256 signatures are r||s, 64 bytes");
    let header = decode_part(token.split('.').next().unwrap());
    assert_eq!(header, json!({"alg": "ES256", "kid": "ec-1", "typ": "JWT"}));
    verify(&token, key.public_jwk());
}

#[test]
fn generate_rejects_bad_sizes_and_empty_kid() {
    assert!(matches!(
        generate_private_jwk(Alg::RS256, "k", 1024),
        Err(KeyError::UnsupportedBits(1024))
    ));
    assert!(matches!(
        generate_private_jwk(Alg::RS256, "k", 2047),
        Err(KeyError::UnsupportedBits(2047))
    ));
    assert!(matches!(
        generate_private_jwk(Alg::ES256, " ", 0),
        Err(KeyError::EmptyKid)
    ));
    // ES256 ignores the RSA size.
    assert!(generate_private_jwk(Alg::ES256, "k", 12345).is_ok());
}

#[test]
fn signing_key_generate_returns_matching_jwk() {
    let (key, jwk) = SigningKey::generate(Alg::ES256, "gen-1", 0).unwrap();
    assert_eq!(key.kid(), "gen-1");
    assert_eq!(key.public_jwk(), &public_jwk(&jwk).unwrap());
}

#[test]
fn from_jwk_json_rejects_non_json() {
    let err = SigningKey::from_jwk_json("{not json", Alg::RS256).unwrap_err();
    assert!(matches!(err, KeyError::NotJson(_)), "{err}");
    let err = SigningKey::from_jwk_json("[1,2]", Alg::RS256).unwrap_err();
    assert!(matches!(err, KeyError::NotObject), "{err}");
}

#[test]
fn from_jwk_json_accepts_text() {
    let text = serde_json::to_string(&ec_jwk()).unwrap();
    assert!(SigningKey::from_jwk_json(&text, Alg::ES256).is_ok());
}

#[test]
fn public_only_jwk_is_rejected() {
    let public = public_jwk(rsa_jwk()).unwrap();
    assert!(matches!(
        SigningKey::from_jwk(&public, Alg::RS256),
        Err(KeyError::PublicOnly)
    ));
    let public = public_jwk(&ec_jwk()).unwrap();
    assert!(matches!(
        SigningKey::from_jwk(&public, Alg::ES256),
        Err(KeyError::PublicOnly)
    ));
}

#[test]
fn kty_must_match_alg() {
    let err = SigningKey::from_jwk(&ec_jwk(), Alg::RS256).unwrap_err();
    assert!(matches!(err, KeyError::KtyMismatch { .. }), "{err}");
    assert!(err.to_string().contains("\"EC\""), "{err}");
    let err = SigningKey::from_jwk(rsa_jwk(), Alg::ES256).unwrap_err();
    assert!(matches!(err, KeyError::KtyMismatch { .. }), "{err}");
    let err = SigningKey::from_jwk(&with(ec_jwk(), "kty", json!("oct")), Alg::ES256).unwrap_err();
    assert!(matches!(err, KeyError::UnsupportedKty(_)), "{err}");
    let err = SigningKey::from_jwk(&without(ec_jwk(), "kty"), Alg::ES256).unwrap_err();
    assert!(matches!(err, KeyError::MissingKty), "{err}");
}

#[test]
fn jwk_alg_member_must_match() {
    let err = SigningKey::from_jwk(&with(ec_jwk(), "alg", json!("ES384")), Alg::ES256).unwrap_err();
    assert!(matches!(err, KeyError::AlgMismatch { .. }), "{err}");
    // Absent alg is fine.
    assert!(SigningKey::from_jwk(&without(ec_jwk(), "alg"), Alg::ES256).is_ok());
    let err = SigningKey::from_jwk(&with(ec_jwk(), "use", json!("enc")), Alg::ES256).unwrap_err();
    assert!(matches!(err, KeyError::UseNotSig(_)), "{err}");
}

#[test]
fn ec_curve_must_be_p256() {
    let err = SigningKey::from_jwk(&with(ec_jwk(), "crv", json!("P-384")), Alg::ES256).unwrap_err();
    assert!(
        matches!(err, KeyError::UnsupportedCurve(ref c) if c == "P-384"),
        "{err}"
    );
    let err = public_jwk(&with(ec_jwk(), "crv", json!("secp256k1"))).unwrap_err();
    assert!(matches!(err, KeyError::UnsupportedCurve(_)), "{err}");
}

#[test]
fn rsa_under_2048_bits_is_rejected() {
    let weak = weak_rsa_jwk();
    let err = SigningKey::from_jwk(&weak, Alg::RS256).unwrap_err();
    assert!(matches!(err, KeyError::RsaTooSmall(1024)), "{err}");
    assert!(err.to_string().contains("1024 bits"), "{err}");
    let err = public_jwk(&weak).unwrap_err();
    assert!(matches!(err, KeyError::RsaTooSmall(1024)), "{err}");
}

#[test]
fn missing_kid_is_rejected() {
    for bad in [None, Some(json!("")), Some(json!("  ")), Some(json!(7))] {
        let jwk = match bad {
            None => without(ec_jwk(), "kid"),
            Some(v) => with(ec_jwk(), "kid", v),
        };
        let err = SigningKey::from_jwk(&jwk, Alg::ES256).unwrap_err();
        assert!(matches!(err, KeyError::MissingKid), "{err}");
        assert!(matches!(public_jwk(&jwk), Err(KeyError::MissingKid)));
    }
}

#[test]
fn rsa_crt_members_are_required() {
    for member in ["p", "q", "dp", "dq", "qi"] {
        let err =
            SigningKey::from_jwk(&without(rsa_jwk().clone(), member), Alg::RS256).unwrap_err();
        assert!(
            matches!(err, KeyError::MissingCrt(m) if m == member),
            "{member}: {err}"
        );
    }
    let err =
        SigningKey::from_jwk(&with(rsa_jwk().clone(), "oth", json!([{}])), Alg::RS256).unwrap_err();
    assert!(matches!(err, KeyError::MultiPrime), "{err}");
}

#[test]
fn inconsistent_private_members_are_rejected_by_the_crypto_library() {
    let other = generate_private_jwk(Alg::ES256, "x", 0).unwrap();
    let mixed = with(ec_jwk(), "d", other["d"].clone());
    let err = SigningKey::from_jwk(&mixed, Alg::ES256).unwrap_err();
    assert!(matches!(err, KeyError::Rejected(_)), "{err}");

    let swapped = with(rsa_jwk().clone(), "dp", rsa_jwk()["dq"].clone());
    let err = SigningKey::from_jwk(&swapped, Alg::RS256).unwrap_err();
    assert!(matches!(err, KeyError::Rejected(_)), "{err}");
}

#[test]
fn malformed_members_are_reported_by_name() {
    let err = SigningKey::from_jwk(&with(ec_jwk(), "x", json!("***")), Alg::ES256).unwrap_err();
    assert!(matches!(err, KeyError::BadMember("x")), "{err}");
    let err = SigningKey::from_jwk(&with(ec_jwk(), "y", json!(5)), Alg::ES256).unwrap_err();
    assert!(matches!(err, KeyError::BadMember("y")), "{err}");
    let err = SigningKey::from_jwk(&without(rsa_jwk().clone(), "n"), Alg::RS256).unwrap_err();
    assert!(matches!(err, KeyError::MissingMember("n")), "{err}");
    let short = with(ec_jwk(), "x", json!(B64.encode([1u8; 31])));
    let err = SigningKey::from_jwk(&short, Alg::ES256).unwrap_err();
    assert!(matches!(err, KeyError::BadCoordinate("x")), "{err}");
}

#[test]
fn padded_base64_is_accepted() {
    let mut jwk = ec_jwk();
    let x = jwk["x"].as_str().unwrap().to_string() + "=";
    jwk["x"] = json!(x);
    let key = SigningKey::from_jwk(&jwk, Alg::ES256).unwrap();
    assert!(!key.public_jwk()["x"].as_str().unwrap().ends_with('='));
}

#[test]
fn public_jwk_strips_every_private_member() {
    let mut rsa = rsa_jwk().clone();
    let obj = rsa.as_object_mut().unwrap();
    obj.insert(
        "oth".into(),
        json!([{"r": "AQAB", "d": "AQAB", "t": "AQAB"}]),
    );
    obj.insert("k".into(), json!("c2VjcmV0"));
    obj.insert("x5c".into(), json!(["whatever"]));
    obj.insert("ext".into(), json!(true));
    let public = public_jwk(&rsa).unwrap();
    let mut members: Vec<&String> = public.as_object().unwrap().keys().collect();
    members.sort();
    assert_eq!(members, ["alg", "e", "kid", "kty", "n", "use"]);
    for m in PRIVATE_MEMBERS {
        assert!(public.get(m).is_none(), "{m} leaked");
    }
    assert_eq!(public["n"], rsa_jwk()["n"]);

    let mut ec = ec_jwk();
    ec.as_object_mut()
        .unwrap()
        .insert("k".into(), json!("c2VjcmV0"));
    let public = public_jwk(&ec).unwrap();
    let mut members: Vec<&String> = public.as_object().unwrap().keys().collect();
    members.sort();
    assert_eq!(members, ["alg", "crv", "kid", "kty", "use", "x", "y"]);
}

#[test]
fn public_jwk_fills_in_alg_and_use() {
    let bare = without(without(ec_jwk(), "alg"), "use");
    let public = public_jwk(&bare).unwrap();
    assert_eq!(public["alg"], "ES256");
    assert_eq!(public["use"], "sig");
}

#[test]
fn verification_keys_accept_jwks_array_and_empty() {
    assert!(parse_verification_keys("").unwrap().is_empty());
    assert!(parse_verification_keys("  \n").unwrap().is_empty());
    assert!(
        parse_verification_keys(r#"{"keys":[]}"#)
            .unwrap()
            .is_empty()
    );
    assert!(parse_verification_keys("[]").unwrap().is_empty());

    let ec = ec_jwk();
    let jwks_text = json!({"keys": [rsa_jwk(), ec]}).to_string();
    let keys = parse_verification_keys(&jwks_text).unwrap();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0], public_jwk(rsa_jwk()).unwrap());
    assert_eq!(keys[1]["kid"], "ec-1");
    for key in &keys {
        for m in PRIVATE_MEMBERS {
            assert!(key.get(m).is_none());
        }
    }
    let array_text = json!([ec_jwk()]).to_string();
    assert_eq!(parse_verification_keys(&array_text).unwrap().len(), 1);
}

#[test]
fn verification_keys_report_the_bad_entry() {
    let err = parse_verification_keys("{oops").unwrap_err();
    assert!(matches!(err, KeyError::NotJson(_)), "{err}");
    for shape in ["42", r#"{"kid":"x"}"#, r#"{"keys":{}}"#, "\"str\""] {
        assert!(
            matches!(parse_verification_keys(shape), Err(KeyError::NotAKeySet)),
            "{shape}"
        );
    }
    let text = json!([ec_jwk(), without(ec_jwk(), "kid")]).to_string();
    let err = parse_verification_keys(&text).unwrap_err();
    assert!(matches!(err, KeyError::InSet { index: 1, .. }), "{err}");
    assert!(
        err.to_string().starts_with("key #1: JWK has no kid"),
        "{err}"
    );

    let text = json!([weak_rsa_jwk()]).to_string();
    let err = parse_verification_keys(&text).unwrap_err();
    assert!(err.to_string().contains("1024 bits"), "{err}");

    let text = json!([{"kty": "oct", "k": "c2VjcmV0", "kid": "h"}]).to_string();
    let err = parse_verification_keys(&text).unwrap_err();
    assert!(err.to_string().contains("\"oct\""), "{err}");
}

#[test]
fn jwks_wraps_keys_in_order() {
    let a = json!({"kid": "a"});
    let b = json!({"kid": "b"});
    assert_eq!(jwks(&[a.clone(), b.clone()]), json!({"keys": [a, b]}));
    assert_eq!(jwks(&[]), json!({"keys": []}));
}

#[test]
fn debug_output_hides_key_material() {
    let jwk = ec_jwk();
    let key = SigningKey::from_jwk(&jwk, Alg::ES256).unwrap();
    let shown = format!("{key:?}");
    assert!(shown.contains("ec-1"));
    assert!(!shown.contains(jwk["d"].as_str().unwrap()));
}

#[test]
fn signing_key_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<SigningKey>();
}
