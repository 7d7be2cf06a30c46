//! The driver location cache on Redis (CONTRACT §4): `GEOADD
//! {prefix}drivers:geo` plus the hash `{prefix}driver:{id}` with a TTL.
//! A driver in the geo set without its hash has gone stale. The last-seen
//! index shares the geo set's slot on a cluster (the prune script touches
//! both); the hashes keep their contract names, each in its own slot.

use std::time::Duration;

use redis::{Pipeline, Script, Value};

use super::keys::KeySpace;
use super::link::Link;

use super::values::bulk_string;
use crate::engine::StoreResult;
use crate::{
    engine::traits::{DriverLocation, LocationCache},
    events::Timestamp,
};

/// Drivers whose last update is older than the cutoff (strictly: one seen
/// at the cutoff stays) leave the geo set and the last-seen index together;
/// at most 1000 per call.
const PRUNE: &str = r"
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[1], 'LIMIT', 0, 1000)
if #ids > 0 then
  redis.call('ZREM', KEYS[1], unpack(ids))
  redis.call('ZREM', KEYS[2], unpack(ids))
end
return #ids
";

/// One driver's hash on a cluster, in one step: the fields of the update,
/// the optional ones it lacks (an empty argument) deleted, the TTL renewed.
/// A script rather than MULTI/EXEC: a script of one key is routed like a
/// command, so it follows ASK while its slot migrates; a transaction there
/// fails (found by the reshard test).
const WRITE_HASH: &str = r"
local set = {'lat', ARGV[2], 'lng', ARGV[3], 'ts', ARGV[4]}
local gone = {}
for i, field in ipairs({'heading', 'speed'}) do
  local value = ARGV[4 + i]
  if value == '' then
    gone[#gone + 1] = field
  else
    set[#set + 1] = field
    set[#set + 1] = value
  end
end
redis.call('HSET', KEYS[1], unpack(set))
if #gone > 0 then
  redis.call('HDEL', KEYS[1], unpack(gone))
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
";

/// The latitudes Redis's geo commands accept (Web Mercator's limit).
const GEO_MAX_LAT: f64 = 85.051_128_78;

pub struct RedisLocations {
    conn: Link,
    geo: String,
    last_seen: String,
    prefix: String,
    ttl: Duration,
    prune: Script,
    write_hash: Script,
}

impl RedisLocations {
    pub fn new(conn: Link, space: &KeySpace, ttl: Duration) -> Self {
        Self {
            prune: conn.script(PRUNE),
            write_hash: conn.script(WRITE_HASH),
            conn,
            geo: space.key("drivers:geo"),
            last_seen: format!("{}drivers:seen", space.beside("drivers:geo")),
            prefix: space.prefix().to_owned(),
            ttl,
        }
    }

    /// When each driver was last seen (unix ms), for pruning the geo set.
    pub fn last_seen_key(&self) -> String {
        self.last_seen.clone()
    }

    pub fn geo_key(&self) -> String {
        self.geo.clone()
    }

    pub fn driver_key(&self, driver_id: &str) -> String {
        format!("{}driver:{driver_id}", self.prefix)
    }

    /// One GEOADD and one ZADD for a whole batch, not one per driver.
    fn index_commands(&self, pipe: &mut Pipeline, batch: &[(String, DriverLocation)]) {
        let mut geoadd = redis::cmd("GEOADD");
        geoadd.arg(self.geo_key());
        let mut mappable = 0;
        let mut zadd = redis::cmd("ZADD");
        zadd.arg(self.last_seen_key());
        for (driver, l) in batch {
            // Redis refuses the whole GEOADD for one latitude beyond its
            // map (the contract allows the poles): such a driver keeps its
            // hash but is not in the geo index, and nobody else loses theirs.
            if l.lat.abs() <= GEO_MAX_LAT {
                geoadd.arg(l.lng).arg(l.lat).arg(driver);
                mappable += 1;
            }
            zadd.arg(l.ts).arg(driver);
        }
        if mappable > 0 {
            pipe.add_command(geoadd).ignore();
        }
        pipe.add_command(zadd).ignore();
    }

    /// A driver's hash with its TTL; the fields the update lacks go.
    fn hash_commands(&self, pipe: &mut Pipeline, driver: &str, l: &DriverLocation) {
        let key = self.driver_key(driver);
        let mut hset = redis::cmd("HSET");
        hset.arg(&key)
            .arg("lat")
            .arg(l.lat)
            .arg("lng")
            .arg(l.lng)
            .arg("ts")
            .arg(l.ts);
        let mut absent = Vec::new();
        match l.heading {
            Some(h) => {
                hset.arg("heading").arg(h);
            }
            None => absent.push("heading"),
        }
        match l.speed {
            Some(v) => {
                hset.arg("speed").arg(v);
            }
            None => absent.push("speed"),
        }
        pipe.add_command(hset).ignore();
        if !absent.is_empty() {
            pipe.cmd("HDEL").arg(&key).arg(absent).ignore();
        }
        pipe.cmd("PEXPIRE")
            .arg(&key)
            .arg(self.ttl.as_millis() as u64)
            .ignore();
    }
}

fn float(value: Value) -> Option<f64> {
    bulk_string(value)?.parse().ok()
}

/// The fields of a driver's hash, in the order [`location`] reads them.
const LOCATION_FIELDS: [&str; 5] = ["lat", "lng", "heading", "speed", "ts"];

/// An `HMGET` of [`LOCATION_FIELDS`]; None when the hash is gone.
fn location(fields: Vec<Value>) -> Option<DriverLocation> {
    let mut fields = fields.into_iter();
    let mut next = || fields.next().and_then(float);
    let (Some(lat), Some(lng)) = (next(), next()) else {
        return None;
    };
    let (heading, speed) = (next(), next());
    let ts = next().map(|ts| ts as u64).unwrap_or(0);
    Some(DriverLocation {
        lat,
        lng,
        heading,
        speed,
        ts,
    })
}

impl LocationCache for RedisLocations {
    /// One GEOADD and one ZADD for the batch, and per driver its hash
    /// (HSET, HDEL of the fields it lacks, PEXPIRE) in one step, so a
    /// reader never sees the fields of one update beside those of another or
    /// a hash without its expiry. On one server the whole batch is one
    /// MULTI/EXEC (a plain pipeline is not atomic: Redis may serve another
    /// client between two reads of a long one). On a cluster each driver's
    /// hash is in its own slot: one [`WRITE_HASH`] call (EVALSHA) per
    /// driver, in one plain pipeline with the GEOADD and the ZADD, which
    /// the link sends as one pipeline per primary (a node that lacks the
    /// script gets it loaded, and the call runs).
    async fn write(&self, batch: &[(String, DriverLocation)]) -> StoreResult<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        self.index_commands(&mut pipe, batch);
        if self.conn.is_cluster() {
            let ttl = self.ttl.as_millis() as u64;
            for (driver, l) in batch {
                let mut write = redis::cmd("EVALSHA");
                write
                    .arg(self.write_hash.get_hash())
                    .arg(1)
                    .arg(self.driver_key(driver))
                    .arg(ttl)
                    .arg(l.lat)
                    .arg(l.lng)
                    .arg(l.ts);
                // The same text as HSET would store (the redis crate's format).
                for value in [l.heading, l.speed] {
                    match value {
                        Some(v) => write.arg(v),
                        None => write.arg(""),
                    };
                }
                pipe.add_command(write).ignore();
            }
        } else {
            pipe.atomic();
            for (driver, l) in batch {
                self.hash_commands(&mut pipe, driver, l);
            }
        }
        let () = pipe.query_async(&mut self.conn.clone()).await?;
        Ok(())
    }

    async fn prune(&self, cutoff: Timestamp) -> StoreResult<usize> {
        let pruned: i64 = self
            .prune
            .key(self.geo_key())
            .key(self.last_seen_key())
            .arg(cutoff)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(pruned.max(0) as usize)
    }

    async fn latest(&self, driver_id: &str) -> StoreResult<Option<DriverLocation>> {
        let fields: Vec<Value> = redis::cmd("HMGET")
            .arg(self.driver_key(driver_id))
            .arg(&LOCATION_FIELDS)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(location(fields))
    }

    /// The last-seen index orders the drivers; a driver whose hash expired
    /// is stale even while the index still names it.
    async fn fresh_drivers(&self, max: usize) -> StoreResult<Vec<(String, DriverLocation)>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let ids: Vec<String> = redis::cmd("ZREVRANGE")
            .arg(self.last_seen_key())
            .arg(0)
            .arg(max - 1)
            .query_async(&mut self.conn.clone())
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.cmd("HMGET")
                .arg(self.driver_key(id))
                .arg(&LOCATION_FIELDS);
        }
        let replies: Vec<Vec<Value>> = pipe.query_async(&mut self.conn.clone()).await?;
        Ok(ids
            .into_iter()
            .zip(replies)
            .filter_map(|(id, fields)| Some((id, location(fields)?)))
            .collect())
    }

    async fn nearby(
        &self,
        lat: f64,
        lng: f64,
        radius_m: f64,
        max: usize,
    ) -> StoreResult<Vec<String>> {
        // Ask for more than needed: some members may have gone stale.
        let candidates: Vec<String> = redis::cmd("GEOSEARCH")
            .arg(self.geo_key())
            .arg("FROMLONLAT")
            .arg(lng)
            .arg(lat)
            .arg("BYRADIUS")
            .arg(radius_m)
            .arg("m")
            .arg("ASC")
            .arg("COUNT")
            .arg(max * 2 + 10)
            .query_async(&mut self.conn.clone())
            .await?;
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in &candidates {
            pipe.cmd("EXISTS").arg(self.driver_key(id));
        }
        let fresh: Vec<bool> = pipe.query_async(&mut self.conn.clone()).await?;
        Ok(candidates
            .into_iter()
            .zip(fresh)
            .filter(|(_, fresh)| *fresh)
            .map(|(id, _)| id)
            .take(max)
            .collect())
    }
}
