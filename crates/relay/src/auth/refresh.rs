//! A new token for a live connection (`auth:refresh`): it must pass the
//! handshake's checks and name the same user in the same role.

use super::{Principal, Rejection};

/// Why a refresh was refused. `Display` is the ack's `error`, always one of
/// the handshake's messages (CONTRACT §2 and §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RefreshRefusal {
    /// The token itself failed, exactly as it would at the handshake.
    #[error("{0}")]
    Token(Rejection),
    /// A valid token of another user: its claims do not fit this connection.
    #[error("invalid claims")]
    OtherSubject,
    /// A valid token of the same user in another role: the rooms and rights
    /// of a connection follow its role, so a role change needs a reconnect.
    #[error("role not allowed")]
    OtherRole,
}

/// The principal a connection of `current` continues as, given the result
/// of verifying its new token (the handshake's own [`super::Verifier::verify`]).
pub fn refreshed(
    current: &Principal,
    verified: Result<Principal, Rejection>,
) -> Result<Principal, RefreshRefusal> {
    let next = verified.map_err(RefreshRefusal::Token)?;
    if next.sub() != current.sub() {
        return Err(RefreshRefusal::OtherSubject);
    }
    if next.role() != current.role() {
        return Err(RefreshRefusal::OtherRole);
    }
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;

    #[test]
    fn only_the_same_user_in_the_same_role_continues() {
        let current = Principal::new("m1", Role::Merchant, vec!["s1".into()]);
        let next = Principal::new("m1", Role::Merchant, vec!["s2".into()]).expiring_at(100, 5);
        assert_eq!(refreshed(&current, Ok(next.clone())), Ok(next));
        let other = Principal::new("m2", Role::Merchant, vec!["s1".into()]);
        assert_eq!(
            refreshed(&current, Ok(other)),
            Err(RefreshRefusal::OtherSubject)
        );
        let driver = Principal::new("m1", Role::Driver, vec![]);
        assert_eq!(
            refreshed(&current, Ok(driver)),
            Err(RefreshRefusal::OtherRole)
        );
        assert_eq!(
            refreshed(&current, Err(Rejection::TokenExpired)),
            Err(RefreshRefusal::Token(Rejection::TokenExpired))
        );
        let messages = [
            RefreshRefusal::OtherSubject.to_string(),
            RefreshRefusal::OtherRole.to_string(),
            RefreshRefusal::Token(Rejection::InvalidToken).to_string(),
        ];
        assert_eq!(
            messages,
            ["invalid claims", "role not allowed", "invalid token"]
        );
    }
}
