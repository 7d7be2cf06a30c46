//! The driver location cache in process: a map and a linear nearby scan,
//! plenty for one development node.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use crate::engine::StoreResult;
use crate::{
    engine::traits::{DriverLocation, LocationCache},
    events::{Timestamp, now_ms},
};

pub struct MemoryLocations {
    drivers: Mutex<HashMap<String, DriverLocation>>,
    ttl: Duration,
}

impl MemoryLocations {
    pub fn new(ttl: Duration) -> Self {
        Self {
            drivers: Mutex::default(),
            ttl,
        }
    }

    fn drivers(&self) -> std::sync::MutexGuard<'_, HashMap<String, DriverLocation>> {
        self.drivers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fresh(&self, location: &DriverLocation) -> bool {
        now_ms().saturating_sub(location.ts) < self.ttl.as_millis() as u64
    }
}

/// Great-circle distance in metres (the haversine formula Redis GEO uses).
pub fn distance_m(lat1: f64, lng1: f64, lat2: f64, lng2: f64) -> f64 {
    const EARTH_RADIUS_M: f64 = 6_372_797.560_856;
    let (phi1, phi2) = (lat1.to_radians(), lat2.to_radians());
    let dphi = (lat2 - lat1).to_radians();
    let dlambda = (lng2 - lng1).to_radians();
    let a = (dphi / 2.0).sin().powi(2) + phi1.cos() * phi2.cos() * (dlambda / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_M * a.sqrt().asin()
}

impl LocationCache for MemoryLocations {
    async fn write(&self, batch: &[(String, DriverLocation)]) -> StoreResult<()> {
        let mut drivers = self.drivers();
        for (driver, location) in batch {
            drivers.insert(driver.clone(), *location);
        }
        Ok(())
    }

    async fn prune(&self, cutoff: Timestamp) -> StoreResult<usize> {
        let mut drivers = self.drivers();
        let before = drivers.len();
        drivers.retain(|_, l| l.ts >= cutoff);
        Ok(before - drivers.len())
    }

    async fn latest(&self, driver_id: &str) -> StoreResult<Option<DriverLocation>> {
        Ok(self
            .drivers()
            .get(driver_id)
            .filter(|l| self.fresh(l))
            .copied())
    }

    async fn nearby(
        &self,
        lat: f64,
        lng: f64,
        radius_m: f64,
        max: usize,
    ) -> StoreResult<Vec<String>> {
        let mut found: Vec<(f64, String)> = self
            .drivers()
            .iter()
            .filter(|(_, l)| self.fresh(l))
            .map(|(id, l)| (distance_m(lat, lng, l.lat, l.lng), id.clone()))
            .filter(|(d, _)| *d <= radius_m)
            .collect();
        found.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
        Ok(found.into_iter().take(max).map(|(_, id)| id).collect())
    }

    async fn fresh_drivers(&self, max: usize) -> StoreResult<Vec<(String, DriverLocation)>> {
        let mut fresh: Vec<(String, DriverLocation)> = self
            .drivers()
            .iter()
            .filter(|(_, l)| self.fresh(l))
            .map(|(id, l)| (id.clone(), *l))
            .collect();
        fresh.sort_by(|a, b| b.1.ts.cmp(&a.1.ts).then_with(|| a.0.cmp(&b.0)));
        fresh.truncate(max);
        Ok(fresh)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(lat: f64, ts: Timestamp) -> DriverLocation {
        DriverLocation {
            lat,
            lng: 77.6,
            heading: None,
            speed: None,
            ts,
        }
    }

    #[tokio::test]
    async fn fresh_drivers_are_the_most_recently_seen_fresh_ones() {
        let cache = MemoryLocations::new(Duration::from_secs(60));
        let now = now_ms();
        let batch = [
            ("d1".to_owned(), at(12.91, now - 3_000)),
            ("d2".to_owned(), at(12.92, now - 1_000)),
            ("d3".to_owned(), at(12.93, now - 2_000)),
            // Older than the TTL: cached, but no longer fresh.
            ("d4".to_owned(), at(12.94, now - 61_000)),
        ];
        cache.write(&batch).await.unwrap();
        let ids =
            |v: Vec<(String, DriverLocation)>| v.into_iter().map(|(id, _)| id).collect::<Vec<_>>();
        assert_eq!(
            ids(cache.fresh_drivers(10).await.unwrap()),
            ["d2", "d3", "d1"]
        );
        let two = cache.fresh_drivers(2).await.unwrap();
        assert_eq!(ids(two.clone()), ["d2", "d3"]);
        assert_eq!(two[0].1, batch[1].1);
    }

    #[test]
    fn distance_matches_a_known_pair() {
        // Bengaluru MG Road to Indiranagar 100ft Road: about 3.5 km.
        let d = distance_m(12.9756, 77.6050, 12.9719, 77.6412);
        assert!((3_800.0..4_100.0).contains(&d), "{d}");
    }
}
