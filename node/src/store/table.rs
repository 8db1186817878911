//! [`Table`]: one kind of object of the cluster state (nodes, services,
//! tasks), keyed by id, whose copies share every row that did not change.
//!
//! Owner: [`super::ClusterState`]. The Raft driver publishes the state as an
//! `Arc` that readers keep; the next apply then works on a copy. A plain
//! map made that copy deep (every node, task and string of a 5,000-node
//! fleet per apply batch: joins grew as N²). Here a copy is a map of shared
//! rows and a change copies only the row it writes.
//! Invariants:
//! - reads and the encoding are those of a `BTreeMap<K, V>` (same order,
//!   same bytes in snapshots and on the wire);
//! - a write through [`Table::get_mut`] / [`Table::values_mut_where`] never
//!   shows in another copy of the table;
//! - [`Table::stamp`]: two tables with the same stamp hold the same rows
//!   (a copy keeps the stamp, every write and every decode takes a new one),
//!   so a reader can skip a pass over a table it already walked.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::borrow::Borrow;
use std::collections::btree_map;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Debug, PartialEq)]
pub struct Table<K: Ord, V>(BTreeMap<K, Arc<V>>, Stamp);

/// Stamps are unique in this process.
fn fresh() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A version mark: a copy keeps it, a default or a decoded one is fresh,
/// [`Stamp::touch`] takes a new one. Not part of the value: two tables (or
/// states) that differ only in stamps are equal. Each table has one (see
/// [`Table::stamp`]); the state keeps others for what a table's stamp
/// would change too often for (see [`super::ClusterState::roster`]).
#[derive(Clone, Copy, Debug)]
pub struct Stamp(u64);

impl Default for Stamp {
    fn default() -> Self {
        Stamp(fresh())
    }
}

impl PartialEq for Stamp {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Stamp {
    pub fn get(&self) -> u64 {
        self.0
    }

    pub fn touch(&mut self) {
        self.0 = fresh();
    }
}

impl<K: Ord, V> Default for Table<K, V> {
    fn default() -> Self {
        Table(BTreeMap::new(), Stamp::default())
    }
}

impl<K: Ord + Clone, V> Clone for Table<K, V> {
    fn clone(&self) -> Self {
        Table(self.0.clone(), self.1)
    }
}

impl<K: Ord, V> Table<K, V> {
    pub fn get<Q>(&self, k: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.0.get(k).map(|v| &**v)
    }

    pub fn contains_key<Q>(&self, k: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.0.contains_key(k)
    }

    /// Returns the old row, if any.
    pub fn insert(&mut self, k: K, v: V) -> Option<Arc<V>> {
        self.1.touch();
        self.0.insert(k, Arc::new(v))
    }

    pub fn remove<Q>(&mut self, k: &Q) -> Option<Arc<V>>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.1.touch();
        self.0.remove(k)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn clear(&mut self) {
        self.1.touch();
        self.0.clear()
    }

    /// Equal stamps, equal rows (see the module's invariants).
    pub fn stamp(&self) -> u64 {
        self.1.get()
    }

    pub fn keys(&self) -> btree_map::Keys<'_, K, Arc<V>> {
        self.0.keys()
    }

    pub fn values(&self) -> impl DoubleEndedIterator<Item = &V> + ExactSizeIterator + Clone {
        self.0.values().map(|v| &**v)
    }

    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (&K, &V)> + ExactSizeIterator + Clone {
        self.into_iter()
    }
}

impl<K: Ord, V: Clone> Table<K, V> {
    /// The row to write; copied first if another copy of the table shares it.
    pub fn get_mut<Q>(&mut self, k: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.1.touch();
        self.0.get_mut(k).map(Arc::make_mut)
    }

    /// The rows `pick` chooses, to write (only those are copied).
    pub fn values_mut_where<'a>(
        &'a mut self,
        pick: impl Fn(&V) -> bool + 'a,
    ) -> impl Iterator<Item = &'a mut V> + 'a {
        self.1.touch();
        self.0
            .values_mut()
            .filter(move |v| pick(v))
            .map(Arc::make_mut)
    }
}

impl<K: Ord + Borrow<Q>, Q: Ord + ?Sized, V> std::ops::Index<&Q> for Table<K, V> {
    type Output = V;
    /// Panics when `k` is missing, like a map's index.
    fn index(&self, k: &Q) -> &V {
        &self.0[k]
    }
}

impl<'a, K: Ord, V> IntoIterator for &'a Table<K, V> {
    type Item = (&'a K, &'a V);
    type IntoIter =
        std::iter::Map<btree_map::Iter<'a, K, Arc<V>>, fn((&'a K, &'a Arc<V>)) -> (&'a K, &'a V)>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(k, v)| (k, &**v))
    }
}

impl<K: Ord, V> FromIterator<(K, V)> for Table<K, V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Table(
            iter.into_iter().map(|(k, v)| (k, Arc::new(v))).collect(),
            Stamp::default(),
        )
    }
}

impl<K: Ord, V> From<BTreeMap<K, V>> for Table<K, V> {
    fn from(m: BTreeMap<K, V>) -> Self {
        m.into_iter().collect()
    }
}

impl<K: Ord + Serialize, V: Serialize> Serialize for Table<K, V> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

impl<'de, K: Ord + Deserialize<'de>, V: Deserialize<'de>> Deserialize<'de> for Table<K, V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        BTreeMap::<K, V>::deserialize(d).map(Table::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_shows_only_in_its_own_copy_and_copies_only_its_row() {
        let mut a: Table<String, Vec<u8>> =
            [("x".to_string(), vec![1]), ("y".to_string(), vec![2])]
                .into_iter()
                .collect();
        let b = a.clone();
        a.get_mut("x").expect("x").push(9);
        assert_eq!(a.get("x"), Some(&vec![1, 9]));
        assert_eq!(b.get("x"), Some(&vec![1]));
        // The row not written is still the same allocation in both copies.
        let (ya, yb) = (a.0.get("y"), b.0.get("y"));
        assert!(Arc::ptr_eq(ya.expect("y"), yb.expect("y")));
        for v in a.values_mut_where(|v| v[0] == 2) {
            v.push(7);
        }
        assert_eq!(a.get("y"), Some(&vec![2, 7]));
        assert_eq!(b.get("y"), Some(&vec![2]));
    }

    #[test]
    fn a_copy_keeps_the_stamp_and_every_write_takes_a_new_one() {
        let mut a: Table<String, u32> = [("x".to_string(), 1)].into_iter().collect();
        let b = a.clone();
        assert_eq!(a.stamp(), b.stamp());
        let before = a.stamp();
        if let Some(v) = a.get_mut("x") {
            *v = 2;
        }
        assert_ne!(a.stamp(), before);
        let s1 = a.stamp();
        a.insert("y".into(), 3);
        assert_ne!(a.stamp(), s1);
        let s2 = a.stamp();
        a.remove("y");
        assert_ne!(a.stamp(), s2);
        // Decoded tables never share a stamp with a live one.
        let bytes = skein_protocol::codec::encode(&b).expect("encode");
        let c: Table<String, u32> = skein_protocol::codec::decode(&bytes).expect("decode");
        assert_eq!(c, b);
        assert_ne!(c.stamp(), b.stamp());
    }

    #[test]
    fn encodes_exactly_as_the_map_it_replaces() {
        let m: BTreeMap<String, u32> = [("a".into(), 1), ("b".into(), 2)].into_iter().collect();
        let t = Table::from(m.clone());
        let bt = skein_protocol::codec::encode(&t).expect("table");
        let bm = skein_protocol::codec::encode(&m).expect("map");
        assert_eq!(bt, bm);
        let back: Table<String, u32> = skein_protocol::codec::decode(&bm).expect("decode");
        assert_eq!(back, t);
        assert_eq!(
            serde_json::to_string(&t).ok(),
            serde_json::to_string(&m).ok()
        );
    }
}
