//! Giving back the memory of maps that held one entry per socket.
//!
//! A `HashMap` keeps its table at the largest size it ever had: a node that
//! held 20,000 sockets keeps tables for 20,000 after they have all left
//! (issue #19: RSS a minute after a spike). Shrinking once a map is a
//! quarter full, to twice its length, gives that back at an amortised cost
//! of O(1) per removal: the next shrink needs as many removals again.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hash};

/// Below this capacity a table is not worth shrinking.
const MIN_CAPACITY: usize = 64;

pub trait ShrinkWhenSparse {
    /// Shrinks the table when at most a quarter of it is used.
    fn shrink_when_sparse(&mut self);
}

fn sparse(len: usize, capacity: usize) -> bool {
    capacity > MIN_CAPACITY && len <= capacity / 4
}

impl<K: Eq + Hash, V, S: BuildHasher> ShrinkWhenSparse for HashMap<K, V, S> {
    fn shrink_when_sparse(&mut self) {
        if sparse(self.len(), self.capacity()) {
            self.shrink_to(self.len() * 2);
        }
    }
}

impl<T: Eq + Hash, S: BuildHasher> ShrinkWhenSparse for HashSet<T, S> {
    fn shrink_when_sparse(&mut self) {
        if sparse(self.len(), self.capacity()) {
            self.shrink_to(self.len() * 2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_map_emptied_after_a_spike_gives_its_table_back_and_a_small_one_is_left_alone() {
        let mut map: HashMap<u32, u32> = (0..20_000).map(|i| (i, i)).collect();
        let full = map.capacity();
        for i in 0..19_990 {
            map.remove(&i);
            map.shrink_when_sparse();
        }
        assert_eq!(map.len(), 10);
        assert!(
            map.capacity() <= MIN_CAPACITY * 2,
            "capacity {}",
            map.capacity()
        );
        assert!(map.capacity() < full);
        assert!((19_990..20_000).all(|i| map.get(&i) == Some(&i)));

        // Removals can lower `capacity()` by themselves (a removed entry may
        // leave a tombstone, which hashbrown does not count as free), and
        // by how much depends on the process's random hash seed: compare
        // around the shrink only.
        let mut small: HashSet<u32> = (0..40).collect();
        small.retain(|i| *i < 2);
        let capacity = small.capacity();
        small.shrink_when_sparse();
        assert_eq!(small.capacity(), capacity, "a table under 64 is left alone");
    }
}
