//! Active orders in process.

use std::{collections::HashMap, sync::Mutex};

use crate::engine::StoreResult;
use crate::{
    active_order::ActiveOrder,
    auth::{Principal, Role},
    engine::traits::OrderStore,
    events::Timestamp,
};

#[derive(Default)]
pub struct MemoryOrders {
    orders: Mutex<HashMap<String, ActiveOrder>>,
}

impl MemoryOrders {
    fn orders(&self) -> std::sync::MutexGuard<'_, HashMap<String, ActiveOrder>> {
        self.orders.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl OrderStore for MemoryOrders {
    async fn create(&self, order: &ActiveOrder) -> StoreResult<Option<ActiveOrder>> {
        let mut orders = self.orders();
        if let Some(active) = orders.get(&order.order_id) {
            return Ok(Some(active.clone()));
        }
        orders.insert(order.order_id.clone(), order.clone());
        Ok(None)
    }

    async fn set_status(
        &self,
        order_id: &str,
        status: &str,
        at: Timestamp,
    ) -> StoreResult<Option<ActiveOrder>> {
        Ok(self.orders().get_mut(order_id).map(|order| {
            order.status = status.to_owned();
            order.updated_at = at;
            order.seq += 1;
            order.clone()
        }))
    }

    async fn assign(
        &self,
        order_id: &str,
        driver_id: &str,
        at: Timestamp,
    ) -> StoreResult<Option<ActiveOrder>> {
        Ok(self.orders().get_mut(order_id).map(|order| {
            order.driver_id = Some(driver_id.to_owned());
            order.updated_at = at;
            order.clone()
        }))
    }

    async fn end(&self, order_id: &str) -> StoreResult<Option<ActiveOrder>> {
        Ok(self.orders().remove(order_id))
    }

    async fn get(&self, order_id: &str) -> StoreResult<Option<ActiveOrder>> {
        Ok(self.orders().get(order_id).cloned())
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
            .values()
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
        let mut orders: Vec<ActiveOrder> = self.orders().values().cloned().collect();
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
                .create(&ActiveOrder::placed(id, "c1", "s1", 1_000 + n as u64))
                .await
                .unwrap();
        }
        orders.end("o4").await.unwrap();
        let ids = |v: Vec<ActiveOrder>| v.into_iter().map(|o| o.order_id).collect::<Vec<_>>();
        assert_eq!(ids(orders.newest(2).await.unwrap()), ["o2", "o3"]);
        assert_eq!(ids(orders.newest(10).await.unwrap()), ["o1", "o2", "o3"]);
        assert!(orders.newest(0).await.unwrap().is_empty());
    }
}
