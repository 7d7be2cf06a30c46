//! Presence on the wire (CONTRACT §7): who is online, as the
//! `{prefix}presence` stream and `GET /api/presence` spell it.

use std::fmt;

/// Whose presence an entry is about: `kind` of a `{prefix}presence` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PresenceKind {
    /// Online while a merchant socket with the store in `store_ids` is connected.
    Store,
    /// Online while one of the driver's sockets is connected.
    Driver,
}

impl PresenceKind {
    pub const ALL: [Self; 2] = [Self::Store, Self::Driver];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Store => "store",
            Self::Driver => "driver",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// One store or one driver. Written `kind:id` where a single string is
/// needed (the id itself may hold `:`; the kind never does).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PresenceId {
    pub kind: PresenceKind,
    pub id: String,
}

impl PresenceId {
    pub fn new(kind: PresenceKind, id: impl Into<String>) -> Self {
        Self {
            kind,
            id: id.into(),
        }
    }

    /// Reads back what [`fmt::Display`] wrote.
    pub fn parse(member: &str) -> Option<Self> {
        let (kind, id) = member.split_once(':')?;
        Some(Self::new(PresenceKind::parse(kind)?, id))
    }
}

impl fmt::Display for PresenceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind.as_str(), self.id)
    }
}

/// A transition, once per change: an entry of `{prefix}presence`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceChange {
    pub who: PresenceId,
    pub online: bool,
    /// Unix ms of the change (the store's clock).
    pub ts: u64,
}

/// What `GET /api/presence` answers for one id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct PresenceState {
    pub online: bool,
    /// Unix ms of the last change; 0 when the relay has no record of the id.
    pub since: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_reads_back_also_with_a_colon_in_it() {
        let who = PresenceId::new(PresenceKind::Store, "city:s1");
        assert_eq!(who.to_string(), "store:city:s1");
        assert_eq!(PresenceId::parse("store:city:s1"), Some(who));
        assert_eq!(PresenceId::parse("shop:s1"), None);
        assert_eq!(PresenceId::parse("store"), None);
    }
}
