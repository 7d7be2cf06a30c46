use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

use super::Role;
use crate::config::Secret;

#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error("a merchant token needs --store-ids")]
    MerchantWithoutStores,
    #[error("signing failed: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
}

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    role: Role,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    store_ids: &'a [String],
    iat: u64,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
}

/// Signs an HS256 client token, as the platform's auth service would.
pub fn mint_hs256(
    secret: &Secret,
    sub: &str,
    role: Role,
    store_ids: &[String],
    ttl: Duration,
    issuer: Option<&str>,
    audience: Option<&str>,
) -> Result<String, MintError> {
    if role == Role::Merchant && store_ids.is_empty() {
        return Err(MintError::MerchantWithoutStores);
    }
    let iat = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let claims = Claims {
        sub,
        role,
        store_ids,
        iat,
        exp: iat + ttl.as_secs(),
        iss: issuer,
        aud: audience,
    };
    Ok(jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.expose().as_bytes()),
    )?)
}
