use std::sync::OnceLock;

use serde_json::json;

use super::*;
use crate::keys::generate_private_jwk;

fn rsa_jwk() -> &'static Value {
    static JWK: OnceLock<Value> = OnceLock::new();
    JWK.get_or_init(|| generate_private_jwk(Alg::RS256, "rsa-active", 2048).unwrap())
}

fn ec_jwk(kid: &str) -> Value {
    generate_private_jwk(Alg::ES256, kid, 0).unwrap()
}

fn weak_rsa_jwk() -> &'static str {
    include_str!("../../tests/fixtures/rsa-1024.jwk.json")
}

fn parse(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    Config::from_vars(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())))
}

fn no_files(_: &Path) -> io::Result<String> {
    panic!("no file should be read")
}

/// Parses and loads keys, returning the error (test expects failure).
fn fatal(vars: &[(&str, &str)]) -> ConfigError {
    match parse(vars) {
        Err(e) => e,
        Ok(cfg) => cfg
            .load_keys(no_files)
            .expect_err("expected a fatal config"),
    }
}

fn assert_fatal(vars: &[(&str, &str)], variable: &str, needle: &str) {
    Refused {
        name: &format!("{vars:?}"),
        vars,
        variable,
        says: needle,
    }
    .check();
}

/// A configuration the service refuses, named for the failure message: the
/// error names `variable`, says `says`, and is one line.
struct Refused<'a> {
    name: &'a str,
    vars: &'a [(&'a str, &'a str)],
    variable: &'a str,
    says: &'a str,
}

impl Refused<'_> {
    fn check(&self) {
        let Refused {
            name,
            vars,
            variable,
            says,
        } = self;
        let err = fatal(vars);
        assert_eq!(err.variable, *variable, "{name}: {err}");
        assert!(err.message.contains(says), "{name}: {err:?} lacks {says:?}");
        assert!(!err.to_string().contains('\n'), "{name}: one line: {err}");
        assert!(err.to_string().starts_with(variable), "{name}: {err}");
    }
}

#[test]
fn defaults() {
    let cfg = parse(&[]).unwrap();
    assert_eq!(cfg.port, 3200);
    assert_eq!(cfg.bind, IpAddr::from([0, 0, 0, 0]));
    assert_eq!(cfg.issuer, "macp-auth-service");
    assert_eq!(cfg.audience, "macp-runtime");
    assert_eq!(cfg.max_ttl_seconds, 3600);
    assert_eq!(cfg.default_ttl_seconds, 300);
    assert_eq!(cfg.alg, Alg::RS256);
    assert_eq!(cfg.signing_key, KeySpec::Ephemeral);
    assert!(cfg.verification_keys.is_empty());
}

#[test]
fn explicit_values() {
    let cfg = parse(&[
        (PORT, "8080"),
        (BIND, "127.0.0.1"),
        (ISSUER, "iss-x"),
        (AUDIENCE, "aud-y"),
        (MAX_TTL, "600"),
        (DEFAULT_TTL, "600"),
        (SIGNING_ALG, "ES256"),
        ("UNRELATED", "ignored"),
    ])
    .unwrap();
    assert_eq!(cfg.port, 8080);
    assert_eq!(cfg.bind, IpAddr::from([127, 0, 0, 1]));
    assert_eq!(
        (cfg.issuer.as_str(), cfg.audience.as_str()),
        ("iss-x", "aud-y")
    );
    assert_eq!((cfg.max_ttl_seconds, cfg.default_ttl_seconds), (600, 600));
    assert_eq!(cfg.alg, Alg::ES256);
    let cfg = parse(&[(BIND, "::1"), (PORT, "0")]).unwrap();
    assert!(cfg.bind.is_ipv6());
    assert_eq!(cfg.port, 0);
}

#[test]
fn empty_values_mean_default() {
    let cfg = parse(&[
        (PORT, ""),
        (ISSUER, " "),
        (MAX_TTL, ""),
        (VERIFICATION_KEYS_JSON, ""),
    ])
    .unwrap();
    assert_eq!(cfg.port, 3200);
    assert_eq!(cfg.issuer, "macp-auth-service");
    assert_eq!(cfg.max_ttl_seconds, 3600);
}

#[test]
fn bad_ttls() {
    for (var, value, needle) in [
        (MAX_TTL, "abc", "positive whole number"),
        (MAX_TTL, "0", "must be positive"),
        (MAX_TTL, "-5", "positive whole number"),
        (MAX_TTL, "1.5", "positive whole number"),
        (DEFAULT_TTL, "ten", "positive whole number"),
        (DEFAULT_TTL, "0", "must be positive"),
        (DEFAULT_TTL, "-1", "positive whole number"),
        (MAX_TTL, "999999999999", "ceiling"),
    ] {
        assert_fatal(&[(var, value)], var, needle);
    }
}

#[test]
fn default_above_max() {
    assert_fatal(
        &[(MAX_TTL, "60"), (DEFAULT_TTL, "61")],
        DEFAULT_TTL,
        "above",
    );
    // Default above the default max.
    assert_fatal(&[(DEFAULT_TTL, "3601")], DEFAULT_TTL, "above");
}

#[test]
fn unknown_alg() {
    assert_fatal(&[(SIGNING_ALG, "HS256")], SIGNING_ALG, "HS256");
    assert_fatal(&[(SIGNING_ALG, "rs256")], SIGNING_ALG, "RS256 or ES256");
}

#[test]
fn bad_port_and_bind() {
    assert_fatal(&[(PORT, "http")], PORT, "port number");
    assert_fatal(&[(PORT, "70000")], PORT, "70000");
    assert_fatal(&[(PORT, "-1")], PORT, "port number");
    assert_fatal(&[(BIND, "localhost")], BIND, "localhost");
    assert_fatal(&[(BIND, "300.0.0.1")], BIND, "IPv4 or IPv6");
}

#[test]
fn jwk_not_json() {
    assert_fatal(
        &[(SIGNING_KEY_JSON, "{'kty': 'RSA'}")],
        SIGNING_KEY_JSON,
        "not valid JSON",
    );
    assert_fatal(&[(SIGNING_KEY_JSON, "   ")], SIGNING_KEY_JSON, "empty");
}

#[test]
fn public_only_jwk() {
    let public = keys::public_jwk(rsa_jwk()).unwrap().to_string();
    assert_fatal(
        &[(SIGNING_KEY_JSON, &public)],
        SIGNING_KEY_JSON,
        "public-only",
    );
}

#[test]
fn kty_not_matching_alg() {
    let ec = ec_jwk("ec").to_string();
    assert_fatal(
        &[(SIGNING_KEY_JSON, &ec)],
        SIGNING_KEY_JSON,
        "does not match algorithm RS256",
    );
    let rsa = rsa_jwk().to_string();
    assert_fatal(
        &[(SIGNING_KEY_JSON, &rsa), (SIGNING_ALG, "ES256")],
        SIGNING_KEY_JSON,
        "does not match algorithm ES256",
    );
}

#[test]
fn ec_curve_not_p256() {
    let mut ec = ec_jwk("ec");
    ec["crv"] = json!("P-521");
    let text = ec.to_string();
    assert_fatal(
        &[(SIGNING_KEY_JSON, &text), (SIGNING_ALG, "ES256")],
        SIGNING_KEY_JSON,
        "P-521",
    );
}

#[test]
fn rsa_under_2048_bits() {
    assert_fatal(
        &[(SIGNING_KEY_JSON, weak_rsa_jwk())],
        SIGNING_KEY_JSON,
        "1024 bits",
    );
    let verification = format!("[{}]", weak_rsa_jwk());
    assert_fatal(
        &[(VERIFICATION_KEYS_JSON, &verification)],
        VERIFICATION_KEYS_JSON,
        "1024 bits",
    );
}

#[test]
fn missing_kid() {
    let mut ec = ec_jwk("x");
    ec.as_object_mut().unwrap().remove("kid");
    let text = ec.to_string();
    assert_fatal(
        &[(SIGNING_KEY_JSON, &text), (SIGNING_ALG, "ES256")],
        SIGNING_KEY_JSON,
        "kid",
    );
    let verification = json!({"keys": [keys::public_jwk(&ec_jwk("y")).unwrap(), {"kty": "EC", "crv": "P-256", "x": ec["x"], "y": ec["y"]}]}).to_string();
    assert_fatal(
        &[(VERIFICATION_KEYS_JSON, &verification)],
        VERIFICATION_KEYS_JSON,
        "key #1: JWK has no kid",
    );
}

#[test]
fn duplicate_kids() {
    let active = ec_jwk("same");
    let other_same = ec_jwk("same");
    let text = active.to_string();
    let verification = json!([other_same]).to_string();
    assert_fatal(
        &[
            (SIGNING_KEY_JSON, &text),
            (SIGNING_ALG, "ES256"),
            (VERIFICATION_KEYS_JSON, &verification),
        ],
        VERIFICATION_KEYS_JSON,
        "also the kid of the active key",
    );
    let verification = json!([ec_jwk("v1"), ec_jwk("v1")]).to_string();
    assert_fatal(
        &[(VERIFICATION_KEYS_JSON, &verification)],
        VERIFICATION_KEYS_JSON,
        "duplicate kid \"v1\"",
    );
    // The ephemeral key's kid counts too.
    let verification = json!([ec_jwk(EPHEMERAL_KID)]).to_string();
    assert_fatal(
        &[
            (SIGNING_ALG, "ES256"),
            (VERIFICATION_KEYS_JSON, &verification),
        ],
        VERIFICATION_KEYS_JSON,
        "dev-key-1",
    );
}

#[test]
fn both_key_variables() {
    let text = ec_jwk("k").to_string();
    let err = fatal(&[
        (SIGNING_KEY_JSON, &text),
        (SIGNING_KEY_FILE, "/run/secrets/jwk"),
    ]);
    assert!(err.variable.contains(SIGNING_KEY_JSON) && err.variable.contains(SIGNING_KEY_FILE));
    assert!(err.message.contains("both are set"));
}

#[test]
fn bad_verification_keys_json() {
    assert_fatal(
        &[(VERIFICATION_KEYS_JSON, "{\"keys\": [")],
        VERIFICATION_KEYS_JSON,
        "not valid JSON",
    );
    assert_fatal(
        &[(VERIFICATION_KEYS_JSON, "{\"kid\": \"a\"}")],
        VERIFICATION_KEYS_JSON,
        "\"keys\" array",
    );
}

#[test]
fn env_key_loads_with_verification_keys_after_it() {
    let active = rsa_jwk().to_string();
    let mut old_rsa = rsa_jwk().clone();
    old_rsa["kid"] = json!("old-rsa");
    let verification = json!({"keys": [ec_jwk("old-ec"), old_rsa]}).to_string();
    let cfg = parse(&[
        (SIGNING_KEY_JSON, &active),
        (VERIFICATION_KEYS_JSON, &verification),
    ])
    .unwrap();
    let loaded = cfg.load_keys(no_files).unwrap();
    assert_eq!(loaded.source, KeySource::Env);
    assert_eq!(loaded.active.kid(), "rsa-active");
    let kids: Vec<&str> = loaded
        .verification
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert_eq!(kids, ["old-ec", "old-rsa"]);
    let published = loaded.published();
    assert_eq!(published.len(), 3);
    assert_eq!(published[0]["kid"], "rsa-active");
    for key in &published {
        assert!(key.get("d").is_none());
    }
}

#[test]
fn file_key_is_read_through_the_reader() {
    let text = ec_jwk("from-file").to_string();
    let cfg = parse(&[
        (SIGNING_KEY_FILE, "/secrets/key.json"),
        (SIGNING_ALG, "ES256"),
    ])
    .unwrap();
    let loaded = cfg
        .load_keys(|path| {
            assert_eq!(path, Path::new("/secrets/key.json"));
            Ok(text.clone())
        })
        .unwrap();
    assert_eq!(loaded.source, KeySource::File);
    assert_eq!(loaded.active.kid(), "from-file");
}

#[test]
fn unreadable_or_bad_key_file_names_the_variable() {
    let cfg = parse(&[(SIGNING_KEY_FILE, "/nope")]).unwrap();
    let err = cfg
        .load_keys(|_| Err(io::Error::new(io::ErrorKind::NotFound, "No such file")))
        .unwrap_err();
    assert_eq!(err.variable, SIGNING_KEY_FILE);
    assert!(err.message.contains("/nope"), "{err}");
    let err = cfg.load_keys(|_| Ok("not json".into())).unwrap_err();
    assert_eq!(err.variable, SIGNING_KEY_FILE);
    assert!(err.message.contains("not valid JSON"), "{err}");
    assert_fatal(&[(SIGNING_KEY_FILE, "")], SIGNING_KEY_FILE, "empty");
}

#[test]
fn ephemeral_key_when_unset() {
    let cfg = parse(&[(SIGNING_ALG, "ES256")]).unwrap();
    let loaded = cfg.load_keys(no_files).unwrap();
    assert_eq!(loaded.source, KeySource::Ephemeral);
    assert_eq!(loaded.active.kid(), "dev-key-1");
    assert_eq!(loaded.active.alg(), Alg::ES256);
    assert_eq!(KeySource::Ephemeral.to_string(), "ephemeral");
}

#[test]
fn mint_controls_default_off() {
    let cfg = parse(&[]).unwrap();
    assert_eq!(cfg.mint_tokens_file, None);
    assert_eq!(cfg.rate_limit, None);
    assert!(!cfg.audit_log);
    assert!(cfg.load_callers(no_files).unwrap().is_none());
    let cfg = parse(&[(AUDIT_LOG, "off"), (RATE_LIMIT_PER_SECOND, "")]).unwrap();
    assert!(!cfg.audit_log);
    assert_eq!(cfg.rate_limit, None);
}

#[test]
fn mint_controls_parse() {
    let cfg = parse(&[
        (AUDIT_LOG, "stdout"),
        (RATE_LIMIT_PER_SECOND, "2.5"),
        (MINT_TOKENS_FILE, "/run/callers"),
    ])
    .unwrap();
    assert!(cfg.audit_log);
    assert_eq!(
        cfg.rate_limit,
        Some(RateLimit {
            per_second: 2.5,
            burst: 3
        })
    );
    assert_eq!(
        cfg.mint_tokens_file.as_deref(),
        Some(Path::new("/run/callers"))
    );
    let set = cfg
        .load_callers(|_| Ok("# c\nabcdefghijklmnopqrstuvwx\n".to_string()))
        .unwrap()
        .unwrap();
    assert_eq!(set.len(), 1);
    let cfg = parse(&[(RATE_LIMIT_PER_SECOND, "0.5"), (RATE_LIMIT_BURST, "10")]).unwrap();
    assert_eq!(
        cfg.rate_limit,
        Some(RateLimit {
            per_second: 0.5,
            burst: 10
        })
    );
}

#[test]
fn mint_controls_fatal() {
    for case in [
        Refused {
            name: "an audit sink other than stdout",
            vars: &[(AUDIT_LOG, "file")],
            variable: AUDIT_LOG,
            says: "stdout or off",
        },
        Refused {
            name: "a rate of zero",
            vars: &[(RATE_LIMIT_PER_SECOND, "0")],
            variable: RATE_LIMIT_PER_SECOND,
            says: "positive",
        },
        Refused {
            name: "a negative rate",
            vars: &[(RATE_LIMIT_PER_SECOND, "-1")],
            variable: RATE_LIMIT_PER_SECOND,
            says: "positive",
        },
        Refused {
            name: "an infinite rate",
            vars: &[(RATE_LIMIT_PER_SECOND, "inf")],
            variable: RATE_LIMIT_PER_SECOND,
            says: "positive",
        },
        Refused {
            name: "a rate that is no number",
            vars: &[(RATE_LIMIT_PER_SECOND, "ten")],
            variable: RATE_LIMIT_PER_SECOND,
            says: "positive",
        },
        Refused {
            name: "a burst without a rate",
            vars: &[(RATE_LIMIT_BURST, "5")],
            variable: RATE_LIMIT_BURST,
            says: "needs",
        },
        Refused {
            name: "a burst of zero",
            vars: &[(RATE_LIMIT_PER_SECOND, "5"), (RATE_LIMIT_BURST, "0")],
            variable: RATE_LIMIT_BURST,
            says: "whole number",
        },
        Refused {
            name: "a fractional burst",
            vars: &[(RATE_LIMIT_PER_SECOND, "5"), (RATE_LIMIT_BURST, "1.5")],
            variable: RATE_LIMIT_BURST,
            says: "whole number",
        },
        Refused {
            name: "a blank tokens file path",
            vars: &[(MINT_TOKENS_FILE, " ")],
            variable: MINT_TOKENS_FILE,
            says: "empty",
        },
    ] {
        case.check();
    }
}

#[test]
fn tokens_file_unreadable_or_empty_is_fatal() {
    let cfg = parse(&[(MINT_TOKENS_FILE, "/run/callers")]).unwrap();
    let err = cfg
        .load_callers(|_| Err(io::Error::from(io::ErrorKind::NotFound)))
        .unwrap_err();
    assert_eq!(err.variable, MINT_TOKENS_FILE);
    assert!(err.message.contains("cannot read /run/callers"), "{err}");
    let err = cfg
        .load_callers(|_| Ok("# none\n".to_string()))
        .unwrap_err();
    assert_eq!(err.variable, MINT_TOKENS_FILE);
    assert!(err.message.contains("no tokens"), "{err}");
    let err = cfg.load_callers(|_| Ok("short\n".to_string())).unwrap_err();
    assert!(err.message.contains("line 1"), "{err}");
}

#[test]
fn connection_limits_default_and_parse() {
    let cfg = parse(&[]).unwrap();
    assert_eq!(cfg.header_timeout, Duration::from_secs(10));
    assert_eq!(cfg.request_timeout, Duration::from_secs(30));
    assert_eq!(cfg.max_connections, None);
    assert_eq!(cfg.shutdown_delay, Duration::ZERO);
    // The default cap follows the descriptor limit.
    assert_eq!(cfg.max_connections_for(1024).unwrap(), 960);
    assert_eq!(cfg.max_connections_for(1 << 20).unwrap(), 4096);

    let cfg = parse(&[
        (HEADER_TIMEOUT, "3"),
        (REQUEST_TIMEOUT, " 7 "),
        (MAX_CONNECTIONS, "500"),
        (SHUTDOWN_DELAY, "0"),
    ])
    .unwrap();
    let limits = cfg.listener_limits(1024).unwrap();
    assert_eq!(limits.header_timeout, Duration::from_secs(3));
    assert_eq!(limits.request_timeout, Duration::from_secs(7));
    assert_eq!(limits.max_connections, 500);
    assert_eq!(cfg.shutdown_delay, Duration::ZERO);
    let cfg = parse(&[(SHUTDOWN_DELAY, "5"), (MAX_CONNECTIONS, "")]).unwrap();
    assert_eq!(cfg.shutdown_delay, Duration::from_secs(5));
    assert_eq!(cfg.max_connections, None);
}

#[test]
fn connection_limits_fatal() {
    for case in [
        Refused {
            name: "a header timeout of zero",
            vars: &[(HEADER_TIMEOUT, "0")],
            variable: HEADER_TIMEOUT,
            says: "from 1 to 3600",
        },
        Refused {
            name: "a fractional header timeout",
            vars: &[(HEADER_TIMEOUT, "1.5")],
            variable: HEADER_TIMEOUT,
            says: "whole number",
        },
        Refused {
            name: "a header timeout with a unit",
            vars: &[(HEADER_TIMEOUT, "10s")],
            variable: HEADER_TIMEOUT,
            says: "\"10s\"",
        },
        Refused {
            name: "a request timeout above an hour",
            vars: &[(REQUEST_TIMEOUT, "3601")],
            variable: REQUEST_TIMEOUT,
            says: "from 1",
        },
        Refused {
            name: "a negative request timeout",
            vars: &[(REQUEST_TIMEOUT, "-1")],
            variable: REQUEST_TIMEOUT,
            says: "whole number",
        },
        Refused {
            name: "a connection cap of zero",
            vars: &[(MAX_CONNECTIONS, "0")],
            variable: MAX_CONNECTIONS,
            says: "from 1",
        },
        Refused {
            name: "a connection cap that is no number",
            vars: &[(MAX_CONNECTIONS, "many")],
            variable: MAX_CONNECTIONS,
            says: "whole number",
        },
        Refused {
            name: "a connection cap above the ceiling",
            vars: &[(MAX_CONNECTIONS, "1000001")],
            variable: MAX_CONNECTIONS,
            says: "1000000",
        },
        Refused {
            name: "a negative shutdown delay",
            vars: &[(SHUTDOWN_DELAY, "-5")],
            variable: SHUTDOWN_DELAY,
            says: "from 0 to 3600",
        },
        Refused {
            name: "a shutdown delay above an hour",
            vars: &[(SHUTDOWN_DELAY, "5000")],
            variable: SHUTDOWN_DELAY,
            says: "from 0",
        },
    ] {
        case.check();
    }
    // A cap the descriptor limit cannot hold is fatal too, naming the variable.
    let cfg = parse(&[(MAX_CONNECTIONS, "961")]).unwrap();
    let err = cfg.listener_limits(1024).unwrap_err();
    assert_eq!(err.variable, MAX_CONNECTIONS);
    assert!(err.message.contains("at most 960"), "{err}");
    assert!(!err.to_string().contains('\n'));
    assert_eq!(cfg.max_connections_for(1025).unwrap(), 961);
}

#[test]
fn mint_listener_is_off_by_default_and_follows_bind() {
    let cfg = parse(&[]).unwrap();
    assert_eq!(cfg.mint_port, None);
    let cfg = parse(&[(PORT, "3200"), (MINT_PORT, "3201"), (BIND, "127.0.0.1")]).unwrap();
    assert_eq!(cfg.mint_port, Some(3201));
    assert_eq!(
        cfg.mint_bind,
        "127.0.0.1".parse::<std::net::IpAddr>().unwrap()
    );
    let cfg = parse(&[(MINT_PORT, "3201"), (MINT_BIND, "10.0.0.7")]).unwrap();
    assert_eq!(
        cfg.mint_bind,
        "10.0.0.7".parse::<std::net::IpAddr>().unwrap()
    );
    // Both on "any free port" are two different sockets.
    assert_eq!(
        parse(&[(PORT, "0"), (MINT_PORT, "0")]).unwrap().mint_port,
        Some(0)
    );
    // An empty value is unset, like the other variables.
    assert_eq!(parse(&[(MINT_PORT, "")]).unwrap().mint_port, None);
}

#[test]
fn mint_listener_fatal() {
    assert_fatal(&[(MINT_PORT, "70000")], MINT_PORT, "0-65535");
    assert_fatal(&[(MINT_PORT, "x")], MINT_PORT, "\"x\"");
    assert_fatal(
        &[(PORT, "3200"), (MINT_PORT, "3200")],
        MINT_PORT,
        "must differ from PORT",
    );
    assert_fatal(&[(MINT_PORT, "3200")], MINT_PORT, "must differ");
    assert_fatal(
        &[(MINT_BIND, "127.0.0.1")],
        MINT_BIND,
        "MACP_AUTH_MINT_PORT is not",
    );
    assert_fatal(
        &[(MINT_PORT, "3201"), (MINT_BIND, "localhost")],
        MINT_BIND,
        "IPv4 or IPv6",
    );
}

#[test]
fn a_mint_listener_splits_the_descriptor_budget() {
    let cfg = parse(&[(MINT_PORT, "3201")]).unwrap();
    // 1024 - 64 reserved, half per listener.
    assert_eq!(cfg.max_connections_for(1024).unwrap(), 480);
    assert_eq!(cfg.max_connections_for(1 << 20).unwrap(), 4096);
    let cfg = parse(&[(MINT_PORT, "3201"), (MAX_CONNECTIONS, "900")]).unwrap();
    let err = cfg.max_connections_for(1024).unwrap_err();
    assert_eq!(err.variable, MAX_CONNECTIONS);
    assert!(err.message.contains("at most 480 per listener"), "{err}");
    // Without the mint port the same value fits.
    let cfg = parse(&[(MAX_CONNECTIONS, "900")]).unwrap();
    assert_eq!(cfg.max_connections_for(1024).unwrap(), 900);
}

/// Loads with `MACP_AUTH_VERIFICATION_KEYS_FILE` at `/keys/published`
/// holding `published`, the active key from `vars`.
fn load_with_file(vars: &[(&str, &str)], published: &str) -> Result<LoadedKeys, ConfigError> {
    let mut all = vars.to_vec();
    all.push((VERIFICATION_KEYS_FILE, "/keys/published"));
    parse(&all)?.load_keys(|path| {
        assert_eq!(path, Path::new("/keys/published"));
        Ok(published.to_string())
    })
}

#[test]
fn verification_keys_from_a_file_like_the_variable() {
    let active = ec_jwk("active").to_string();
    let signing = [(SIGNING_KEY_JSON, active.as_str()), (SIGNING_ALG, "ES256")];
    let published = json!({"keys": [ec_jwk("old"), ec_jwk("next")]}).to_string();
    let loaded = load_with_file(&signing, &published).unwrap();
    let published = loaded.published();
    let kids: Vec<&str> = published
        .iter()
        .map(|k| k["kid"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(kids, ["active", "old", "next"]);
    // Private members are stripped, as from the variable.
    assert!(loaded.verification.iter().all(|k| k.get("d").is_none()));

    // The same checks as the variable, naming the file's variable.
    let expect = |published: &str, needle: &str| {
        let err = load_with_file(&signing, published).unwrap_err();
        assert_eq!(err.variable, VERIFICATION_KEYS_FILE, "{err}");
        assert!(err.message.contains(needle), "{err:?} lacks {needle:?}");
    };
    expect("{\"keys\": [", "not valid JSON");
    expect(&format!("[{}]", weak_rsa_jwk()), "1024 bits");
    let mut no_kid = ec_jwk("x");
    no_kid.as_object_mut().unwrap().remove("kid");
    expect(&json!([no_kid]).to_string(), "JWK has no kid");
    expect(
        &json!([ec_jwk("v1"), ec_jwk("v1")]).to_string(),
        "duplicate kid \"v1\"",
    );
    expect(
        &json!([ec_jwk("active")]).to_string(),
        "also the kid of the active key",
    );

    // An unreadable file is fatal and names the path.
    let cfg = parse(&[(VERIFICATION_KEYS_FILE, "/gone")]).unwrap();
    let err = cfg
        .load_keys(|path| {
            if path == Path::new("/gone") {
                Err(io::Error::new(io::ErrorKind::NotFound, "No such file"))
            } else {
                panic!("read {}", path.display())
            }
        })
        .unwrap_err();
    assert_eq!(err.variable, VERIFICATION_KEYS_FILE);
    assert!(err.message.contains("cannot read /gone"), "{err}");
}

#[test]
fn verification_keys_file_and_variable_exclude_each_other() {
    let err = fatal(&[
        (VERIFICATION_KEYS_JSON, "[]"),
        (VERIFICATION_KEYS_FILE, "/keys/published"),
    ]);
    assert!(
        err.variable.contains(VERIFICATION_KEYS_JSON)
            && err.variable.contains(VERIFICATION_KEYS_FILE),
        "{err}"
    );
    assert_fatal(
        &[(VERIFICATION_KEYS_FILE, " ")],
        VERIFICATION_KEYS_FILE,
        "empty",
    );
}
