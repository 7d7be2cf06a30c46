//! The connect middleware: who is this client, and may it connect at all.

use serde_json::Value;
use socketioxide::{
    adapter::Adapter,
    extract::{SocketRef, State, TryData},
};

use super::GatewayState;
use crate::{
    auth::{Principal, Rejection},
    metrics,
};

/// Verifies the handshake token and stores the [`Principal`] in the socket's
/// extensions. An `Err` becomes the client's `connect_error` message.
pub async fn authenticate<A: Adapter>(
    socket: SocketRef<A>,
    TryData(auth): TryData<Value>,
    State(state): State<GatewayState>,
) -> Result<(), Rejection> {
    let query = socket.req_parts().uri.query();
    let result = token_from(auth.as_ref().ok(), query)
        .ok_or(Rejection::MissingToken)
        .and_then(|token| state.verifier.verify(&token));
    match result {
        Ok(principal) => match state.limits.admit(principal.role(), principal.sub()).await {
            Ok(permit) => {
                state.expiries.watch(socket.id, &principal);
                socket.extensions.insert(permit);
                socket.extensions.insert::<Principal>(principal);
                Ok(())
            }
            Err(rejection) => {
                metrics::handshake_rejected(rejection);
                tracing::debug!(sid = %socket.id, "too many connections for one user");
                Err(rejection)
            }
        },
        Err(rejection) => {
            metrics::handshake_rejected(rejection);
            tracing::debug!(sid = %socket.id, reason = rejection.reason(), "handshake refused");
            Err(rejection)
        }
    }
}

/// The token travels in `auth: { token }` or in the `token` query parameter
/// (percent-encoded); the auth payload wins when both are there.
pub fn token_from(auth: Option<&Value>, query: Option<&str>) -> Option<String> {
    let from_auth = auth
        .and_then(|a| a.get("token"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let from_query = || {
        query.and_then(|q| {
            form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == "token")
                .map(|(_, v)| v.into_owned())
        })
    };
    from_auth
        .or_else(from_query)
        .map(|t| strip_bearer(t.trim()).to_owned())
        .filter(|t| !t.is_empty())
}

/// Some client SDKs send `Bearer <jwt>` out of habit.
fn strip_bearer(token: &str) -> &str {
    token
        .strip_prefix("Bearer ")
        .or_else(|| token.strip_prefix("bearer "))
        .unwrap_or(token)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn reads_auth_payload_first() {
        let auth = json!({"token": "from-auth"});
        assert_eq!(
            token_from(Some(&auth), Some("token=from-query")).as_deref(),
            Some("from-auth")
        );
    }

    #[test]
    fn percent_decodes_the_query() {
        let query = "EIO=4&transport=polling&token=a%2Bb%2Fc%3D";
        assert_eq!(token_from(None, Some(query)).as_deref(), Some("a+b/c="));
    }

    #[test]
    fn missing_or_empty_is_none() {
        assert_eq!(token_from(None, Some("EIO=4")), None);
        assert_eq!(token_from(Some(&json!({"token": ""})), None), None);
        assert_eq!(token_from(Some(&json!({"token": 5})), None), None);
        assert_eq!(token_from(Some(&json!(null)), Some("token=")), None);
    }

    #[test]
    fn strips_a_bearer_prefix() {
        assert_eq!(
            token_from(Some(&json!({"token": "Bearer abc"})), None).as_deref(),
            Some("abc")
        );
    }
}
