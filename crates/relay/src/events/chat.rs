//! Order chat (CONTRACT §7): the `chat.message` stream entry and the
//! clients' `chat:*` payloads, with the checks every message passes.

use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::Timestamp;

/// The roles that may write to an order's chat, as they appear in
/// `from.role`; `system` is the backend's.
pub const WRITER_ROLES: [&str; 4] = ["customer", "driver", "support", "admin"];
pub const SYSTEM_ROLE: &str = "system";

/// `limit` of `chat:history`: default and largest.
pub const HISTORY_PAGE: usize = 50;
pub const HISTORY_PAGE_MAX: usize = 200;

const MAX_ID_LEN: usize = 128;

/// Who wrote a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatSender {
    /// The backend (`XADD ... type chat.message`): role `system`, an id
    /// when it names one.
    System { id: Option<String> },
    /// A client, appended by the relay for its `chat:send`: the socket's
    /// `sub` and role, checked when it was sent.
    Participant {
        id: String,
        role: String,
        client_msg_id: Option<String>,
    },
}

impl ChatSender {
    pub fn id(&self) -> &str {
        match self {
            Self::System { id } => id.as_deref().unwrap_or(""),
            Self::Participant { id, .. } => id,
        }
    }

    pub fn role(&self) -> &str {
        match self {
            Self::System { .. } => SYSTEM_ROLE,
            Self::Participant { role, .. } => role,
        }
    }
}

/// `chat.message`: a message in an order's chat, from the backend or
/// (appended by the relay) from a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    pub order_id: String,
    pub text: String,
    pub from: ChatSender,
}

impl ChatMessage {
    /// The entry a client's `chat:send` appends to the event stream.
    pub fn from_client(send: &ChatSend, from_id: &str, from_role: &str) -> Self {
        Self {
            order_id: send.order_id.clone(),
            text: send.text.clone(),
            from: ChatSender::Participant {
                id: from_id.to_owned(),
                role: from_role.to_owned(),
                client_msg_id: send.client_msg_id.clone(),
            },
        }
    }

    /// The stream entry's `data`.
    pub fn to_data(&self) -> Value {
        let mut data = json!({ "order_id": self.order_id, "text": self.text });
        match &self.from {
            ChatSender::System { id: Some(id) } => data["from_id"] = json!(id),
            ChatSender::System { id: None } => {}
            ChatSender::Participant {
                id,
                role,
                client_msg_id,
            } => {
                data["from_id"] = json!(id);
                data["from_role"] = json!(role);
                if let Some(c) = client_msg_id {
                    data["client_msg_id"] = json!(c);
                }
            }
        }
        data
    }

    /// The `chat:message` payload of the entry `event_id`.
    pub fn payload(&self, event_id: &str) -> Value {
        let mut payload = json!({
            "event_id": event_id,
            "order_id": self.order_id,
            "from": { "id": self.from.id(), "role": self.from.role() },
            "text": self.text,
            "ts": entry_ts(event_id),
        });
        if let ChatSender::Participant {
            client_msg_id: Some(c),
            ..
        } = &self.from
        {
            payload["client_msg_id"] = json!(c);
        }
        payload
    }
}

/// A message's `ts`: the time its stream entry was appended (the id's
/// milliseconds), the same on every node and on every repeat.
pub fn entry_ts(event_id: &str) -> Timestamp {
    event_id
        .split_once('-')
        .map_or(event_id, |(ms, _)| ms)
        .parse()
        .unwrap_or(0)
}

/// Why a `chat.message` entry does not decode (the caller maps it to a
/// [`super::DecodeReason`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatEntryError {
    Missing(&'static str),
    Invalid(&'static str, &'static str),
}

/// Decodes `chat.message` data. `from_role` is the relay's own field: it
/// marks a client's message (see docs/design.md for why a backend's XADD
/// is trusted with it and the publish API is not).
pub fn decode_entry(value: Map<String, Value>) -> Result<ChatMessage, ChatEntryError> {
    let text_field = |name: &'static str| -> Result<Option<String>, ChatEntryError> {
        match value.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(ChatEntryError::Invalid(name, "must be a string")),
        }
    };
    let order_id = text_field("order_id")?.ok_or(ChatEntryError::Missing("order_id"))?;
    if order_id.is_empty() || order_id.len() > MAX_ID_LEN {
        return Err(ChatEntryError::Invalid(
            "order_id",
            "must be 1 to 128 bytes",
        ));
    }
    let text = text_field("text")?.ok_or(ChatEntryError::Missing("text"))?;
    if text.trim().is_empty() {
        return Err(ChatEntryError::Invalid(
            "text",
            "must not be empty or only whitespace",
        ));
    }
    let from_id = text_field("from_id")?;
    if from_id
        .as_ref()
        .is_some_and(|id| id.is_empty() || id.len() > MAX_ID_LEN)
    {
        return Err(ChatEntryError::Invalid("from_id", "must be 1 to 128 bytes"));
    }
    let from = match text_field("from_role")? {
        None => ChatSender::System { id: from_id },
        Some(role) => {
            if !WRITER_ROLES.contains(&role.as_str()) {
                return Err(ChatEntryError::Invalid(
                    "from_role",
                    "must be customer, driver, support or admin",
                ));
            }
            ChatSender::Participant {
                id: from_id.ok_or(ChatEntryError::Missing("from_id"))?,
                role,
                client_msg_id: text_field("client_msg_id")?,
            }
        }
    };
    Ok(ChatMessage {
        order_id,
        text,
        from,
    })
}

/// A client's `chat:send`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ChatSend {
    pub order_id: String,
    pub text: String,
    #[serde(default)]
    pub client_msg_id: Option<String>,
}

/// A client's `chat:history`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ChatHistoryQuery {
    pub order_id: String,
    /// Messages strictly before this `event_id`.
    #[serde(default)]
    pub before: Option<String>,
    #[serde(default)]
    pub limit: Option<usize>,
}

/// A client's `chat:typing`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ChatTyping {
    pub order_id: String,
}

/// A client payload that is not a valid chat request: answered
/// `invalid message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid message: {0}")]
pub struct InvalidChat(pub &'static str);

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_ID_LEN
}

/// Whether `id` is a stream entry id (`ms-seq`).
fn is_entry_id(id: &str) -> bool {
    id.split_once('-').is_some_and(|(ms, seq)| {
        !ms.is_empty()
            && !seq.is_empty()
            && ms.len() <= 20
            && seq.len() <= 20
            && ms.bytes().all(|b| b.is_ascii_digit())
            && seq.bytes().all(|b| b.is_ascii_digit())
    })
}

/// Checks a `chat:send`: an order id, 1 to `max_chars` characters of text
/// that are not all whitespace, an optional `client_msg_id` of at most 128 bytes.
pub fn check_send(
    data: Result<ChatSend, impl std::fmt::Display>,
    max_chars: usize,
) -> Result<ChatSend, InvalidChat> {
    let send = data.map_err(|_| InvalidChat("expected { order_id, text, client_msg_id? }"))?;
    if !valid_id(&send.order_id) {
        return Err(InvalidChat("order_id must be 1 to 128 bytes"));
    }
    if send.text.trim().is_empty() {
        return Err(InvalidChat("text is empty"));
    }
    if send.text.chars().count() > max_chars {
        return Err(InvalidChat("text is too long"));
    }
    if send.client_msg_id.as_deref().is_some_and(|c| !valid_id(c)) {
        return Err(InvalidChat("client_msg_id must be 1 to 128 bytes"));
    }
    Ok(send)
}

/// Checks a `chat:history`; the limit comes back filled in.
pub fn check_history(
    data: Result<ChatHistoryQuery, impl std::fmt::Display>,
) -> Result<ChatHistoryQuery, InvalidChat> {
    let mut query = data.map_err(|_| InvalidChat("expected { order_id, before?, limit? }"))?;
    if !valid_id(&query.order_id) {
        return Err(InvalidChat("order_id must be 1 to 128 bytes"));
    }
    if query.before.as_deref().is_some_and(|b| !is_entry_id(b)) {
        return Err(InvalidChat("before must be an event_id"));
    }
    let limit = query.limit.unwrap_or(HISTORY_PAGE);
    if !(1..=HISTORY_PAGE_MAX).contains(&limit) {
        return Err(InvalidChat("limit must be 1 to 200"));
    }
    query.limit = Some(limit);
    Ok(query)
}

/// Checks a `chat:typing`.
pub fn check_typing(
    data: Result<ChatTyping, impl std::fmt::Display>,
) -> Result<ChatTyping, InvalidChat> {
    let typing = data.map_err(|_| InvalidChat("expected { order_id }"))?;
    if !valid_id(&typing.order_id) {
        return Err(InvalidChat("order_id must be 1 to 128 bytes"));
    }
    Ok(typing)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send(text: &str) -> Result<ChatSend, &'static str> {
        Ok(ChatSend {
            order_id: "o1".into(),
            text: text.into(),
            client_msg_id: None,
        })
    }

    #[test]
    fn text_is_one_to_max_chars_and_not_only_whitespace() {
        assert!(check_send(send("hi"), 2).is_ok());
        // Characters, not bytes.
        assert!(check_send(send("h\u{e9}\u{e9}"), 3).is_ok());
        assert!(check_send(send("abc"), 2).is_err());
        assert!(check_send(send(""), 10).is_err());
        assert!(check_send(send(" \n\t"), 10).is_err());
        assert!(check_send(Err::<ChatSend, _>("not an object"), 10).is_err());
    }

    #[test]
    fn history_limits_default_and_bound() {
        let q = |before: Option<&str>, limit| {
            check_history(Ok::<_, &str>(ChatHistoryQuery {
                order_id: "o1".into(),
                before: before.map(str::to_owned),
                limit,
            }))
        };
        assert_eq!(q(None, None).unwrap().limit, Some(HISTORY_PAGE));
        assert!(q(None, Some(0)).is_err());
        assert!(q(None, Some(201)).is_err());
        assert!(q(Some("12-0"), Some(200)).is_ok());
        assert!(q(Some("twelve"), None).is_err());
    }

    #[test]
    fn entries_carry_the_sender_and_the_backend_is_system() {
        let client = ChatMessage::from_client(
            &ChatSend {
                order_id: "o1".into(),
                text: "hi".into(),
                client_msg_id: Some("c1".into()),
            },
            "u1",
            "customer",
        );
        let Value::Object(data) = client.to_data() else {
            panic!("data is an object")
        };
        assert_eq!(decode_entry(data).unwrap(), client);
        let Value::Object(backend) = json!({"order_id": "o1", "text": "hello"}) else {
            unreachable!()
        };
        let backend = decode_entry(backend).unwrap();
        assert_eq!(backend.from.role(), "system");
        let payload = backend.payload("1700000000123-4");
        assert_eq!(payload["ts"], 1_700_000_000_123u64);
        let Value::Object(merchant) =
            json!({"order_id": "o1", "text": "x", "from_id": "m", "from_role": "merchant"})
        else {
            unreachable!()
        };
        assert!(decode_entry(merchant).is_err());
    }
}
