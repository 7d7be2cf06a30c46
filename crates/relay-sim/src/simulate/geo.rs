//! Positions on the city map and movement along routes. A city is a few
//! kilometres across, so a flat-earth approximation around each point is
//! far more precise than any phone's GPS.

use std::collections::VecDeque;

use super::rng::Rng;

const EARTH_RADIUS_M: f64 = 6_371_000.0;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub lat: f64,
    pub lng: f64,
}

impl Point {
    pub const fn new(lat: f64, lng: f64) -> Self {
        Self { lat, lng }
    }

    /// Great-circle distance in metres (haversine).
    pub fn distance_m(self, other: Point) -> f64 {
        let (lat1, lat2) = (self.lat.to_radians(), other.lat.to_radians());
        let dlat = lat2 - lat1;
        let dlng = (other.lng - self.lng).to_radians();
        let a = (dlat / 2.0).sin().powi(2) + lat1.cos() * lat2.cos() * (dlng / 2.0).sin().powi(2);
        2.0 * EARTH_RADIUS_M * a.sqrt().asin()
    }

    /// Initial compass bearing towards `other`, degrees in [0, 360).
    pub fn bearing_to(self, other: Point) -> f64 {
        let (lat1, lat2) = (self.lat.to_radians(), other.lat.to_radians());
        let dlng = (other.lng - self.lng).to_radians();
        let y = dlng.sin() * lat2.cos();
        let x = lat1.cos() * lat2.sin() - lat1.sin() * lat2.cos() * dlng.cos();
        normalize_heading(y.atan2(x).to_degrees())
    }

    /// The point `meters` away on compass `bearing` (degrees).
    pub fn offset(self, bearing: f64, meters: f64) -> Point {
        let b = bearing.to_radians();
        let north = meters * b.cos();
        let east = meters * b.sin();
        let dlat = (north / EARTH_RADIUS_M).to_degrees();
        let dlng = (east / (EARTH_RADIUS_M * self.lat.to_radians().cos())).to_degrees();
        Point::new(self.lat + dlat, self.lng + dlng)
    }

    /// A uniformly random point within `radius_m` of `self`.
    pub fn random_within(self, radius_m: f64, rng: &mut Rng) -> Point {
        // sqrt: uniform over the disc's area, not crowded at the centre.
        self.offset(rng.range(0.0, 360.0), radius_m * rng.unit().sqrt())
    }

    /// The point `t` of the way from `self` to `other` (t in [0, 1]).
    fn lerp(self, other: Point, t: f64) -> Point {
        Point::new(
            self.lat + (other.lat - self.lat) * t,
            self.lng + (other.lng - self.lng) * t,
        )
    }
}

/// Into [0, 360): the contract's range for `heading`.
pub fn normalize_heading(deg: f64) -> f64 {
    let h = deg.rem_euclid(360.0);
    if h >= 360.0 { 0.0 } else { h }
}

/// Something that moves along straight segments: a driver on its bike.
#[derive(Debug, Clone)]
pub struct Mover {
    at: Point,
    heading: f64,
    waypoints: VecDeque<Point>,
}

/// What one step of movement did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Step {
    /// Still on the way.
    Moving,
    /// Reached the last waypoint during this step (or had none).
    Arrived,
}

impl Mover {
    pub fn new(at: Point, heading: f64) -> Self {
        Self {
            at,
            heading: normalize_heading(heading),
            waypoints: VecDeque::new(),
        }
    }

    pub fn at(&self) -> Point {
        self.at
    }

    pub fn heading(&self) -> f64 {
        self.heading
    }

    pub fn is_moving(&self) -> bool {
        !self.waypoints.is_empty()
    }

    /// Metres left along the route.
    #[cfg(test)]
    pub fn remaining_m(&self) -> f64 {
        let mut from = self.at;
        let mut total = 0.0;
        for p in &self.waypoints {
            total += from.distance_m(*p);
            from = *p;
        }
        total
    }

    /// Heads for `to` the way streets go: along one axis, then the other
    /// (which one first is up to `rng`), so the heading changes on the way.
    pub fn route_to(&mut self, to: Point, rng: &mut Rng) {
        self.waypoints.clear();
        let corner = if rng.chance(0.5) {
            Point::new(self.at.lat, to.lng)
        } else {
            Point::new(to.lat, self.at.lng)
        };
        // A corner a few metres off the line is no corner.
        if corner.distance_m(self.at) > 30.0 && corner.distance_m(to) > 30.0 {
            self.waypoints.push_back(corner);
        }
        self.waypoints.push_back(to);
    }

    /// Drops the route: stays where it is.
    pub fn stop(&mut self) {
        self.waypoints.clear();
    }

    /// Moves `meters` along the route.
    pub fn advance(&mut self, mut meters: f64) -> Step {
        while let Some(&next) = self.waypoints.front() {
            let left = self.at.distance_m(next);
            if left > 0.5 {
                self.heading = self.at.bearing_to(next);
            }
            if left <= meters {
                meters -= left;
                self.at = next;
                self.waypoints.pop_front();
                if self.waypoints.is_empty() {
                    return Step::Arrived;
                }
            } else {
                self.at = self.at.lerp(next, meters / left);
                return Step::Moving;
            }
        }
        Step::Arrived
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CENTRE: Point = Point::new(12.9716, 77.5946);

    #[test]
    fn distances_and_bearings_match_the_compass() {
        let north = CENTRE.offset(0.0, 1000.0);
        let east = CENTRE.offset(90.0, 1000.0);
        assert!((CENTRE.distance_m(north) - 1000.0).abs() < 1.0);
        assert!((CENTRE.distance_m(east) - 1000.0).abs() < 1.0);
        assert!(
            CENTRE
                .bearing_to(north)
                .min(360.0 - CENTRE.bearing_to(north))
                < 0.1
        );
        assert!((CENTRE.bearing_to(east) - 90.0).abs() < 0.1);
        assert!((east.bearing_to(CENTRE) - 270.0).abs() < 0.1);
        let south_west = CENTRE.offset(225.0, 500.0);
        assert!((CENTRE.bearing_to(south_west) - 225.0).abs() < 0.1);
    }

    #[test]
    fn headings_are_always_in_the_contract_range() {
        for deg in [-720.0, -90.0, -0.0, 0.0, 359.999_999, 360.0, 725.0] {
            let h = normalize_heading(deg);
            assert!((0.0..360.0).contains(&h), "{deg} -> {h}");
        }
    }

    #[test]
    fn random_points_stay_inside_the_radius() {
        let mut rng = Rng::new(9);
        for _ in 0..1000 {
            let p = CENTRE.random_within(3000.0, &mut rng);
            assert!(CENTRE.distance_m(p) <= 3000.5);
        }
    }

    #[test]
    fn a_mover_follows_its_route_and_arrives_exactly() {
        let mut rng = Rng::new(4);
        let to = CENTRE.offset(45.0, 2000.0);
        let mut mover = Mover::new(CENTRE, 0.0);
        mover.route_to(to, &mut rng);
        let route = mover.remaining_m();
        // Two legs of an L around the 2 km diagonal: about 2 * 2000 / sqrt 2.
        assert!((route - 2828.0).abs() < 20.0, "{route}");
        let mut walked = 0.0;
        let mut steps = 0;
        while mover.advance(100.0) == Step::Moving {
            walked += 100.0;
            steps += 1;
            let h = mover.heading();
            // Along the streets: north or east, never diagonal.
            assert!(
                !(1.0..=359.0).contains(&h) || (h - 90.0).abs() < 1.0,
                "heading {h}"
            );
            assert!(steps < 100, "never arrived");
        }
        assert!(walked <= route && route - walked <= 100.0);
        assert_eq!(mover.at(), to);
        assert!(!mover.is_moving());
        assert_eq!(mover.advance(50.0), Step::Arrived);
        assert_eq!(mover.at(), to);
    }

    #[test]
    fn a_long_step_runs_through_several_waypoints() {
        let mut rng = Rng::new(5);
        let to = CENTRE.offset(135.0, 800.0);
        let mut mover = Mover::new(CENTRE, 0.0);
        mover.route_to(to, &mut rng);
        assert_eq!(mover.advance(10_000.0), Step::Arrived);
        assert_eq!(mover.at(), to);
    }
}
