//! `OrderStore`: active orders, their status count, and the indexes by
//! customer, store and driver; an ended order is listed nowhere.

use relay::{
    active_order::ActiveOrder,
    auth::{Principal, Role},
    engine::{Engine, OrderStore},
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
    let active = engine.orders().create(&order).await.expect("create");
    assert_eq!(active, None, "{id} was not active before");
    order
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
        .set_status("o1", "accepted", 2_000)
        .await
        .expect("set_status")
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
        .set_status("o1", "preparing", 3_000)
        .await
        .expect("set_status")
        .expect("active");
    assert_eq!((preparing.status.as_str(), preparing.seq), ("preparing", 2));
    assert_eq!(preparing.created_at, 1_000);
    assert_eq!(orders.get("o1").await.expect("get"), Some(preparing));
    // Not active: nothing changes, nothing is created.
    assert_eq!(
        orders
            .set_status("o2", "accepted", 4_000)
            .await
            .expect("set_status"),
        None
    );
    assert_eq!(orders.get("o2").await.expect("get"), None);
}

async fn assigning_records_and_replaces_the_driver<E: Engine>(engine: &E) {
    let orders = engine.orders();
    create(engine, "o1", "c1", "s1", 1_000).await;
    orders
        .set_status("o1", "accepted", 1_500)
        .await
        .expect("status");
    let assigned = orders
        .assign("o1", "d1", 2_000)
        .await
        .expect("assign")
        .expect("active");
    assert_eq!(assigned.driver_id.as_deref(), Some("d1"));
    assert_eq!(
        (assigned.updated_at, assigned.seq),
        (2_000, 1),
        "assigning is no status update"
    );
    assert_eq!(orders.get("o1").await.expect("get"), Some(assigned));
    assert_eq!(listed(engine, &driver("d1")).await, ["o1"]);

    let reassigned = orders
        .assign("o1", "d2", 3_000)
        .await
        .expect("assign")
        .expect("active");
    assert_eq!(reassigned.driver_id.as_deref(), Some("d2"));
    assert!(
        listed(engine, &driver("d1")).await.is_empty(),
        "d1 no longer has it"
    );
    assert_eq!(listed(engine, &driver("d2")).await, ["o1"]);
    // The same driver again changes nothing.
    orders.assign("o1", "d2", 3_500).await.expect("assign");
    assert_eq!(listed(engine, &driver("d2")).await, ["o1"]);

    assert_eq!(
        orders.assign("o9", "d3", 4_000).await.expect("assign"),
        None
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
    orders.assign("o4", "d1", 5_000).await.expect("assign");
    orders.assign("o1", "d1", 6_000).await.expect("assign");

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
        .set_status("o1", "picked_up", 2_500)
        .await
        .expect("status");
    orders.assign("o1", "d1", 3_000).await.expect("assign");
    orders
        .set_status("o1", "delivered", 4_000)
        .await
        .expect("status");
    let before = orders.get("o1").await.expect("get");

    let ended = orders.end("o1").await.expect("end");
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
            .set_status("o1", "delivered", 5_000)
            .await
            .expect("status"),
        None
    );
    assert_eq!(
        orders.assign("o1", "d1", 5_000).await.expect("assign"),
        None
    );
    assert!(listed(engine, &driver("d1")).await.is_empty());
    assert_eq!(orders.end("o1").await.expect("end again"), None);
}

async fn newest_lists_the_latest_active_orders_oldest_first<E: Engine>(engine: &E) {
    let orders = engine.orders();
    for (n, id) in ["o1", "o2", "o3", "o4"].iter().enumerate() {
        create(engine, id, "c1", "s1", 1_000 + n as u64).await;
    }
    orders.end("o4").await.expect("end");
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
        .set_status("o1", "accepted", 2_000)
        .await
        .expect("status");
    let moved_on = orders
        .assign("o1", "d1", 3_000)
        .await
        .expect("assign")
        .expect("active");
    for (customer_id, store_id) in [("c1", "s1"), ("c2", "s2")] {
        let again = ActiveOrder::placed("o1", customer_id, store_id, 4_000);
        let active = orders.create(&again).await.expect("create again");
        assert_eq!(active.as_ref(), Some(&moved_on), "{customer_id}/{store_id}");
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
    orders.end("o1").await.expect("end");
    create(engine, "o1", "c2", "s2", 5_000).await;
    assert_eq!(listed(engine, &customer("c2")).await, ["o1"]);
    assert!(listed(engine, &customer("c1")).await.is_empty());
}
