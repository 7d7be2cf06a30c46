//! The orders each user watches, in process.

use std::{collections::HashMap, sync::Mutex};

use crate::{
    auth::Principal,
    engine::{
        StoreResult,
        traits::{WATCH_TTL, WatchedOrders},
    },
    events::now_ms,
};

/// A user: a role and a `sub`.
type User = (&'static str, String);
/// Each watched order with when it is forgotten (unix ms).
type Watched = HashMap<String, u64>;

#[derive(Default)]
pub struct MemoryWatches {
    users: Mutex<HashMap<User, Watched>>,
}

fn user(principal: &Principal) -> User {
    (principal.role().as_str(), principal.sub().to_owned())
}

impl MemoryWatches {
    fn users(&self) -> std::sync::MutexGuard<'_, HashMap<User, Watched>> {
        self.users.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl WatchedOrders for MemoryWatches {
    async fn watch(&self, principal: &Principal, order_id: &str) -> StoreResult<()> {
        let now = now_ms();
        let mut users = self.users();
        let orders = users.entry(user(principal)).or_default();
        orders.retain(|_, forget_at| *forget_at > now);
        orders.insert(order_id.to_owned(), now + WATCH_TTL.as_millis() as u64);
        Ok(())
    }

    async fn unwatch(&self, principal: &Principal, order_id: &str) -> StoreResult<()> {
        let mut users = self.users();
        let key = user(principal);
        if let Some(orders) = users.get_mut(&key) {
            orders.remove(order_id);
            if orders.is_empty() {
                users.remove(&key);
            }
        }
        Ok(())
    }

    async fn watched(&self, principal: &Principal) -> StoreResult<Vec<String>> {
        let now = now_ms();
        Ok(self
            .users()
            .get(&user(principal))
            .map(|orders| {
                orders
                    .iter()
                    .filter(|(_, forget_at)| **forget_at > now)
                    .map(|(order, _)| order.clone())
                    .collect()
            })
            .unwrap_or_default())
    }
}
