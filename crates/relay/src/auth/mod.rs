//! Who a client is: JWT verification into a typed [`Principal`], the reasons a
//! handshake is refused, whether a new token may continue a connection, and
//! token minting for development.

mod mint;
mod principal;
mod refresh;
mod verifier;

pub use mint::{MintError, mint_hs256};
pub use principal::{Principal, Role};
pub use refresh::{RefreshRefusal, refreshed};
pub use verifier::{KeyError, MAX_TOKEN_BYTES, Verifier};

/// Why a client was refused. `Display` is the exact `connect_error` message
/// of CONTRACT §2; [`Rejection::reason`] is the bounded metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("missing token")]
    MissingToken,
    #[error("invalid token")]
    InvalidToken,
    #[error("token expired")]
    TokenExpired,
    #[error("role not allowed")]
    RoleNotAllowed,
    #[error("invalid claims")]
    InvalidClaims,
    #[error("too many connections")]
    TooManyConnections,
}

impl Rejection {
    pub const ALL: [Rejection; 6] = [
        Self::MissingToken,
        Self::InvalidToken,
        Self::TokenExpired,
        Self::RoleNotAllowed,
        Self::InvalidClaims,
        Self::TooManyConnections,
    ];

    pub fn reason(self) -> &'static str {
        match self {
            Self::MissingToken => "missing_token",
            Self::InvalidToken => "invalid_token",
            Self::TokenExpired => "token_expired",
            Self::RoleNotAllowed => "role_not_allowed",
            Self::InvalidClaims => "invalid_claims",
            Self::TooManyConnections => "too_many_connections",
        }
    }
}
