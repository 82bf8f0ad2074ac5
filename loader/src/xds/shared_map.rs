//! A sorted map whose copies share what they did not change.
//!
//! Snapshots at 100,000 backends hold three maps of 100,000 resources each, and a change touches
//! a handful of them. Each snapshot is kept while the ADS server or a stream still serves it, so
//! the next one cannot be made by changing the maps in place, and copying them costs as much as
//! the change itself many times over. A [`SharedMap`] is its entries in sorted runs of at most
//! [`MAX_RUN`] behind reference counts: cloning it copies one pointer per run, and changing a
//! clone copies only the run that changes ([`Arc::make_mut`]).
//!
//! Two maps where one was made from the other by a few changes share all the other runs, which
//! makes finding what differs between them ([`SharedMap::diff`]) cost the runs that changed, not
//! the entries.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::sync::Arc;

/// Entries per run when a map is built from a list (half of [`MAX_RUN`], so that inserts split
/// rarely).
const RUN: usize = 64;
/// A run that grows past this is split in two.
const MAX_RUN: usize = 2 * RUN;

/// A map sorted by key; see the module documentation.
pub struct SharedMap<K, V> {
    /// Non-empty, each sorted, each one's keys below the next one's.
    runs: Vec<Arc<Vec<(K, V)>>>,
    len: usize,
}

impl<K, V> Clone for SharedMap<K, V> {
    fn clone(&self) -> Self {
        SharedMap { runs: self.runs.clone(), len: self.len }
    }
}

impl<K, V> Default for SharedMap<K, V> {
    fn default() -> Self {
        SharedMap { runs: Vec::new(), len: 0 }
    }
}

impl<K: Ord, V> SharedMap<K, V> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The run that holds `key` if any map entry does: the first whose last key is not below it.
    fn run_of<Q>(&self, key: &Q) -> usize
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.runs.partition_point(|run| run.last().expect("runs are not empty").0.borrow() < key)
    }

    pub fn get_key_value<Q>(&self, key: &Q) -> Option<(&K, &V)>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        let run = self.runs.get(self.run_of(key))?;
        let at = run.binary_search_by(|(k, _)| k.borrow().cmp(key)).ok()?;
        let (k, v) = &run[at];
        Some((k, v))
    }

    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.get_key_value(key).map(|(_, v)| v)
    }

    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.get_key_value(key).is_some()
    }

    pub fn iter(&self) -> Iter<'_, K, V> {
        Iter { runs: self.runs.iter(), run: [].iter(), len: self.len }
    }

    pub fn keys(&self) -> impl Iterator<Item = &K> + '_ {
        self.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl Iterator<Item = &V> + '_ {
        self.iter().map(|(_, v)| v)
    }
}

impl<K: Ord + Clone, V: Clone> SharedMap<K, V> {
    /// Inserts or replaces; returns the value replaced. Copies the run it changes if another map
    /// shares it.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        if self.runs.is_empty() {
            self.runs.push(Arc::new(vec![(key, value)]));
            self.len = 1;
            return None;
        }
        // Past the last key: the last run takes it.
        let index = self.run_of(&key).min(self.runs.len() - 1);
        let run = Arc::make_mut(&mut self.runs[index]);
        match run.binary_search_by(|(k, _)| k.cmp(&key)) {
            Ok(at) => return Some(std::mem::replace(&mut run[at].1, value)),
            Err(at) => run.insert(at, (key, value)),
        }
        self.len += 1;
        if run.len() > MAX_RUN {
            let upper = run.split_off(run.len() / 2);
            self.runs.insert(index + 1, Arc::new(upper));
        }
        None
    }

    /// Removes `key`; returns its value. Copies the run it changes if another map shares it.
    pub fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        let index = self.run_of(key);
        let at = self.runs.get(index)?.binary_search_by(|(k, _)| k.borrow().cmp(key)).ok()?;
        let run = Arc::make_mut(&mut self.runs[index]);
        let (_, value) = run.remove(at);
        self.len -= 1;
        let left = run.len();
        if left == 0 {
            self.runs.remove(index);
        } else if left < RUN / 4
            && index + 1 < self.runs.len()
            && left + self.runs[index + 1].len() <= MAX_RUN
        {
            // Keeps runs from thinning out under removals: a small run joins its successor
            // when they fit in one.
            let next = self.runs.remove(index + 1);
            let next = Arc::try_unwrap(next).unwrap_or_else(|shared| (*shared).clone());
            Arc::make_mut(&mut self.runs[index]).extend(next);
        }
        Some(value)
    }
}

impl<K: Ord, V> SharedMap<K, V> {
    /// Every key whose entry is in one map and not the other, or whose values `same` says differ,
    /// in order, with both values. Runs the two maps share are skipped whole, so a map and one
    /// made from it by a few changes are compared in time proportional to their runs, plus the
    /// entries of the runs that changed.
    pub fn diff<'a, W>(
        &'a self,
        other: &'a SharedMap<K, W>,
        mut same: impl FnMut(&V, &W) -> bool,
        mut differs: impl FnMut(&'a K, Option<&'a V>, Option<&'a W>),
    ) {
        let (mut a, mut b) = (Cursor::new(&self.runs), Cursor::new(&other.runs));
        loop {
            // Shared runs, at the start of both: equal entries throughout.
            while let (Some(ra), Some(rb)) = (a.whole_run(), b.whole_run()) {
                if !same_allocation(ra, rb) {
                    break;
                }
                a.skip_run();
                b.skip_run();
            }
            match (a.peek(), b.peek()) {
                (None, None) => return,
                (Some((k, v)), None) => {
                    differs(k, Some(v), None);
                    a.next();
                }
                (None, Some((k, w))) => {
                    differs(k, None, Some(w));
                    b.next();
                }
                (Some((ka, v)), Some((kb, w))) => match ka.cmp(kb) {
                    Ordering::Less => {
                        differs(ka, Some(v), None);
                        a.next();
                    }
                    Ordering::Greater => {
                        differs(kb, None, Some(w));
                        b.next();
                    }
                    Ordering::Equal => {
                        if !same(v, w) {
                            differs(ka, Some(v), Some(w));
                        }
                        a.next();
                        b.next();
                    }
                },
            }
        }
    }
}

/// Whether two runs are one allocation (their types may differ only when they are not).
fn same_allocation<A, B>(a: &Arc<Vec<A>>, b: &Arc<Vec<B>>) -> bool {
    std::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(b))
}

/// A position in a map's runs.
struct Cursor<'a, K, V> {
    runs: &'a [Arc<Vec<(K, V)>>],
    run: usize,
    at: usize,
}

impl<'a, K, V> Cursor<'a, K, V> {
    fn new(runs: &'a [Arc<Vec<(K, V)>>]) -> Self {
        Cursor { runs, run: 0, at: 0 }
    }

    /// The current run, when the cursor is at its start.
    fn whole_run(&self) -> Option<&'a Arc<Vec<(K, V)>>> {
        self.runs.get(self.run).filter(|_| self.at == 0)
    }

    fn skip_run(&mut self) {
        self.run += 1;
        self.at = 0;
    }

    fn peek(&self) -> Option<(&'a K, &'a V)> {
        self.runs.get(self.run).map(|run| {
            let (k, v) = &run[self.at];
            (k, v)
        })
    }

    fn next(&mut self) {
        self.at += 1;
        if self.at == self.runs[self.run].len() {
            self.skip_run();
        }
    }
}

pub struct Iter<'a, K, V> {
    runs: std::slice::Iter<'a, Arc<Vec<(K, V)>>>,
    run: std::slice::Iter<'a, (K, V)>,
    len: usize,
}

impl<'a, K, V> Iterator for Iter<'a, K, V> {
    type Item = (&'a K, &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some((k, v)) = self.run.next() {
                self.len -= 1;
                return Some((k, v));
            }
            self.run = self.runs.next()?.iter();
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.len, Some(self.len))
    }
}

impl<K, V> ExactSizeIterator for Iter<'_, K, V> {}

impl<'a, K: Ord, V> IntoIterator for &'a SharedMap<K, V> {
    type Item = (&'a K, &'a V);
    type IntoIter = Iter<'a, K, V>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl<K: Ord, V> FromIterator<(K, V)> for SharedMap<K, V> {
    /// As [`std::collections::BTreeMap`]: of equal keys, the last one's value stays.
    fn from_iter<I: IntoIterator<Item = (K, V)>>(entries: I) -> Self {
        let mut entries: Vec<(K, V)> = entries.into_iter().collect();
        if !entries.is_sorted_by(|a, b| a.0 < b.0) {
            // Stable: equal keys keep their order, and the last of them is kept below.
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            let mut deduped: Vec<(K, V)> = Vec::with_capacity(entries.len());
            for entry in entries {
                match deduped.last_mut() {
                    Some(last) if last.0 == entry.0 => *last = entry,
                    _ => deduped.push(entry),
                }
            }
            entries = deduped;
        }
        let len = entries.len();
        let mut runs = Vec::with_capacity(len.div_ceil(RUN));
        let mut rest = entries.into_iter();
        loop {
            let run: Vec<(K, V)> = rest.by_ref().take(RUN).collect();
            if run.is_empty() {
                break;
            }
            runs.push(Arc::new(run));
        }
        SharedMap { runs, len }
    }
}

impl<K, Q, V> std::ops::Index<&Q> for SharedMap<K, V>
where
    K: Ord + Borrow<Q>,
    Q: Ord + ?Sized,
{
    type Output = V;

    /// # Panics
    /// When `key` is not in the map, as [`std::collections::BTreeMap`]'s.
    fn index(&self, key: &Q) -> &V {
        self.get(key).expect("no entry found for key")
    }
}

impl<K: Ord, V: PartialEq> PartialEq for SharedMap<K, V> {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.iter().eq(other.iter())
    }
}

impl<K: std::fmt::Debug, V: std::fmt::Debug> std::fmt::Debug for SharedMap<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.runs.iter().flat_map(|run| run.iter().map(|(k, v)| (k, v))))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    use crate::xds::served::tests::Rng;

    fn check(map: &SharedMap<String, u64>, model: &BTreeMap<String, u64>) {
        assert_eq!(map.len(), model.len());
        assert!(map.iter().eq(model.iter()));
        assert_eq!(map.iter().len(), model.len());
        for run in &map.runs {
            assert!(!run.is_empty() && run.len() <= MAX_RUN);
            assert!(run.windows(2).all(|w| w[0].0 < w[1].0));
        }
        assert!(map.runs.windows(2).all(|w| w[0].last().unwrap().0 < w[1][0].0));
    }

    /// Random inserts and removals on a map and its older copies agree with `BTreeMap`s, the
    /// copies are not changed by later changes, and `diff` between any two versions is exactly
    /// the keys whose presence or value differ.
    #[test]
    fn behaves_as_a_btreemap_and_copies_stay_as_they_were() {
        for seed in [1u64, 0x5eed, 0xdead_beef] {
            let mut rng = Rng(seed);
            let initial: BTreeMap<String, u64> =
                (0..rng.below(600)).map(|i| (format!("k{:05}", i * 3), i)).collect();
            let mut map: SharedMap<String, u64> = initial.clone().into_iter().collect();
            let mut model = initial;
            let mut versions = vec![(map.clone(), model.clone())];
            for step in 0..400 {
                for _ in 0..rng.below(if step % 50 == 0 { 400 } else { 8 }) {
                    let key = format!("k{:05}", rng.below(2000));
                    if rng.below(3) == 0 {
                        assert_eq!(map.remove(key.as_str()), model.remove(&key));
                    } else {
                        let value = rng.below(4);
                        assert_eq!(map.insert(key.clone(), value), model.insert(key, value));
                    }
                }
                let probe = format!("k{:05}", rng.below(2000));
                assert_eq!(map.get(probe.as_str()), model.get(&probe));
                assert_eq!(map.contains_key(probe.as_str()), model.contains_key(&probe));
                check(&map, &model);
                versions.push((map.clone(), model.clone()));
            }
            for _ in 0..200 {
                let (a, ma) = &versions[rng.below(versions.len() as u64) as usize];
                let (b, mb) = &versions[rng.below(versions.len() as u64) as usize];
                check(a, ma);
                let mut got = Vec::new();
                a.diff(b, |x, y| x == y, |k, x, y| got.push((k.clone(), x.copied(), y.copied())));
                let keys: std::collections::BTreeSet<&String> =
                    ma.keys().chain(mb.keys()).collect();
                let expected: Vec<(String, Option<u64>, Option<u64>)> = keys
                    .into_iter()
                    .map(|k| (k.clone(), ma.get(k).copied(), mb.get(k).copied()))
                    .filter(|(_, x, y)| x != y)
                    .collect();
                assert_eq!(got, expected);
            }
        }
    }

    #[test]
    fn from_iter_keeps_the_last_of_equal_keys() {
        let map: SharedMap<&str, u32> = [("b", 1), ("a", 2), ("b", 3)].into_iter().collect();
        assert_eq!(map.iter().collect::<Vec<_>>(), [(&"a", &2), (&"b", &3)]);
    }

    /// A change to a copy of a large map copies one run, and `diff` visits only that run's
    /// entries (plus one comparison per shared run).
    #[test]
    fn a_change_to_a_copy_shares_every_other_run() {
        let map: SharedMap<u32, u32> = (0..100_000).map(|i| (i * 2, i)).collect();
        let mut next = map.clone();
        next.insert(50_001, 7);
        next.remove(&80_000);
        let shared =
            map.runs.iter().filter(|r| next.runs.iter().any(|s| Arc::ptr_eq(r, s))).count();
        assert!(shared >= map.runs.len() - 2, "{shared} of {}", map.runs.len());
        let mut compared = 0;
        let mut got = Vec::new();
        map.diff(
            &next,
            |a, b| {
                compared += 1;
                a == b
            },
            |k, _, _| got.push(*k),
        );
        assert_eq!(got, [50_001, 80_000]);
        assert!(compared <= 3 * MAX_RUN, "{compared} values compared");
    }
}
