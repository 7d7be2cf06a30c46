//! Room names of CONTRACT §2: the only place they are spelled out.

use std::fmt;

use crate::auth::{Principal, Role};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Room {
    Customer(String),
    Merchant(String),
    Driver(String),
    Order(String),
    AdminUpdates,
}

impl Room {
    /// What every order room's name starts with.
    pub const ORDER_PREFIX: &'static str = "order_";
    /// What every driver's own room's name starts with.
    pub const DRIVER_PREFIX: &'static str = "driver_";

    pub fn order(id: impl Into<String>) -> Self {
        Self::Order(id.into())
    }

    /// The rooms a principal joins at connect because of who it is. Order
    /// rooms come on top of these, from the order state.
    pub fn for_principal(principal: &Principal) -> Vec<Room> {
        let sub = principal.sub();
        match principal.role() {
            Role::Customer => vec![Self::Customer(sub.to_owned())],
            Role::Merchant => principal
                .store_ids()
                .iter()
                .map(|store| Self::Merchant(store.clone()))
                .collect(),
            Role::Driver => vec![Self::Driver(sub.to_owned())],
            Role::Admin => vec![Self::AdminUpdates],
            Role::Support => Vec::new(),
        }
    }

    /// The role rooms a connection leaves and joins when its principal
    /// becomes `after` (a token refresh): only a merchant's change, when its
    /// `store_ids` did.
    pub fn changes(before: &Principal, after: &Principal) -> RoomChanges {
        let old = Self::for_principal(before);
        let new = Self::for_principal(after);
        RoomChanges {
            leave: old.iter().filter(|r| !new.contains(r)).cloned().collect(),
            join: new.into_iter().filter(|r| !old.contains(r)).collect(),
        }
    }

    pub fn name(&self) -> String {
        self.to_string()
    }
}

/// See [`Room::changes`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RoomChanges {
    pub leave: Vec<Room>,
    pub join: Vec<Room>,
}

impl fmt::Display for Room {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Customer(id) => write!(f, "customer_{id}"),
            Self::Merchant(store) => write!(f, "merchant_{store}"),
            Self::Driver(id) => write!(f, "driver_{id}"),
            Self::Order(id) => write!(f, "order_{id}"),
            Self::AdminUpdates => f.write_str("admin_updates"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(p: &Principal) -> Vec<String> {
        Room::for_principal(p).iter().map(Room::name).collect()
    }

    #[test]
    fn each_role_gets_its_contract_rooms() {
        assert_eq!(
            names(&Principal::new("c1", Role::Customer, vec![])),
            ["customer_c1"]
        );
        assert_eq!(
            names(&Principal::new(
                "m1",
                Role::Merchant,
                vec!["s1".into(), "s2".into()]
            )),
            ["merchant_s1", "merchant_s2"]
        );
        assert_eq!(
            names(&Principal::new("d1", Role::Driver, vec![])),
            ["driver_d1"]
        );
        assert_eq!(
            names(&Principal::new("a1", Role::Admin, vec![])),
            ["admin_updates"]
        );
        assert!(names(&Principal::new("s1", Role::Support, vec![])).is_empty());
        assert_eq!(Room::order("o9").name(), "order_o9");
    }

    #[test]
    fn a_merchant_follows_its_new_store_ids() {
        let merchant = |stores: &[&str]| {
            Principal::new(
                "m1",
                Role::Merchant,
                stores.iter().map(|s| (*s).to_owned()).collect(),
            )
        };
        let changes = Room::changes(&merchant(&["s1", "s2"]), &merchant(&["s2", "s3"]));
        assert_eq!(changes.leave, [Room::Merchant("s1".into())]);
        assert_eq!(changes.join, [Room::Merchant("s3".into())]);
        let customer = Principal::new("c1", Role::Customer, vec![]);
        assert_eq!(
            Room::changes(&customer, &customer.clone().expiring_at(9, 0)),
            RoomChanges::default()
        );
    }
}
