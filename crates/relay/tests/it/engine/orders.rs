//! `OrderStore`: active orders, their status count, and the indexes by
//! customer, store and driver; an ended order is listed nowhere.

use relay::{
    active_order::ActiveOrder,
    auth::{Principal, Role},
    engine::{Assignment, Created, Engine, OrderStore, OrderWrite},
};

use super::conformance;

conformance! {
    a_created_order_reads_back_as_created,
    status_updates_count_and_stamp_the_order,
    assigning_records_and_replaces_the_driver,
    active_orders_are_listed_per_customer_store_and_driver_oldest_first,
    an_ended_order_is_listed_nowhere,
    newest_lists_the_latest_active_orders_oldest_first,
    creating_an_active_order_again_leaves_it_as_it_is,
    every_write_of_an_entry_handled_twice_changes_nothing_the_second_time,
    a_late_repeat_is_superseded_by_later_entries_of_its_order,
    an_order_created_again_after_its_end_is_not_recreated_but_a_new_one_is,
}

fn customer(id: &str) -> Principal {
    Principal::new(id, Role::Customer, Vec::new())
}

fn driver(id: &str) -> Principal {
    Principal::new(id, Role::Driver, Vec::new())
}

fn merchant(stores: &[&str]) -> Principal {
    let stores = stores.iter().map(|s| (*s).to_owned()).collect();
    Principal::new("m1", Role::Merchant, stores)
}

async fn listed<E: Engine>(engine: &E, principal: &Principal) -> Vec<String> {
    engine
        .orders()
        .active_for(principal)
        .await
        .expect("active_for")
        .into_iter()
        .map(|o| o.order_id)
        .collect()
}

async fn create<E: Engine>(
    engine: &E,
    id: &str,
    customer: &str,
    store: &str,
    at: u64,
) -> ActiveOrder {
    let order = ActiveOrder::placed(id, customer, store, at);
    let created = engine
        .orders()
        .create(&order, &entry(at))
        .await
        .expect("create");
    assert_eq!(created, Created::New, "{id} was not active before");
    order
}

/// The id of the stream entry a write at `at` comes from: later writes,
/// later entries, as the consumer's per-order sequencing has it.
fn entry(at: u64) -> String {
    format!("{at}-0")
}

async fn a_created_order_reads_back_as_created<E: Engine>(engine: &E) {
    let orders = engine.orders();
    assert_eq!(orders.get("o1").await.expect("get"), None);
    let order = create(engine, "o1", "c1", "s1", 1_700_000_000_123).await;
    assert_eq!(orders.get("o1").await.expect("get"), Some(order));
    assert_eq!(orders.get("o2").await.expect("get"), None);
}

async fn status_updates_count_and_stamp_the_order<E: Engine>(engine: &E) {
    let orders = engine.orders();
    let placed = create(engine, "o1", "c1", "s1", 1_000).await;
    let accepted = orders
        .set_status("o1", "accepted", 2_000, &entry(2_000))
        .await
        .expect("set_status")
        .current()
        .expect("active");
    assert_eq!(
        accepted,
        ActiveOrder {
            status: "accepted".to_owned(),
            updated_at: 2_000,
            seq: 1,
            ..placed.clone()
        }
    );
    let preparing = orders
        .set_status("o1", "preparing", 3_000, &entry(3_000))
        .await
        .expect("set_status")
        .current()
        .expect("active");
    assert_eq!((preparing.status.as_str(), preparing.seq), ("preparing", 2));
    assert_eq!(preparing.created_at, 1_000);
    assert_eq!(orders.get("o1").await.expect("get"), Some(preparing));
    // Not active: nothing changes, nothing is created.
    assert_eq!(
        orders
            .set_status("o2", "accepted", 4_000, &entry(4_000))
            .await
            .expect("set_status"),
        OrderWrite::NotActive
    );
    assert_eq!(orders.get("o2").await.expect("get"), None);
}

async fn assigning_records_and_replaces_the_driver<E: Engine>(engine: &E) {
    let orders = engine.orders();
    create(engine, "o1", "c1", "s1", 1_000).await;
    orders
        .set_status("o1", "accepted", 1_500, &entry(1_500))
        .await
        .expect("status");
    let assigned = orders
        .assign("o1", "d1", 2_000, &entry(2_000))
        .await
        .expect("assign")
        .current()
        .expect("active")
        .order;
    assert_eq!(assigned.driver_id.as_deref(), Some("d1"));
    assert_eq!(
        (assigned.updated_at, assigned.seq),
        (2_000, 1),
        "assigning is no status update"
    );
    assert_eq!(orders.get("o1").await.expect("get"), Some(assigned));
    assert_eq!(listed(engine, &driver("d1")).await, ["o1"]);

    let reassigned = orders
        .assign("o1", "d2", 3_000, &entry(3_000))
        .await
        .expect("assign")
        .current()
        .expect("active")
        .order;
    assert_eq!(reassigned.driver_id.as_deref(), Some("d2"));
    assert!(
        listed(engine, &driver("d1")).await.is_empty(),
        "d1 no longer has it"
    );
    assert_eq!(listed(engine, &driver("d2")).await, ["o1"]);
    // The same driver again changes nothing.
    orders
        .assign("o1", "d2", 3_500, &entry(3_500))
        .await
        .expect("assign");
    assert_eq!(listed(engine, &driver("d2")).await, ["o1"]);

    assert_eq!(
        orders
            .assign("o9", "d3", 4_000, &entry(4_000))
            .await
            .expect("assign"),
        OrderWrite::NotActive
    );
    assert!(listed(engine, &driver("d3")).await.is_empty());
    assert_eq!(orders.get("o9").await.expect("get"), None);
}

async fn active_orders_are_listed_per_customer_store_and_driver_oldest_first<E: Engine>(
    engine: &E,
) {
    let orders = engine.orders();
    // Created out of id order, and o3 (store s1) between s2's o2 and o4.
    create(engine, "o2", "c1", "s2", 2_000).await;
    create(engine, "o1", "c1", "s1", 1_000).await;
    create(engine, "o3", "c2", "s1", 3_000).await;
    create(engine, "o4", "c1", "s2", 4_000).await;
    orders
        .assign("o4", "d1", 5_000, &entry(5_000))
        .await
        .expect("assign");
    orders
        .assign("o1", "d1", 6_000, &entry(6_000))
        .await
        .expect("assign");

    assert_eq!(listed(engine, &customer("c1")).await, ["o1", "o2", "o4"]);
    assert_eq!(listed(engine, &customer("c2")).await, ["o3"]);
    assert!(listed(engine, &customer("c3")).await.is_empty());
    assert_eq!(listed(engine, &driver("d1")).await, ["o1", "o4"]);
    assert_eq!(listed(engine, &merchant(&["s1"])).await, ["o1", "o3"]);
    assert_eq!(
        listed(engine, &merchant(&["s1", "s2"])).await,
        ["o1", "o2", "o3", "o4"],
        "a merchant's stores together, oldest first"
    );
    assert!(listed(engine, &merchant(&[])).await.is_empty());
    for role in [Role::Admin, Role::Support] {
        assert!(
            listed(engine, &Principal::new("c1", role, Vec::new()))
                .await
                .is_empty(),
            "{role} has no orders of its own"
        );
    }
    // What is listed is the order as it is.
    let c1 = orders
        .active_for(&customer("c1"))
        .await
        .expect("active_for");
    assert_eq!(c1[0], orders.get("o1").await.expect("get").expect("o1"));
}

async fn an_ended_order_is_listed_nowhere<E: Engine>(engine: &E) {
    let orders = engine.orders();
    create(engine, "o1", "c1", "s1", 1_000).await;
    create(engine, "o2", "c1", "s1", 2_000).await;
    orders
        .set_status("o1", "picked_up", 2_500, &entry(2_500))
        .await
        .expect("status");
    orders
        .assign("o1", "d1", 3_000, &entry(3_000))
        .await
        .expect("assign");
    orders
        .set_status("o1", "delivered", 4_000, &entry(4_000))
        .await
        .expect("status");
    let before = orders.get("o1").await.expect("get");

    let ended = orders.end("o1", "4500-0").await.expect("end");
    assert_eq!(ended, before, "end returns the order as it was");
    assert_eq!(ended.as_ref().map(|o| o.seq), Some(2));
    assert_eq!(orders.get("o1").await.expect("get"), None);
    assert_eq!(listed(engine, &customer("c1")).await, ["o2"]);
    assert_eq!(listed(engine, &merchant(&["s1"])).await, ["o2"]);
    assert!(listed(engine, &driver("d1")).await.is_empty());
    let newest: Vec<_> = orders
        .newest(10)
        .await
        .expect("newest")
        .into_iter()
        .map(|o| o.order_id)
        .collect();
    assert_eq!(newest, ["o2"]);
    // An ended order cannot be updated back into the lists.
    assert_eq!(
        orders
            .set_status("o1", "delivered", 5_000, &entry(5_000))
            .await
            .expect("status"),
        OrderWrite::NotActive
    );
    assert_eq!(
        orders
            .assign("o1", "d1", 5_000, &entry(5_000))
            .await
            .expect("assign"),
        OrderWrite::NotActive
    );
    assert!(listed(engine, &driver("d1")).await.is_empty());
    assert_eq!(orders.end("o1", "4500-0").await.expect("end again"), None);
}

async fn newest_lists_the_latest_active_orders_oldest_first<E: Engine>(engine: &E) {
    let orders = engine.orders();
    for (n, id) in ["o1", "o2", "o3", "o4"].iter().enumerate() {
        create(engine, id, "c1", "s1", 1_000 + n as u64).await;
    }
    orders.end("o4", "4500-0").await.expect("end");
    let newest = |max| async move {
        orders
            .newest(max)
            .await
            .expect("newest")
            .into_iter()
            .map(|o| o.order_id)
            .collect::<Vec<_>>()
    };
    assert_eq!(newest(2).await, ["o2", "o3"]);
    assert_eq!(newest(10).await, ["o1", "o2", "o3"]);
    assert!(newest(0).await.is_empty());
}

/// issue #15 (5) and #17: `order.created` handled again for an active
/// order (redelivered after a node died, or naming other parties) changes
/// nothing: the order keeps its parties, status, count and driver, and the
/// active one is returned for the dispatcher to judge.
async fn creating_an_active_order_again_leaves_it_as_it_is<E: Engine>(engine: &E) {
    let orders = engine.orders();
    create(engine, "o1", "c1", "s1", 1_000).await;
    orders
        .set_status("o1", "accepted", 2_000, &entry(2_000))
        .await
        .expect("status");
    let moved_on = orders
        .assign("o1", "d1", 3_000, &entry(3_000))
        .await
        .expect("assign")
        .current()
        .expect("active")
        .order;
    for (customer_id, store_id) in [("c1", "s1"), ("c2", "s2")] {
        let again = ActiveOrder::placed("o1", customer_id, store_id, 4_000);
        let active = orders
            .create(&again, &entry(4_000))
            .await
            .expect("create again");
        assert_eq!(
            active,
            Created::Active(moved_on.clone()),
            "{customer_id}/{store_id}"
        );
        assert_eq!(orders.get("o1").await.expect("get"), Some(moved_on.clone()));
    }
    assert_eq!(moved_on.status, "accepted");
    assert_eq!(moved_on.seq, 1);
    assert_eq!(listed(engine, &customer("c1")).await, ["o1"]);
    assert_eq!(listed(engine, &merchant(&["s1"])).await, ["o1"]);
    assert_eq!(listed(engine, &driver("d1")).await, ["o1"]);
    assert!(listed(engine, &customer("c2")).await.is_empty());
    assert!(listed(engine, &merchant(&["s2"])).await.is_empty());
    // Once ended, the id may start a new order.
    orders.end("o1", "4500-0").await.expect("end");
    create(engine, "o1", "c2", "s2", 5_000).await;
    assert_eq!(listed(engine, &customer("c2")).await, ["o1"]);
    assert!(listed(engine, &customer("c1")).await.is_empty());
}

/// issue #17 (3): each write of a stream entry, handled a second time (a
/// node died after its effect and before its XACK, another took the entry
/// over), changes nothing and answers what the first time left.
async fn every_write_of_an_entry_handled_twice_changes_nothing_the_second_time<E: Engine>(
    engine: &E,
) {
    let orders = engine.orders();
    // order.created
    let placed = create(engine, "o1", "c1", "s1", 1_000).await;
    assert_eq!(
        orders.create(&placed, &entry(1_000)).await.expect("create"),
        Created::Active(placed.clone())
    );
    // order.status: the second time neither counts nor stamps it.
    let first = orders
        .set_status("o1", "accepted", 2_000, &entry(2_000))
        .await
        .expect("status");
    let second = orders
        .set_status("o1", "accepted", 2_900, &entry(2_000))
        .await
        .expect("status");
    assert_eq!(second, first);
    let accepted = first.current().expect("active");
    assert_eq!((accepted.seq, accepted.updated_at), (1, 2_000));
    // order.assigned: the second time still names the driver it replaced.
    orders
        .assign("o1", "d1", 3_000, &entry(3_000))
        .await
        .expect("assign");
    let first = orders
        .assign("o1", "d2", 4_000, &entry(4_000))
        .await
        .expect("assign");
    let second = orders
        .assign("o1", "d2", 4_900, &entry(4_000))
        .await
        .expect("assign");
    assert_eq!(second, first);
    let Some(Assignment { order, previous }) = first.current() else {
        panic!("o1 is active");
    };
    assert_eq!(
        (order.driver_id.as_deref(), previous.as_deref()),
        (Some("d2"), Some("d1"))
    );
    assert!(listed(engine, &driver("d1")).await.is_empty());
    assert_eq!(listed(engine, &driver("d2")).await, ["o1"]);
    // A terminal order.status: written, then the order ended by that entry.
    let delivered = orders
        .set_status("o1", "delivered", 5_000, &entry(5_000))
        .await
        .expect("status")
        .current()
        .expect("active");
    assert_eq!(delivered.seq, 2);
    assert_eq!(
        orders.end("o1", &entry(5_000)).await.expect("end"),
        Some(delivered)
    );
    // Handled again after the end, the terminal status writes nothing
    // (its emit went out before the end) and the order stays ended.
    assert_eq!(
        orders
            .set_status("o1", "delivered", 5_900, &entry(5_000))
            .await
            .expect("status"),
        OrderWrite::Superseded
    );
    assert_eq!(orders.end("o1", &entry(5_000)).await.expect("end"), None);
    assert_eq!(orders.get("o1").await.expect("get"), None);
    assert!(listed(engine, &customer("c1")).await.is_empty());
    assert!(listed(engine, &driver("d2")).await.is_empty());
}

/// issue #17 (3): an entry handled again after later entries of its order
/// were applied (it was emitted, then its node died before the XACK) is
/// superseded: the status does not go back, the driver is not put back.
async fn a_late_repeat_is_superseded_by_later_entries_of_its_order<E: Engine>(engine: &E) {
    let orders = engine.orders();
    create(engine, "o1", "c1", "s1", 1_000).await;
    for (status, at) in [("preparing", 2_000), ("ready", 3_000)] {
        orders
            .set_status("o1", status, at, &entry(at))
            .await
            .expect("status");
    }
    orders
        .assign("o1", "d1", 4_000, &entry(4_000))
        .await
        .expect("assign");
    orders
        .assign("o1", "d2", 5_000, &entry(5_000))
        .await
        .expect("assign");
    let before = orders.get("o1").await.expect("get");

    assert_eq!(
        orders
            .set_status("o1", "preparing", 6_000, &entry(2_000))
            .await
            .expect("status"),
        OrderWrite::Superseded
    );
    assert_eq!(
        orders
            .assign("o1", "d1", 6_000, &entry(4_000))
            .await
            .expect("assign"),
        OrderWrite::Superseded
    );
    let after = orders.get("o1").await.expect("get").expect("o1");
    assert_eq!(Some(&after), before.as_ref());
    assert_eq!(
        (after.status.as_str(), after.seq, after.driver_id.as_deref()),
        ("ready", 2, Some("d2"))
    );
    assert!(listed(engine, &driver("d1")).await.is_empty());
    // The next entry of the order is applied as usual.
    let picked_up = orders
        .set_status("o1", "picked_up", 7_000, &entry(7_000))
        .await
        .expect("status")
        .current()
        .expect("active");
    assert_eq!((picked_up.status.as_str(), picked_up.seq), ("picked_up", 3));
}

/// issue #17 (3), the gap of #7: an `order.created` handled again after its
/// order ended (a node died while the merchant's offer waited) does not
/// bring the order back, nor do repeats of its other entries. A later
/// `order.created` of the same id is a new order.
async fn an_order_created_again_after_its_end_is_not_recreated_but_a_new_one_is<E: Engine>(
    engine: &E,
) {
    let orders = engine.orders();
    let placed = create(engine, "o1", "c1", "s1", 1_000).await;
    orders
        .set_status("o1", "cancelled", 2_000, &entry(2_000))
        .await
        .expect("status");
    orders.end("o1", &entry(2_000)).await.expect("end");

    assert_eq!(
        orders.create(&placed, &entry(1_000)).await.expect("create"),
        Created::Ended
    );
    assert_eq!(orders.get("o1").await.expect("get"), None);
    assert!(listed(engine, &customer("c1")).await.is_empty());
    assert!(listed(engine, &merchant(&["s1"])).await.is_empty());
    assert!(orders.newest(10).await.expect("newest").is_empty());
    assert_eq!(
        orders
            .set_status("o1", "accepted", 3_000, &entry(1_500))
            .await
            .expect("status"),
        OrderWrite::Superseded
    );
    assert_eq!(
        orders
            .assign("o1", "d1", 3_000, &entry(1_600))
            .await
            .expect("assign"),
        OrderWrite::Superseded
    );
    assert!(listed(engine, &driver("d1")).await.is_empty());

    create(engine, "o1", "c2", "s2", 3_000).await;
    assert_eq!(listed(engine, &customer("c2")).await, ["o1"]);
}
