//! `LocationCache`: batches written and read back exactly as sent, the
//! nearby search, freshness, pruning, and drivers beyond Redis's geo map.

use std::time::Duration;

use relay::{
    engine::{DriverLocation, Engine, LocationCache},
    events::now_ms,
};

use super::{Settings, conformance, eventually};

conformance! {
    a_batch_reads_back_exactly_as_sent,
    a_later_write_replaces_the_whole_location,
    nearby_finds_fresh_drivers_within_the_radius_nearest_first,
    fresh_drivers_are_the_most_recently_seen_first,
    stale_drivers_are_found_nowhere(Settings {
        location_ttl: Duration::from_millis(400),
        ..Settings::default()
    }),
    prune_removes_drivers_last_seen_before_the_cutoff,
    a_polar_driver_does_not_drop_the_batch,
}

/// Bengaluru, MG Road.
const LAT: f64 = 12.9756;
const LNG: f64 = 77.6050;
/// About 100 m of latitude.
const M100: f64 = 0.0009;

fn at(lat: f64, lng: f64, ts: u64) -> DriverLocation {
    DriverLocation {
        lat,
        lng,
        heading: None,
        speed: None,
        ts,
    }
}

fn batch(drivers: &[(&str, DriverLocation)]) -> Vec<(String, DriverLocation)> {
    drivers
        .iter()
        .map(|(id, l)| ((*id).to_owned(), *l))
        .collect()
}

async fn write<E: Engine>(engine: &E, drivers: &[(&str, DriverLocation)]) {
    engine
        .locations()
        .write(&batch(drivers))
        .await
        .expect("write");
}

async fn nearby<E: Engine>(
    engine: &E,
    lat: f64,
    lng: f64,
    radius_m: f64,
    max: usize,
) -> Vec<String> {
    engine
        .locations()
        .nearby(lat, lng, radius_m, max)
        .await
        .expect("nearby")
}

async fn latest<E: Engine>(engine: &E, driver: &str) -> Option<DriverLocation> {
    engine.locations().latest(driver).await.expect("latest")
}

async fn a_batch_reads_back_exactly_as_sent<E: Engine>(engine: &E) {
    let now = now_ms();
    // Coordinates a float printer could round: they must come back bit for bit.
    let awkward = DriverLocation {
        lat: 12.971_598_765_432_101,
        lng: 77.594_563_000_000_01,
        heading: Some(359.999_999_999_999_9),
        speed: Some(0.1 + 0.2),
        ts: now,
    };
    let plain = DriverLocation {
        lat: -33.868_82,
        lng: 151.209_29,
        heading: Some(0.0),
        speed: None,
        ts: now - 5,
    };
    let bare = at(0.0, -0.000_001, now - 10);
    write(engine, &[("d1", awkward), ("d2", plain), ("d3", bare)]).await;
    assert_eq!(latest(engine, "d1").await, Some(awkward));
    assert_eq!(latest(engine, "d2").await, Some(plain));
    assert_eq!(latest(engine, "d3").await, Some(bare));
    assert_eq!(latest(engine, "d4").await, None);
    // An empty batch, then one more.
    let locations = engine.locations();
    locations.write(&[]).await.expect("empty write");
    locations
        .write(&batch(&[("d4", bare)]))
        .await
        .expect("write");
    assert_eq!(latest(engine, "d4").await, Some(bare));
    assert_eq!(
        latest(engine, "d1").await,
        Some(awkward),
        "others untouched"
    );
}

async fn a_later_write_replaces_the_whole_location<E: Engine>(engine: &E) {
    let now = now_ms();
    let first = DriverLocation {
        heading: Some(90.0),
        speed: Some(8.5),
        ..at(LAT, LNG, now - 100)
    };
    write(engine, &[("d1", first)]).await;
    // Heading and speed absent now: absent on read, not the old values.
    let second = at(LAT + M100, LNG, now);
    write(engine, &[("d1", second)]).await;
    assert_eq!(latest(engine, "d1").await, Some(second));
    // The geo position moved too.
    assert_eq!(nearby(engine, LAT + M100, LNG, 10.0, 10).await, ["d1"]);
    assert!(nearby(engine, LAT - M100, LNG, 50.0, 10).await.is_empty());
}

async fn nearby_finds_fresh_drivers_within_the_radius_nearest_first<E: Engine>(engine: &E) {
    let now = now_ms();
    write(
        engine,
        &[
            ("far", at(LAT + 50.0 * M100, LNG, now)), // ~5 km
            ("near", at(LAT + M100, LNG, now)),       // ~100 m
            ("mid", at(LAT, LNG + 5.0 * M100, now)),  // ~490 m
            ("other", at(-LAT, -LNG, now)),           // another continent
        ],
    )
    .await;
    assert_eq!(nearby(engine, LAT, LNG, 1_000.0, 10).await, ["near", "mid"]);
    assert_eq!(
        nearby(engine, LAT, LNG, 1_000.0, 1).await,
        ["near"],
        "at most max"
    );
    assert_eq!(
        nearby(engine, LAT, LNG, 10_000.0, 10).await,
        ["near", "mid", "far"]
    );
    assert!(nearby(engine, LAT, LNG, 50.0, 10).await.is_empty());
    assert!(nearby(engine, 0.0, 0.0, 100_000.0, 10).await.is_empty());
}

async fn fresh_drivers_are_the_most_recently_seen_first<E: Engine>(engine: &E) {
    let now = now_ms();
    let d1 = at(12.91, LNG, now - 3_000);
    let d2 = at(12.92, LNG, now - 1_000);
    let d3 = at(12.93, LNG, now - 2_000);
    write(engine, &[("d1", d1), ("d2", d2), ("d3", d3)]).await;
    let fresh = engine.locations().fresh_drivers(10).await.expect("fresh");
    assert_eq!(
        fresh,
        [
            ("d2".to_owned(), d2),
            ("d3".to_owned(), d3),
            ("d1".to_owned(), d1)
        ]
    );
    let two = engine.locations().fresh_drivers(2).await.expect("fresh");
    assert_eq!(two, fresh[..2]);
    assert!(
        engine
            .locations()
            .fresh_drivers(0)
            .await
            .expect("fresh")
            .is_empty()
    );
}

async fn stale_drivers_are_found_nowhere<E: Engine>(engine: &E) {
    // Location TTL 400 ms.
    let location = at(LAT, LNG, now_ms());
    write(engine, &[("d1", location)]).await;
    assert_eq!(latest(engine, "d1").await, Some(location));
    assert_eq!(nearby(engine, LAT, LNG, 100.0, 10).await, ["d1"]);
    eventually("d1 to go stale", || async {
        let gone = latest(engine, "d1").await.is_none()
            && nearby(engine, LAT, LNG, 100.0, 10).await.is_empty()
            && engine
                .locations()
                .fresh_drivers(10)
                .await
                .expect("fresh")
                .is_empty();
        gone.then_some(())
    })
    .await;
    // A new update makes the driver fresh again.
    let again = at(LAT, LNG, now_ms());
    write(engine, &[("d1", again)]).await;
    assert_eq!(latest(engine, "d1").await, Some(again));
    assert_eq!(nearby(engine, LAT, LNG, 100.0, 10).await, ["d1"]);
}

async fn prune_removes_drivers_last_seen_before_the_cutoff<E: Engine>(engine: &E) {
    let now = now_ms();
    let old = at(LAT, LNG, now - 2_000);
    write(engine, &[("old", old), ("new", at(LAT + M100, LNG, now))]).await;
    let locations = engine.locations();
    assert_eq!(
        locations.prune(old.ts).await.expect("prune"),
        0,
        "last seen at the cutoff is not before it"
    );
    assert_eq!(nearby(engine, LAT, LNG, 1_000.0, 10).await, ["old", "new"]);
    assert_eq!(locations.prune(now - 1_000).await.expect("prune"), 1);
    assert_eq!(nearby(engine, LAT, LNG, 1_000.0, 10).await, ["new"]);
    assert_eq!(locations.prune(now - 1_000).await.expect("prune again"), 0);
    // An update brings a pruned driver back.
    write(engine, &[("old", at(LAT, LNG, now_ms()))]).await;
    assert_eq!(nearby(engine, LAT, LNG, 1_000.0, 10).await, ["old", "new"]);
}

/// Redis's geo commands refuse |lat| > 85.05112878 (and one refused member
/// fails the whole GEOADD); the contract allows the poles. The polar driver
/// keeps its location, and the batch's other drivers are found as usual.
async fn a_polar_driver_does_not_drop_the_batch<E: Engine>(engine: &E) {
    let now = now_ms();
    let north = at(89.9, 12.5, now);
    let south = at(-90.0, 0.0, now - 1);
    let edge = at(-85.051_128_78, 1.0, now - 2);
    let city = at(LAT, LNG, now - 3);
    write(
        engine,
        &[
            ("north", north),
            ("city", city),
            ("south", south),
            ("edge", edge),
        ],
    )
    .await;
    assert_eq!(latest(engine, "north").await, Some(north));
    assert_eq!(latest(engine, "south").await, Some(south));
    assert_eq!(latest(engine, "edge").await, Some(edge));
    assert_eq!(latest(engine, "city").await, Some(city));
    assert_eq!(nearby(engine, LAT, LNG, 1_000.0, 10).await, ["city"]);
    assert_eq!(
        nearby(engine, -85.051_128_78, 1.0, 1_000.0, 10).await,
        ["edge"]
    );
    let fresh: Vec<String> = engine
        .locations()
        .fresh_drivers(10)
        .await
        .expect("fresh")
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(fresh, ["north", "south", "edge", "city"]);
    // A later batch of ordinary drivers is not held up by the polar one.
    let moved = at(LAT + M100, LNG, now_ms());
    write(engine, &[("north", north), ("city", moved)]).await;
    assert_eq!(latest(engine, "city").await, Some(moved));
    assert_eq!(nearby(engine, LAT + M100, LNG, 10.0, 10).await, ["city"]);
    // Pruning copes with drivers that never made the geo index.
    assert_eq!(
        engine.locations().prune(now_ms() + 1).await.expect("prune"),
        4
    );
}
