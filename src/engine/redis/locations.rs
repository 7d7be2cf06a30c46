//! The driver location cache on Redis (CONTRACT §4): `GEOADD
//! {prefix}drivers:geo` plus the hash `{prefix}driver:{id}` with a TTL.
//! A driver in the geo set without its hash has gone stale.

use redis::{Value, aio::ConnectionManager};

use super::values::bulk_string;
use crate::engine::traits::{DriverLocation, LocationCache, StoreResult};

pub struct RedisLocations {
    conn: ConnectionManager,
    prefix: String,
}

impl RedisLocations {
    pub fn new(conn: ConnectionManager, prefix: &str) -> Self {
        Self {
            conn,
            prefix: prefix.to_owned(),
        }
    }

    pub fn geo_key(&self) -> String {
        format!("{}drivers:geo", self.prefix)
    }

    pub fn driver_key(&self, driver_id: &str) -> String {
        format!("{}driver:{driver_id}", self.prefix)
    }
}

fn float(value: Value) -> Option<f64> {
    bulk_string(value)?.parse().ok()
}

impl LocationCache for RedisLocations {
    async fn latest(&self, driver_id: &str) -> StoreResult<Option<DriverLocation>> {
        let fields: Vec<Value> = redis::cmd("HMGET")
            .arg(self.driver_key(driver_id))
            .arg(&["lat", "lng", "heading", "speed", "ts"])
            .query_async(&mut self.conn.clone())
            .await?;
        let mut fields = fields.into_iter();
        let mut next = || fields.next().and_then(float);
        let (Some(lat), Some(lng)) = (next(), next()) else {
            return Ok(None);
        };
        let (heading, speed) = (next(), next());
        let ts = next().map(|ts| ts as u64).unwrap_or(0);
        Ok(Some(DriverLocation {
            lat,
            lng,
            heading,
            speed,
            ts,
        }))
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
