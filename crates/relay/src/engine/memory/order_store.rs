//! Active orders in process.

use std::{
    cmp::Ordering,
    collections::{HashMap, VecDeque},
    sync::Mutex,
};

use crate::engine::StoreResult;
use crate::{
    active_order::ActiveOrder,
    auth::{Principal, Role},
    engine::traits::{Assignment, Created, OrderStore, OrderWrite, cmp_offsets},
    events::{Timestamp, now_ms},
};

/// How long an ended order's last entry is remembered: as long as the
/// Redis engine keeps an order that never ends.
const ENDED_TTL_MS: u64 = 48 * 3600 * 1000;

/// An active order and what the store needs to take a repeat for one.
struct Stored {
    order: ActiveOrder,
    /// The last entry applied to it.
    last_entry: String,
    /// The driver before the last assignment.
    previous_driver: Option<String>,
}

#[derive(Default)]
struct Orders {
    active: HashMap<String, Stored>,
    /// Per ended order, the entry that ended it.
    ended: HashMap<String, String>,
    /// Ended orders in the order they are forgotten.
    ended_expiry: VecDeque<(u64, String)>,
}

impl Orders {
    /// Whether `event_id` comes before the entry that ended `order_id`, or
    /// is that entry.
    fn ended_after(&mut self, order_id: &str, event_id: &str) -> bool {
        let now = now_ms();
        while let Some((expires, _)) = self.ended_expiry.front()
            && *expires <= now
        {
            if let Some((_, gone)) = self.ended_expiry.pop_front() {
                self.ended.remove(&gone);
            }
        }
        self.ended
            .get(order_id)
            .is_some_and(|end| cmp_offsets(event_id, end) != Ordering::Greater)
    }

    /// Applies `write` to the order unless `event_id` is a repeat; returns
    /// what the order is after `event_id`.
    fn write<T>(
        &mut self,
        order_id: &str,
        event_id: &str,
        write: impl FnOnce(&mut Stored),
        read: impl FnOnce(&Stored) -> T,
    ) -> OrderWrite<T> {
        if self.ended_after(order_id, event_id) {
            return OrderWrite::Superseded;
        }
        let Some(stored) = self.active.get_mut(order_id) else {
            return OrderWrite::NotActive;
        };
        match cmp_offsets(event_id, &stored.last_entry) {
            Ordering::Less => OrderWrite::Superseded,
            Ordering::Equal => OrderWrite::Current(read(stored)),
            Ordering::Greater => {
                write(stored);
                stored.last_entry = event_id.to_owned();
                OrderWrite::Current(read(stored))
            }
        }
    }
}

#[derive(Default)]
pub struct MemoryOrders {
    orders: Mutex<Orders>,
}

impl MemoryOrders {
    fn orders(&self) -> std::sync::MutexGuard<'_, Orders> {
        self.orders.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl OrderStore for MemoryOrders {
    async fn create(&self, order: &ActiveOrder, event_id: &str) -> StoreResult<Created> {
        let mut orders = self.orders();
        if let Some(active) = orders.active.get(&order.order_id) {
            return Ok(Created::Active(active.order.clone()));
        }
        if orders.ended_after(&order.order_id, event_id) {
            return Ok(Created::Ended);
        }
        orders.active.insert(
            order.order_id.clone(),
            Stored {
                order: order.clone(),
                last_entry: event_id.to_owned(),
                previous_driver: None,
            },
        );
        Ok(Created::New)
    }

    async fn set_status(
        &self,
        order_id: &str,
        status: &str,
        at: Timestamp,
        event_id: &str,
    ) -> StoreResult<OrderWrite> {
        Ok(self.orders().write(
            order_id,
            event_id,
            |s| {
                s.order.status = status.to_owned();
                s.order.updated_at = at;
                s.order.seq += 1;
            },
            |s| s.order.clone(),
        ))
    }

    async fn assign(
        &self,
        order_id: &str,
        driver_id: &str,
        at: Timestamp,
        event_id: &str,
    ) -> StoreResult<OrderWrite<Assignment>> {
        Ok(self.orders().write(
            order_id,
            event_id,
            |s| {
                s.previous_driver = s.order.driver_id.replace(driver_id.to_owned());
                s.order.updated_at = at;
            },
            |s| Assignment {
                order: s.order.clone(),
                previous: s.previous_driver.clone(),
            },
        ))
    }

    async fn end(&self, order_id: &str, event_id: &str) -> StoreResult<Option<ActiveOrder>> {
        let mut orders = self.orders();
        let Some(stored) = orders.active.remove(order_id) else {
            return Ok(None);
        };
        orders
            .ended
            .insert(order_id.to_owned(), event_id.to_owned());
        orders
            .ended_expiry
            .push_back((now_ms() + ENDED_TTL_MS, order_id.to_owned()));
        Ok(Some(stored.order))
    }

    async fn get(&self, order_id: &str) -> StoreResult<Option<ActiveOrder>> {
        Ok(self.orders().active.get(order_id).map(|s| s.order.clone()))
    }

    async fn active_for(&self, principal: &Principal) -> StoreResult<Vec<ActiveOrder>> {
        let sub = principal.sub();
        let mine = |o: &ActiveOrder| match principal.role() {
            Role::Customer => o.customer_id == sub,
            Role::Driver => o.driver_id.as_deref() == Some(sub),
            Role::Merchant => principal.store_ids().contains(&o.store_id),
            Role::Admin | Role::Support => false,
        };
        let mut orders: Vec<ActiveOrder> = self
            .orders()
            .active
            .values()
            .map(|s| &s.order)
            .filter(|o| mine(o))
            .cloned()
            .collect();
        orders.sort_by(|a, b| {
            a.created_at
                .cmp(&b.created_at)
                .then(a.order_id.cmp(&b.order_id))
        });
        Ok(orders)
    }

    async fn newest(&self, max: usize) -> StoreResult<Vec<ActiveOrder>> {
        let mut orders: Vec<ActiveOrder> = self
            .orders()
            .active
            .values()
            .map(|s| s.order.clone())
            .collect();
        orders.sort_by(|a, b| {
            a.created_at
                .cmp(&b.created_at)
                .then(a.order_id.cmp(&b.order_id))
        });
        let skip = orders.len().saturating_sub(max);
        orders.drain(..skip);
        Ok(orders)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn newest_keeps_the_latest_active_orders_oldest_first() {
        let orders = MemoryOrders::default();
        for (n, id) in ["o1", "o2", "o3", "o4"].iter().enumerate() {
            orders
                .create(
                    &ActiveOrder::placed(id, "c1", "s1", 1_000 + n as u64),
                    &format!("{n}-1"),
                )
                .await
                .unwrap();
        }
        orders.end("o4", "9-0").await.unwrap();
        let ids = |v: Vec<ActiveOrder>| v.into_iter().map(|o| o.order_id).collect::<Vec<_>>();
        assert_eq!(ids(orders.newest(2).await.unwrap()), ["o2", "o3"]);
        assert_eq!(ids(orders.newest(10).await.unwrap()), ["o1", "o2", "o3"]);
        assert!(orders.newest(0).await.unwrap().is_empty());
    }
}
