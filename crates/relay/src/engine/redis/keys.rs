//! Where the relay's keys live on a Redis Cluster.
//!
//! A Lua script, a transaction or a pipeline checked by the cluster
//! connection must touch keys of one slot. The keys backends use keep
//! exactly their contract names (`{prefix}events`, `{prefix}outcomes`,
//! `{prefix}drivers:geo`, ...); each group of the relay's own keys that one
//! script touches together carries the hash tag of a group name, so the group
//! shares one slot: `relay:{relay:events}:seq:o1` lands in the slot of
//! `relay:events`, because Redis hashes only the first `{...}` of a key,
//! and the whole name of a key without one. On one server nothing is tagged:
//! the names stay what they were before clusters were supported, so an
//! upgrade keeps its state. docs/design.md has the table of every key.

#[derive(Debug, Clone)]
pub struct KeySpace {
    prefix: String,
    cluster: bool,
}

impl KeySpace {
    /// `prefix` holds no brace on a cluster (the configuration refuses one):
    /// it would change which part of a key Redis hashes.
    pub fn new(prefix: &str, cluster: bool) -> Self {
        Self {
            prefix: prefix.to_owned(),
            cluster,
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `{prefix}{name}`, untagged: a contract name, or an anchor others join.
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// The start of every key that shares the slot of [`Self::key`]`(anchor)`:
    /// `relay:{relay:events}:` on a cluster, `relay:` on one server. Scripts
    /// that build keys from it stay within that slot.
    pub fn beside(&self, anchor: &str) -> String {
        if self.cluster {
            format!("{0}{{{0}{anchor}}}:", self.prefix)
        } else {
            self.prefix.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use redis::cluster_routing::{Route, SlotAddr};

    use super::*;

    fn slot(key: &str) -> Route {
        Route::with_key(key, SlotAddr::Master)
    }

    #[test]
    fn tagged_keys_share_the_slot_of_their_anchor() {
        let keys = KeySpace::new("relay:", true);
        let seq = format!("{}seq:o1", keys.beside("events"));
        assert_eq!(seq, "relay:{relay:events}:seq:o1");
        assert_eq!(slot(&seq), slot(&keys.key("events")));
        let seen = format!("{}drivers:seen", keys.beside("drivers:geo"));
        assert_eq!(slot(&seen), slot(&keys.key("drivers:geo")));
        assert!(seen.starts_with("relay:"));
    }

    #[test]
    fn one_server_keeps_the_untagged_names() {
        let keys = KeySpace::new("relay:", false);
        assert_eq!(format!("{}seq:o1", keys.beside("events")), "relay:seq:o1");
    }
}
