//! Client tokens: the handshake's token extraction (`auth: { token }` or the
//! `token` query parameter) and JWT verification into a `Principal`.
//!
//! The first byte picks how the rest is used:
//! - `c`: `[header JSON "\n"] claims JSON`, signed here with the fuzz secret,
//!   so that the claim checks behind the signature are reached at all;
//! - `q`: a handshake query string; `a`: a handshake `auth` JSON payload;
//! - anything else: the whole input is the token.
//!
//! Beyond "no panic": a token is only ever accepted with a correct HS256
//! signature by the fuzz secret (checked here independently of
//! jsonwebtoken), never by a public-key verifier (nothing here holds a
//! private key), and an accepted token's principal is what its claims say,
//! within the contract (CONTRACT §2).

#![no_main]

use std::{
    sync::LazyLock,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use relay::{
    auth::{Principal, Rejection, Role, Verifier},
    config::{JwtConfig, JwtKeySource, Secret},
    gateway::token_from,
};
use serde_json::Value;
use sha2::Sha256;

const SECRET: &str = "fuzz-secret";
const LEEWAY: Duration = Duration::from_secs(5);

struct Verifiers {
    /// HS256, no issuer or audience configured.
    plain: Verifier,
    /// HS256 with issuer `orders` and audience `relay`.
    scoped: Verifier,
    /// RS256, ES256 and EdDSA: no input can carry a valid signature.
    public: Vec<Verifier>,
}

fn config(key: JwtKeySource, issuer: Option<&str>, audience: Option<&str>) -> JwtConfig {
    JwtConfig {
        key,
        issuer: issuer.map(str::to_owned),
        audience: audience.map(str::to_owned),
        leeway: LEEWAY,
    }
}

static VERIFIERS: LazyLock<Verifiers> = LazyLock::new(|| {
    let secret = || JwtKeySource::Secret(Secret::new(SECRET));
    let pem = |pem: &[u8]| JwtKeySource::PublicKeyPem {
        path: "fuzz.pem".into(),
        pem: pem.to_vec(),
    };
    Verifiers {
        plain: Verifier::new(&config(secret(), None, None)).expect("hs256"),
        scoped: Verifier::new(&config(secret(), Some("orders"), Some("relay"))).expect("hs256"),
        public: [
            &include_bytes!("../../crates/relay/tests/fixtures/rsa_public.pem")[..],
            include_bytes!("../../crates/relay/tests/fixtures/ec_public.pem"),
            include_bytes!("../../crates/relay/tests/fixtures/ed_public.pem"),
        ]
        .into_iter()
        .map(|p| Verifier::new(&config(pem(p), None, None)).expect("public key"))
        .collect(),
    }
});

fn hs256(signing_input: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("any key length");
    mac.update(signing_input.as_bytes());
    URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

fn segment(part: &str) -> Value {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .expect("an accepted token's segments are base64url");
    serde_json::from_slice(&bytes).expect("an accepted token's segments are JSON")
}

/// What an accepted token must satisfy, checked without jsonwebtoken.
fn check_accepted(token: &str, principal: &Principal, scoped: bool) {
    let (signing_input, signature) = token.rsplit_once('.').expect("three segments");
    assert_eq!(
        signature,
        hs256(signing_input),
        "accepted without the secret's signature: {token:?}"
    );
    let (header, payload) = signing_input.split_once('.').expect("three segments");
    assert_eq!(
        segment(header)["alg"],
        "HS256",
        "accepted another algorithm: {token:?}"
    );
    let claims = segment(payload);

    let role = principal.role();
    assert_eq!(claims["role"], role.as_str());
    let id = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        _ => None,
    };
    assert_eq!(id(&claims["sub"]).as_deref(), Some(principal.sub()));
    assert!(!principal.sub().is_empty() && principal.sub().len() <= 128);

    let stores = principal.store_ids();
    if role == Role::Merchant {
        assert!(!stores.is_empty(), "a merchant without stores");
        assert!(
            stores.windows(2).all(|w| w[0] < w[1]),
            "sorted, no duplicates"
        );
        let claimed: Vec<String> = claims["store_ids"]
            .as_array()
            .expect("store_ids array")
            .iter()
            .map(|v| id(v).expect("id"))
            .collect();
        assert!(stores.iter().all(|s| claimed.contains(s)));
        assert!(claimed.iter().all(|s| stores.contains(s)));
    } else {
        assert!(stores.is_empty());
    }

    // Not expired, and the principal knows until when (leeway included).
    let now = now_s();
    let exp = claims["exp"].as_f64().expect("exp is required");
    assert!(
        exp + LEEWAY.as_secs_f64() + 1.0 >= now as f64,
        "expired: {exp}"
    );
    let expires_at = principal.expires_at_ms().expect("expiry recorded");
    assert!(
        expires_at.saturating_add(1000) >= now * 1000,
        "expires_at {expires_at}"
    );
    if let Some(nbf) = claims.get("nbf").and_then(Value::as_f64) {
        assert!(
            nbf <= (now + LEEWAY.as_secs() + 1) as f64,
            "not yet valid: {nbf}"
        );
    }

    if scoped {
        assert_eq!(claims["iss"], "orders");
        let aud = &claims["aud"];
        assert!(
            aud == "relay"
                || aud
                    .as_array()
                    .is_some_and(|a| a.iter().any(|v| v == "relay")),
            "audience {aud}"
        );
    }
}

fn verify(token: &str) {
    let v = &*VERIFIERS;
    let plain = v.plain.verify(token);
    if let Ok(principal) = &plain {
        check_accepted(token, principal, false);
    }
    let scoped = v.scoped.verify(token);
    if let Ok(principal) = &scoped {
        check_accepted(token, principal, true);
        assert!(plain.is_ok(), "scoped accepted what plain refused");
    }
    // A missing token is decided before verification, never by it.
    assert_ne!(plain, Err(Rejection::MissingToken));
    for public in &v.public {
        let result = public.verify(token);
        assert!(
            result.is_err(),
            "{:?} accepted {token:?}",
            public.algorithm()
        );
    }
}

/// The handshake's extraction: a token, if any, is non-empty.
fn extracted(token: Option<String>) {
    if let Some(token) = token {
        assert!(!token.is_empty());
        verify(&token);
    }
}

fn signed(rest: &str) -> String {
    let (header, claims) = rest
        .split_once('\n')
        .unwrap_or((r#"{"alg":"HS256","typ":"JWT"}"#, rest));
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let signature = hs256(&signing_input);
    format!("{signing_input}.{signature}")
}

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    match input.as_bytes().first() {
        Some(b'c') => verify(&signed(&input[1..])),
        Some(b'q') => extracted(token_from(None, Some(&input[1..]))),
        Some(b'a') => {
            if let Ok(auth) = serde_json::from_str::<Value>(&input[1..]) {
                extracted(token_from(Some(&auth), None));
            }
        }
        _ => verify(input),
    }
});
