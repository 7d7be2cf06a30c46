//! The map: a few square kilometres of Bengaluru with named stores and
//! their menus, customers' homes and the drivers' ids. Fixed by the seed.

use serde_json::{Value, json};

use super::{geo::Point, rng::Rng};

/// MG Road, roughly: the middle of the simulated city.
pub const CENTRE: Point = Point::new(12.9716, 77.5946);
/// Customers live and drivers roam within this distance of the centre.
pub const RADIUS_M: f64 = 5_000.0;
/// Platforms rarely deliver further than this; customers are chosen within it.
const MAX_DELIVERY_M: f64 = 6_000.0;

/// Real neighbourhoods around the centre, where the stores are.
const NEIGHBOURHOODS: [(&str, f64, f64); 12] = [
    ("Shivajinagar", 12.9857, 77.6057),
    ("Jayanagar", 12.9299, 77.5826),
    ("Indiranagar", 12.9719, 77.6412),
    ("Koramangala", 12.9352, 77.6245),
    ("Malleswaram", 13.0031, 77.5643),
    ("Basavanagudi", 12.9416, 77.5750),
    ("Frazer Town", 12.9989, 77.6146),
    ("Richmond Town", 12.9650, 77.6040),
    ("Ulsoor", 12.9817, 77.6286),
    ("Sadashivanagar", 13.0075, 77.5802),
    ("Wilson Garden", 12.9487, 77.5970),
    ("Gandhinagar", 12.9780, 77.5760),
];

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MenuItem {
    pub sku: &'static str,
    pub name: &'static str,
    /// Rupees.
    pub price: u32,
}

const fn item(sku: &'static str, name: &'static str, price: u32) -> MenuItem {
    MenuItem { sku, name, price }
}

/// A kind of kitchen: its name and what it sells.
struct Kitchen {
    brand: &'static str,
    menu: &'static [MenuItem],
}

const KITCHENS: [Kitchen; 8] = [
    Kitchen {
        brand: "Dosa Corner",
        menu: &[
            item("masala-dosa", "Masala Dosa", 120),
            item("idli-vada", "Idli Vada", 90),
            item("rava-dosa", "Rava Dosa", 130),
            item("filter-coffee", "Filter Coffee", 40),
        ],
    },
    Kitchen {
        brand: "Biryani House",
        menu: &[
            item("chicken-biryani", "Chicken Biryani", 280),
            item("mutton-biryani", "Mutton Biryani", 360),
            item("veg-biryani", "Veg Biryani", 210),
            item("raita", "Raita", 40),
        ],
    },
    Kitchen {
        brand: "Pizza Forno",
        menu: &[
            item("margherita", "Margherita", 299),
            item("paneer-tikka-pizza", "Paneer Tikka Pizza", 399),
            item("garlic-bread", "Garlic Bread", 149),
            item("cola", "Cola", 60),
        ],
    },
    Kitchen {
        brand: "Wok Express",
        menu: &[
            item("hakka-noodles", "Hakka Noodles", 190),
            item("gobi-manchurian", "Gobi Manchurian", 170),
            item("fried-rice", "Fried Rice", 180),
            item("spring-rolls", "Spring Rolls", 150),
        ],
    },
    Kitchen {
        brand: "Daily Bakes",
        menu: &[
            item("veg-puff", "Veg Puff", 35),
            item("chocolate-cake", "Chocolate Pastry", 110),
            item("plum-cake", "Plum Cake", 250),
            item("cold-coffee", "Cold Coffee", 90),
        ],
    },
    Kitchen {
        brand: "Thali Point",
        menu: &[
            item("north-thali", "North Indian Thali", 220),
            item("south-thali", "South Indian Thali", 200),
            item("butter-naan", "Butter Naan", 50),
            item("lassi", "Sweet Lassi", 70),
        ],
    },
    Kitchen {
        brand: "Chaat Street",
        menu: &[
            item("pani-puri", "Pani Puri", 60),
            item("pav-bhaji", "Pav Bhaji", 130),
            item("dahi-puri", "Dahi Puri", 80),
            item("masala-chai", "Masala Chai", 30),
        ],
    },
    Kitchen {
        brand: "Juice Junction",
        menu: &[
            item("mosambi", "Mosambi Juice", 80),
            item("watermelon", "Watermelon Juice", 70),
            item("fruit-bowl", "Fruit Bowl", 120),
            item("tender-coconut", "Tender Coconut", 60),
        ],
    },
];

#[derive(Debug, Clone)]
pub struct Store {
    /// `s1`, `s2`, ...: the dev merchant token of `make run` owns `s1`.
    pub id: String,
    /// The owner's user id (`m1` owns `s1`).
    pub merchant_id: String,
    pub name: String,
    pub at: Point,
    pub menu: &'static [MenuItem],
    /// Relative share of the city's orders.
    pub popularity: f64,
}

#[derive(Debug, Clone)]
pub struct Customer {
    pub id: String,
    pub home: Point,
}

#[derive(Debug, Clone)]
pub struct City {
    pub stores: Vec<Store>,
    pub customers: Vec<Customer>,
    pub drivers: Vec<String>,
}

impl City {
    pub fn build(seed: u64, stores: usize, customers: usize, drivers: usize) -> Self {
        let mut rng = Rng::derive(seed, "city", 0);
        let stores = (0..stores)
            .map(|i| {
                let kitchen = &KITCHENS[i % KITCHENS.len()];
                let (area, at) = match NEIGHBOURHOODS.get(i) {
                    Some((area, lat, lng)) => ((*area).to_owned(), Point::new(*lat, *lng)),
                    // Beyond the named areas: somewhere in town.
                    None => (
                        format!("Block {}", i + 1),
                        CENTRE.random_within(RADIUS_M * 0.8, &mut rng),
                    ),
                };
                Store {
                    id: format!("s{}", i + 1),
                    merchant_id: format!("m{}", i + 1),
                    name: format!("{}, {area}", kitchen.brand),
                    at,
                    menu: kitchen.menu,
                    popularity: rng.range(0.5, 2.0),
                }
            })
            .collect();
        let customers = (0..customers)
            .map(|i| Customer {
                id: format!("c{}", i + 1),
                home: CENTRE.random_within(RADIUS_M, &mut rng),
            })
            .collect();
        let drivers = (0..drivers).map(|i| format!("d{}", i + 1)).collect();
        Self {
            stores,
            customers,
            drivers,
        }
    }

    /// A store, by popularity.
    pub fn pick_store(&self, rng: &mut Rng) -> usize {
        let weights: Vec<f64> = self.stores.iter().map(|s| s.popularity).collect();
        rng.weighted(&weights)
    }

    /// A customer within delivery distance of `store`, when one is found
    /// in a few tries (most are).
    pub fn pick_customer(&self, store: &Store, rng: &mut Rng) -> usize {
        let mut pick = rng.below(self.customers.len());
        for _ in 0..8 {
            if self.customers[pick].home.distance_m(store.at) <= MAX_DELIVERY_M {
                break;
            }
            pick = rng.below(self.customers.len());
        }
        pick
    }
}

/// What a customer orders at `store`: one to three dishes, mostly one of
/// each, as the `items` of `order.created`.
pub fn basket(store: &Store, rng: &mut Rng) -> (Vec<Value>, u32) {
    let lines = 1 + rng.weighted(&[5.0, 3.0, 1.5]);
    let mut picked: Vec<&MenuItem> = Vec::new();
    while picked.len() < lines.min(store.menu.len()) {
        let dish = rng.pick(store.menu);
        if !picked.iter().any(|p| p.sku == dish.sku) {
            picked.push(dish);
        }
    }
    let mut total = 0;
    let items = picked
        .into_iter()
        .map(|dish| {
            let qty = 1 + rng.weighted(&[6.0, 2.0, 1.0]) as u32;
            total += qty * dish.price;
            json!({"sku": dish.sku, "name": dish.name, "qty": qty, "price": dish.price})
        })
        .collect();
    (items, total)
}

/// The driver's pay for a delivery, in rupees: a base plus a rate per km.
pub fn fare(distance_m: f64) -> u32 {
    30 + (distance_m / 1000.0 * 8.0).round() as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_city_is_fixed_by_the_seed() {
        let a = City::build(7, 6, 40, 30);
        let b = City::build(7, 6, 40, 30);
        let c = City::build(8, 6, 40, 30);
        assert_eq!(a.customers[5].home, b.customers[5].home);
        assert_ne!(a.customers[5].home, c.customers[5].home);
        assert_eq!(a.stores[0].id, "s1");
        assert_eq!(a.stores[0].merchant_id, "m1");
        assert_eq!(a.drivers[29], "d30");
        assert!(a.stores[0].name.starts_with("Dosa Corner"));
    }

    #[test]
    fn stores_and_homes_are_in_town() {
        let city = City::build(1, 20, 200, 1);
        for store in &city.stores {
            assert!(CENTRE.distance_m(store.at) < 6_000.0, "{}", store.name);
        }
        for customer in &city.customers {
            assert!(CENTRE.distance_m(customer.home) <= RADIUS_M + 1.0);
        }
        let mut rng = Rng::new(2);
        let mut near = 0;
        for _ in 0..200 {
            let store = &city.stores[city.pick_store(&mut rng)];
            let customer = &city.customers[city.pick_customer(store, &mut rng)];
            if customer.home.distance_m(store.at) <= MAX_DELIVERY_M {
                near += 1;
            }
        }
        assert!(near >= 195, "{near} of 200 within delivery distance");
    }

    #[test]
    fn a_basket_has_distinct_dishes_and_adds_up() {
        let city = City::build(3, 8, 1, 1);
        let mut rng = Rng::new(4);
        for _ in 0..100 {
            let store = &city.stores[rng.below(city.stores.len())];
            let (items, total) = basket(store, &mut rng);
            assert!((1..=3).contains(&items.len()));
            let sum: u64 = items
                .iter()
                .map(|i| i["qty"].as_u64().unwrap() * i["price"].as_u64().unwrap())
                .sum();
            assert_eq!(sum, u64::from(total));
            let mut skus: Vec<&str> = items.iter().map(|i| i["sku"].as_str().unwrap()).collect();
            skus.sort_unstable();
            skus.dedup();
            assert_eq!(skus.len(), items.len());
        }
        assert_eq!(fare(0.0), 30);
        assert_eq!(fare(2500.0), 50);
    }
}
