use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde_json::{Map, Value};

use super::{Principal, Rejection, Role};
use crate::config::{JwtConfig, JwtKeySource};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: not a PEM public key of type RSA, EC (P-256) or Ed25519")]
    UnsupportedPem { path: String },
}

/// Longest token verified: real ones are well under 2 KiB, and a longer one
/// would only cost base64 and JSON work before failing.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Verifies client tokens against the one configured key. The algorithm is
/// pinned by the key, so `alg: none` and algorithm-confusion tokens fail.
#[derive(Clone)]
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("algorithms", &self.validation.algorithms)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    pub fn new(config: &JwtConfig) -> Result<Self, KeyError> {
        let (key, algorithm) = match &config.key {
            JwtKeySource::Secret(secret) => (
                DecodingKey::from_secret(secret.expose().as_bytes()),
                Algorithm::HS256,
            ),
            JwtKeySource::PublicKeyPem { path, pem } => {
                public_key(pem).ok_or_else(|| KeyError::UnsupportedPem {
                    path: path.display().to_string(),
                })?
            }
        };
        let mut validation = Validation::new(algorithm);
        validation.leeway = config.leeway.as_secs();
        validation.validate_nbf = true;
        // `exp` is checked in `verify`: jsonwebtoken reads a negative `exp` as
        // missing, which would answer `invalid claims` for a token long expired.
        validation.validate_exp = false;
        // jsonwebtoken only compares iss/aud when present: a configured one must also be required.
        let mut required = vec![];
        required.extend(config.issuer.as_ref().map(|_| "iss"));
        required.extend(config.audience.as_ref().map(|_| "aud"));
        validation.set_required_spec_claims(&required);
        match &config.issuer {
            Some(iss) => validation.set_issuer(&[iss]),
            None => validation.iss = None,
        }
        match &config.audience {
            Some(aud) => validation.set_audience(&[aud]),
            // Without a configured audience a token's `aud` is not ours to judge.
            None => validation.validate_aud = false,
        }
        Ok(Self { key, validation })
    }

    pub fn algorithm(&self) -> Algorithm {
        self.validation.algorithms[0]
    }

    /// Checks signature, time and claims; never logs the token itself.
    pub fn verify(&self, token: &str) -> Result<Principal, Rejection> {
        if token.len() > MAX_TOKEN_BYTES {
            tracing::debug!(bytes = token.len(), "token refused: too long");
            return Err(Rejection::InvalidToken);
        }
        // RFC 7515 §4.1.11: a `crit` header names extensions the token needs
        // understood; we understand none, and jsonwebtoken ignores the header.
        let header = jsonwebtoken::decode_header(token).map_err(|e| {
            tracing::debug!(error = %e, "token refused");
            Rejection::InvalidToken
        })?;
        if header.crit.is_some() {
            tracing::debug!("token refused: crit header");
            return Err(Rejection::InvalidToken);
        }
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &self.key, &self.validation)
            .map_err(|e| {
            tracing::debug!(error = %e, "token refused");
            match e.kind() {
                ErrorKind::MissingRequiredClaim(_) | ErrorKind::InvalidClaimFormat(_) => {
                    Rejection::InvalidClaims
                }
                _ => Rejection::InvalidToken,
            }
        })?;
        let exp = expiry(&data.claims, unix_now(), self.validation.leeway)?;
        let principal = principal_from_claims(&data.claims)?;
        Ok(principal.expiring_at(exp, self.validation.leeway))
    }
}

/// The token's `exp` in unix seconds, once it is known not to have passed.
/// Any number at or before `now - leeway` has passed, zero and negative ones
/// included (`token expired`); a missing `exp`, one that is not a number, or
/// one too large to be a time is `invalid claims` (an array or object there
/// already fails jsonwebtoken's parse of the claims: `invalid token`).
fn expiry(claims: &Map<String, Value>, now: u64, leeway: u64) -> Result<u64, Rejection> {
    let exp = match claims.get("exp") {
        Some(Value::Number(n)) => n.as_f64().ok_or(Rejection::InvalidClaims)?,
        _ => return Err(Rejection::InvalidClaims),
    };
    // As jsonwebtoken did: expired when exp < now - leeway, fractions rounded.
    if exp.round() < now.saturating_sub(leeway) as f64 {
        return Err(Rejection::TokenExpired);
    }
    if exp >= u64::MAX as f64 {
        return Err(Rejection::InvalidClaims);
    }
    Ok(exp.round() as u64)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn public_key(pem: &[u8]) -> Option<(DecodingKey, Algorithm)> {
    if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
        return Some((key, Algorithm::RS256));
    }
    if let Ok(key) = DecodingKey::from_ec_pem(pem) {
        return Some((key, Algorithm::ES256));
    }
    if let Ok(key) = DecodingKey::from_ed_pem(pem) {
        return Some((key, Algorithm::EdDSA));
    }
    None
}

fn principal_from_claims(claims: &Map<String, Value>) -> Result<Principal, Rejection> {
    let sub = claims
        .get("sub")
        .and_then(id_string)
        .ok_or(Rejection::InvalidClaims)?;
    let role = match claims.get("role") {
        Some(Value::String(role)) => role
            .parse::<Role>()
            .map_err(|_| Rejection::RoleNotAllowed)?,
        _ => return Err(Rejection::InvalidClaims),
    };
    let store_ids = if role == Role::Merchant {
        let ids = match claims.get("store_ids") {
            Some(Value::Array(ids)) => ids
                .iter()
                .map(id_string)
                .collect::<Option<Vec<_>>>()
                .ok_or(Rejection::InvalidClaims)?,
            _ => return Err(Rejection::InvalidClaims),
        };
        if ids.is_empty() {
            return Err(Rejection::InvalidClaims);
        }
        let mut ids = ids;
        ids.sort();
        ids.dedup();
        ids
    } else {
        Vec::new()
    };
    Ok(Principal::new(sub, role, store_ids))
}

/// Ids are strings by contract; integers are accepted too because many
/// backends mint numeric user and store ids.
fn id_string(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.is_empty() && s.len() <= 128 => Some(s.clone()),
        Value::Number(n) if n.is_u64() || n.is_i64() => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    use super::*;
    use crate::config::Secret;

    const SECRET: &str = "test-secret";

    fn verifier(issuer: Option<&str>, audience: Option<&str>) -> Verifier {
        Verifier::new(&JwtConfig {
            key: JwtKeySource::Secret(Secret::new(SECRET)),
            issuer: issuer.map(str::to_owned),
            audience: audience.map(str::to_owned),
            leeway: Duration::from_secs(5),
        })
        .expect("hs256 key")
    }

    fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs() as i64
    }

    fn sign(claims: Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .expect("sign")
    }

    #[test]
    fn accepts_a_valid_customer() {
        let p = verifier(None, None)
            .verify(&sign(
                json!({"sub": "42", "role": "customer", "exp": now() + 60}),
            ))
            .expect("valid");
        assert_eq!((p.sub(), p.role()), ("42", Role::Customer));
    }

    #[test]
    fn numeric_ids_become_strings() {
        let p = verifier(None, None)
            .verify(&sign(
                json!({"sub": 7, "role": "merchant", "store_ids": [3, "s2", 3], "exp": now() + 60}),
            ))
            .expect("valid");
        assert_eq!(p.sub(), "7");
        assert_eq!(p.store_ids(), ["3", "s2"]);
    }

    #[test]
    fn maps_each_failure_to_its_contract_message() {
        let v = verifier(None, None);
        let cases = [
            (
                json!({"sub": "1", "role": "customer", "exp": now() - 60}),
                Rejection::TokenExpired,
            ),
            (
                json!({"sub": "1", "role": "customer"}),
                Rejection::InvalidClaims,
            ),
            (
                json!({"sub": "1", "role": "chef", "exp": now() + 60}),
                Rejection::RoleNotAllowed,
            ),
            (
                json!({"sub": "1", "exp": now() + 60}),
                Rejection::InvalidClaims,
            ),
            (
                json!({"role": "customer", "exp": now() + 60}),
                Rejection::InvalidClaims,
            ),
            (
                json!({"sub": "1", "role": "merchant", "exp": now() + 60}),
                Rejection::InvalidClaims,
            ),
            (
                json!({"sub": "1", "role": "merchant", "store_ids": [], "exp": now() + 60}),
                Rejection::InvalidClaims,
            ),
            (
                json!({"sub": "1", "role": "customer", "exp": now() + 60, "nbf": now() + 600}),
                Rejection::InvalidToken,
            ),
        ];
        for (claims, expected) in cases {
            assert_eq!(v.verify(&sign(claims.clone())), Err(expected), "{claims}");
        }
        assert_eq!(v.verify("not.a.jwt"), Err(Rejection::InvalidToken));
        let padded = sign(
            json!({"sub": "1", "role": "customer", "exp": now() + 60, "pad": "x".repeat(MAX_TOKEN_BYTES)}),
        );
        assert_eq!(v.verify(&padded), Err(Rejection::InvalidToken));
    }

    #[test]
    fn an_exp_in_the_past_is_expired_whatever_number_it_is() {
        let v = verifier(None, None);
        let claims = |exp: Value| json!({"sub": "1", "role": "customer", "exp": exp});
        for exp in [
            json!(-1),
            json!(0),
            json!(-1.5),
            json!(0.4),
            json!(-1e300),
            json!(i64::MIN),
            json!(now() - 60),
        ] {
            assert_eq!(
                v.verify(&sign(claims(exp.clone()))),
                Err(Rejection::TokenExpired),
                "exp {exp}"
            );
        }
        // Not a number at all, or beyond any time: the claim itself is wrong.
        for exp in [json!("9999999999"), json!(null), json!(true), json!(1e300)] {
            assert_eq!(
                v.verify(&sign(claims(exp.clone()))),
                Err(Rejection::InvalidClaims),
                "exp {exp}"
            );
        }
        // Fractions are fine, and the socket's expiry follows exp + leeway.
        let p = v
            .verify(&sign(claims(json!(now() as f64 + 60.5))))
            .expect("valid");
        let at = p.expires_at_ms().expect("expiry");
        assert_eq!(p.exp().map(|exp| (exp + 5) * 1000), Some(at));
        assert!(
            at >= (now() as u64 + 60 + 5) * 1000 && at <= (now() as u64 + 62 + 5) * 1000,
            "{at}"
        );
    }

    #[test]
    fn a_crit_header_is_refused() {
        // RFC 7515 §4.1.11: extensions we do not understand make the token invalid.
        let v = verifier(None, None);
        let claims = json!({"sub": "1", "role": "admin", "exp": now() + 60});
        for crit in [vec!["exp".to_owned()], vec!["b64x".to_owned()], vec![]] {
            let mut header = Header::new(Algorithm::HS256);
            header.crit = Some(crit.clone());
            header.extras.insert("b64x".into(), "yes".into());
            let token = jsonwebtoken::encode(
                &header,
                &claims,
                &EncodingKey::from_secret(SECRET.as_bytes()),
            )
            .expect("sign");
            assert_eq!(
                v.verify(&token),
                Err(Rejection::InvalidToken),
                "crit {crit:?}"
            );
        }
        // The same token without crit is fine.
        assert!(v.verify(&sign(claims)).is_ok());
    }

    #[test]
    fn leeway_tolerates_small_clock_skew() {
        let token = sign(json!({"sub": "1", "role": "driver", "exp": now() - 2}));
        assert!(verifier(None, None).verify(&token).is_ok());
    }

    #[test]
    fn rejects_alg_none_and_other_algorithms() {
        let v = verifier(None, None);
        // {"alg":"none","typ":"JWT"} . {"sub":"1","role":"admin","exp":9999999999} . (empty)
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiIxIiwicm9sZSI6ImFkbWluIiwiZXhwIjo5OTk5OTk5OTk5fQ.";
        assert_eq!(v.verify(none), Err(Rejection::InvalidToken));
        let hs384 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS384),
            &json!({"sub": "1", "role": "admin", "exp": now() + 60}),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .expect("sign");
        assert_eq!(v.verify(&hs384), Err(Rejection::InvalidToken));
    }

    #[test]
    fn checks_issuer_and_audience_when_configured() {
        let v = verifier(Some("orders"), Some("relay"));
        let good = json!({"sub": "1", "role": "admin", "exp": now() + 60, "iss": "orders", "aud": "relay"});
        assert!(v.verify(&sign(good)).is_ok());
        let wrong_iss =
            json!({"sub": "1", "role": "admin", "exp": now() + 60, "iss": "x", "aud": "relay"});
        assert_eq!(v.verify(&sign(wrong_iss)), Err(Rejection::InvalidToken));
        let no_aud = json!({"sub": "1", "role": "admin", "exp": now() + 60, "iss": "orders"});
        assert!(v.verify(&sign(no_aud)).is_err());
        let no_iss = json!({"sub": "1", "role": "admin", "exp": now() + 60, "aud": "relay"});
        assert!(v.verify(&sign(no_iss)).is_err());
        // Unconfigured: a token's own aud is accepted.
        let any_aud = json!({"sub": "1", "role": "admin", "exp": now() + 60, "aud": "other"});
        assert!(verifier(None, None).verify(&sign(any_aud)).is_ok());
    }

    fn pem_verifier(public: &[u8]) -> Verifier {
        Verifier::new(&JwtConfig {
            key: JwtKeySource::PublicKeyPem {
                path: "test.pem".into(),
                pem: public.to_vec(),
            },
            issuer: None,
            audience: None,
            leeway: Duration::from_secs(5),
        })
        .expect("public key")
    }

    const RSA_PUBLIC: &[u8] = include_bytes!("../../tests/fixtures/rsa_public.pem");
    const RSA_PRIVATE: &[u8] = include_bytes!("../../tests/fixtures/rsa_private.pem");
    const EC_PUBLIC: &[u8] = include_bytes!("../../tests/fixtures/ec_public.pem");
    const EC_PRIVATE: &[u8] = include_bytes!("../../tests/fixtures/ec_private.pem");
    const ED_PUBLIC: &[u8] = include_bytes!("../../tests/fixtures/ed_public.pem");
    const ED_PRIVATE: &[u8] = include_bytes!("../../tests/fixtures/ed_private.pem");

    #[test]
    fn public_keys_pin_their_algorithm() {
        let claims = json!({"sub": "1", "role": "driver", "exp": now() + 60});
        let cases = [
            (
                RSA_PUBLIC,
                Algorithm::RS256,
                EncodingKey::from_rsa_pem(RSA_PRIVATE).expect("rsa"),
            ),
            (
                EC_PUBLIC,
                Algorithm::ES256,
                EncodingKey::from_ec_pem(EC_PRIVATE).expect("ec"),
            ),
            (
                ED_PUBLIC,
                Algorithm::EdDSA,
                EncodingKey::from_ed_pem(ED_PRIVATE).expect("ed"),
            ),
        ];
        for (public, alg, private) in &cases {
            let v = pem_verifier(public);
            assert_eq!(v.algorithm(), *alg);
            let token = jsonwebtoken::encode(&Header::new(*alg), &claims, private).expect("sign");
            assert!(v.verify(&token).is_ok(), "{alg:?}");
            // Algorithm confusion: an HMAC token keyed with the public key itself.
            let confused = jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                &claims,
                &EncodingKey::from_secret(public),
            )
            .expect("sign");
            assert_eq!(v.verify(&confused), Err(Rejection::InvalidToken), "{alg:?}");
        }
        // A token signed by another key type fails too.
        let rsa_token = jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &cases[0].2)
            .expect("sign");
        assert_eq!(
            pem_verifier(EC_PUBLIC).verify(&rsa_token),
            Err(Rejection::InvalidToken)
        );
    }

    #[test]
    fn garbage_pem_is_a_key_error() {
        let err = Verifier::new(&JwtConfig {
            key: JwtKeySource::PublicKeyPem {
                path: "bad.pem".into(),
                pem: b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n".to_vec(),
            },
            issuer: None,
            audience: None,
            leeway: Duration::from_secs(5),
        });
        assert!(matches!(err, Err(KeyError::UnsupportedPem { .. })));
    }
}
