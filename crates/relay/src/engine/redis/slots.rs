//! Which primary serves which hash slot of a Redis Cluster: a snapshot of
//! `CLUSTER SLOTS`, and the slot of the key a command names. The per-node
//! pipelines ([`super::node_pipelines`]) group a batch by it; a snapshot
//! that is out of date only costs redirections, which they follow.

use redis::{Arg, Cmd, Value};

/// Hash slots of a Redis Cluster.
pub const SLOTS: usize = 16_384;

/// A primary, as `CLUSTER SLOTS` names it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct NodeAddr {
    pub host: String,
    pub port: u16,
}

/// Who serves each slot, at the time of one `CLUSTER SLOTS`.
pub struct SlotMap {
    /// Per slot, an index into `nodes`; [`NO_OWNER`] for a slot that no
    /// primary serves (or whose primary has no usable address).
    owner: Box<[u16]>,
    nodes: Vec<NodeAddr>,
}

const NO_OWNER: u16 = u16::MAX;

impl SlotMap {
    /// A `CLUSTER SLOTS` reply: per range `[start, end, [host, port, id,
    /// ...], replicas...]`. None when the reply has another shape. A
    /// primary whose host is unknown (`?`, or empty: "the node you asked")
    /// leaves its slots without owner; commands of those go through the
    /// cluster connection.
    pub fn from_cluster_slots(reply: &Value) -> Option<Self> {
        let Value::Array(ranges) = reply else {
            return None;
        };
        let mut owner = vec![NO_OWNER; SLOTS].into_boxed_slice();
        let mut nodes: Vec<NodeAddr> = Vec::new();
        for range in ranges {
            let Value::Array(parts) = range else {
                return None;
            };
            let (start, end) = (int(parts.first()?)?, int(parts.get(1)?)?);
            if start > end || end >= SLOTS as i64 || start < 0 {
                return None;
            }
            let Some(primary) = parts.get(2).and_then(node_addr) else {
                continue;
            };
            let index = match nodes.iter().position(|n| *n == primary) {
                Some(i) => i,
                None => {
                    nodes.push(primary);
                    nodes.len() - 1
                }
            };
            let index = u16::try_from(index).ok()?;
            owner[start as usize..=end as usize].fill(index);
        }
        Some(Self { owner, nodes })
    }

    /// The primary serving `slot`, as an index into [`Self::nodes`].
    pub fn owner(&self, slot: u16) -> Option<usize> {
        match self.owner.get(usize::from(slot)) {
            Some(&NO_OWNER) | None => None,
            Some(&index) => Some(usize::from(index)),
        }
    }

    pub fn nodes(&self) -> &[NodeAddr] {
        &self.nodes
    }
}

fn int(value: &Value) -> Option<i64> {
    match value {
        Value::Int(n) => Some(*n),
        _ => None,
    }
}

fn text(value: &Value) -> Option<&str> {
    match value {
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok(),
        Value::SimpleString(s) => Some(s),
        Value::VerbatimString { text, .. } => Some(text),
        _ => None,
    }
}

fn node_addr(value: &Value) -> Option<NodeAddr> {
    let Value::Array(fields) = value else {
        return None;
    };
    let host = text(fields.first()?)?;
    let port = u16::try_from(int(fields.get(1)?)?).ok()?;
    if host.is_empty() || host == "?" || port == 0 {
        return None;
    }
    Some(NodeAddr {
        host: host.to_owned(),
        port,
    })
}

/// The hash slot of a key: CRC16 (XMODEM) of the key, or of its hash tag
/// (what lies between the first `{` and the next `}`, when not empty).
pub fn slot(key: &[u8]) -> u16 {
    let hashed = match key.iter().position(|b| *b == b'{') {
        Some(open) => match key[open + 1..].iter().position(|b| *b == b'}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    crc16::State::<crc16::XMODEM>::calculate(hashed) % 16384
}

/// The key a pipelined command of the relay acts on: its first argument,
/// or for a script call (`EVALSHA sha numkeys key ...`) its first key.
/// None for a command without one (a script of no keys).
pub fn command_key(cmd: &Cmd) -> Option<&[u8]> {
    let mut args = args(cmd);
    let name = args.next()?;
    let script = [
        &b"EVALSHA"[..],
        b"EVAL",
        b"EVALSHA_RO",
        b"EVAL_RO",
        b"FCALL",
        b"FCALL_RO",
    ]
    .iter()
    .any(|s| name.eq_ignore_ascii_case(s));
    if !script {
        return args.next();
    }
    let _body = args.next()?;
    let numkeys = std::str::from_utf8(args.next()?)
        .ok()?
        .parse::<u32>()
        .ok()?;
    if numkeys == 0 {
        return None;
    }
    args.next()
}

/// A command's name and arguments, as bytes.
pub fn args(cmd: &Cmd) -> impl Iterator<Item = &[u8]> {
    cmd.args_iter().filter_map(|arg| match arg {
        Arg::Simple(bytes) => Some(bytes),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use redis::{Value, cluster_routing::Slot};

    use super::*;

    #[test]
    fn slots_agree_with_the_redis_crate_hash_tags_included() {
        for key in [
            "relay:driver:d1",
            "relay:{relay:events}:seq:o1",
            "relay:events",
            "{}x",
            "a{}b{c}",
            "{user1000}.following",
            "",
        ] {
            assert_eq!(
                Slot::new(slot(key.as_bytes())),
                Some(Slot::for_key(key)),
                "{key}"
            );
        }
    }

    #[test]
    fn a_command_names_its_key_first_and_a_script_its_first_key() {
        let mut hset = redis::cmd("HSET");
        hset.arg("relay:driver:d1").arg("lat").arg(1.5);
        assert_eq!(command_key(&hset), Some(&b"relay:driver:d1"[..]));
        let mut evalsha = redis::cmd("evalsha");
        evalsha
            .arg("abc123")
            .arg(1)
            .arg("relay:driver:d2")
            .arg(5000);
        assert_eq!(command_key(&evalsha), Some(&b"relay:driver:d2"[..]));
        let mut keyless = redis::cmd("EVALSHA");
        keyless.arg("abc123").arg(0).arg("x");
        assert_eq!(command_key(&keyless), None);
        assert_eq!(command_key(&redis::cmd("PING")), None);
    }

    fn node(host: &str, port: i64) -> Value {
        Value::Array(vec![
            Value::BulkString(host.as_bytes().to_vec()),
            Value::Int(port),
            Value::BulkString(b"0123abcd".to_vec()),
        ])
    }

    fn range(start: i64, end: i64, nodes: Vec<Value>) -> Value {
        let mut parts = vec![Value::Int(start), Value::Int(end)];
        parts.extend(nodes);
        Value::Array(parts)
    }

    #[test]
    fn the_slot_map_names_each_ranges_primary_and_skips_unknown_hosts() {
        let reply = Value::Array(vec![
            range(
                0,
                5460,
                vec![node("10.0.0.1", 7000), node("10.0.0.4", 7003)],
            ),
            range(5461, 10922, vec![node("10.0.0.2", 7001)]),
            range(10923, 12000, vec![node("?", 7002)]),
            range(12001, 16383, vec![node("10.0.0.1", 7000)]),
        ]);
        let map = SlotMap::from_cluster_slots(&reply).expect("parses");
        let at = |slot| map.owner(slot).map(|i| map.nodes()[i].clone());
        let addr = |host: &str, port| NodeAddr {
            host: host.to_owned(),
            port,
        };
        assert_eq!(at(0), Some(addr("10.0.0.1", 7000)));
        assert_eq!(at(5460), Some(addr("10.0.0.1", 7000)));
        assert_eq!(at(5461), Some(addr("10.0.0.2", 7001)));
        assert_eq!(at(11000), None);
        assert_eq!(at(16383), Some(addr("10.0.0.1", 7000)));
        assert_eq!(map.nodes().len(), 2);
        assert!(SlotMap::from_cluster_slots(&Value::Okay).is_none());
        assert!(
            SlotMap::from_cluster_slots(&Value::Array(vec![range(5, 16384, vec![])])).is_none()
        );
    }
}
