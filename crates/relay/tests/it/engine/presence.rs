//! `PresenceStore`: the transition rules both engines share. Online at
//! once, offline when the grace ends with no socket of any instance, one
//! change per transition, and an instance's counts gone when it is
//! forgotten.

use std::time::Duration;

use relay::{
    engine::{Engine, PresenceStore},
    events::{PresenceId, PresenceKind, PresenceState},
};

use super::{conformance, eventually};

conformance! {
    a_count_is_online_at_once_and_offline_once_the_grace_ends,
    a_socket_back_within_the_grace_makes_no_change,
    an_id_stays_online_while_another_instance_counts_it,
    forgetting_an_instance_takes_its_counts_away,
    an_id_never_seen_is_offline_since_zero,
}

const LONG: Duration = Duration::from_secs(60);

fn store(id: &str) -> PresenceId {
    PresenceId::new(PresenceKind::Store, id)
}

fn driver(id: &str) -> PresenceId {
    PresenceId::new(PresenceKind::Driver, id)
}

/// The transitions a write made, as (id, online).
async fn set<E: Engine>(
    engine: &E,
    instance: &str,
    counts: &[(PresenceId, u32)],
    grace: Duration,
) -> Vec<(PresenceId, bool)> {
    engine
        .presence()
        .set_counts(instance, counts, grace)
        .await
        .expect("set counts")
        .changes
        .into_iter()
        .map(|c| (c.who, c.online))
        .collect()
}

async fn state<E: Engine>(engine: &E, who: &PresenceId) -> PresenceState {
    engine
        .presence()
        .lookup(std::slice::from_ref(who))
        .await
        .expect("lookup")[0]
}

async fn a_count_is_online_at_once_and_offline_once_the_grace_ends<E: Engine>(engine: &E) {
    let grace = Duration::from_millis(300);
    let (s1, d1) = (store("s1"), driver("d1"));
    assert_eq!(
        set(engine, "i1", &[(s1.clone(), 2), (d1.clone(), 1)], grace).await,
        [(s1.clone(), true), (d1.clone(), true)]
    );
    let online = state(engine, &s1).await;
    assert!(online.online && online.since > 0, "{online:?}");
    let sweep = engine.presence().sweep(grace).await.expect("sweep");
    assert_eq!((sweep.online_stores, sweep.online_drivers), (1, 1));
    // Fewer sockets, or none: still online until the grace ends.
    assert_eq!(set(engine, "i1", &[(s1.clone(), 1)], grace).await, []);
    assert_eq!(set(engine, "i1", &[(s1.clone(), 0)], grace).await, []);
    assert!(state(engine, &s1).await.online);
    let off = eventually("the grace ends", || async {
        let sweep = engine.presence().sweep(grace).await.expect("sweep");
        (!sweep.changes.is_empty()).then_some(sweep)
    })
    .await;
    assert_eq!(off.changes.len(), 1, "{off:?}");
    assert_eq!((&off.changes[0].who, off.changes[0].online), (&s1, false));
    assert!(
        off.changes[0].ts >= online.since + 300,
        "{off:?} {online:?}"
    );
    assert_eq!((off.online_stores, off.online_drivers), (0, 1));
    assert_eq!(
        state(engine, &s1).await,
        PresenceState {
            online: false,
            since: off.changes[0].ts
        }
    );
    assert!(state(engine, &d1).await.online);
}

async fn a_socket_back_within_the_grace_makes_no_change<E: Engine>(engine: &E) {
    let s1 = store("s1");
    assert_eq!(set(engine, "i1", &[(s1.clone(), 1)], LONG).await.len(), 1);
    let since = state(engine, &s1).await.since;
    assert_eq!(set(engine, "i1", &[(s1.clone(), 0)], LONG).await, []);
    // Back on another node, as a reconnect is.
    assert_eq!(set(engine, "i2", &[(s1.clone(), 1)], LONG).await, []);
    let sweep = engine.presence().sweep(LONG).await.expect("sweep");
    assert!(sweep.changes.is_empty(), "{sweep:?}");
    assert_eq!(
        state(engine, &s1).await,
        PresenceState {
            online: true,
            since
        }
    );
}

async fn an_id_stays_online_while_another_instance_counts_it<E: Engine>(engine: &E) {
    let s1 = store("s1");
    let none = Duration::ZERO;
    assert_eq!(
        set(engine, "i1", &[(s1.clone(), 1)], none).await,
        [(s1.clone(), true)]
    );
    assert_eq!(set(engine, "i2", &[(s1.clone(), 1)], none).await, []);
    assert_eq!(set(engine, "i1", &[(s1.clone(), 0)], none).await, []);
    assert!(state(engine, &s1).await.online);
    assert_eq!(
        set(engine, "i2", &[(s1.clone(), 0)], none).await,
        [(s1.clone(), false)]
    );
}

async fn forgetting_an_instance_takes_its_counts_away<E: Engine>(engine: &E) {
    let (d1, d2) = (driver("d1"), driver("d2"));
    let none = Duration::ZERO;
    set(engine, "i1", &[(d1.clone(), 1), (d2.clone(), 1)], none).await;
    set(engine, "i2", &[(d2.clone(), 1)], none).await;
    let forgot = engine
        .presence()
        .forget_instance("i1", none)
        .await
        .expect("forget");
    let changes: Vec<(PresenceId, bool)> = forgot
        .changes
        .into_iter()
        .map(|c| (c.who, c.online))
        .collect();
    assert_eq!(changes, [(d1.clone(), false)]);
    assert!(!state(engine, &d1).await.online);
    assert!(state(engine, &d2).await.online);
}

async fn an_id_never_seen_is_offline_since_zero<E: Engine>(engine: &E) {
    let states = engine
        .presence()
        .lookup(&[store("nobody"), driver("nobody")])
        .await
        .expect("lookup");
    let never = PresenceState {
        online: false,
        since: 0,
    };
    assert_eq!(states, [never, never]);
}
