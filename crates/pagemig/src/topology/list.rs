//! Sets of node or CPU numbers in the list syntax of numactl and sysfs (`"0-3,7"`).

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Highest id accepted in a list: far above any machine's CPU count, low enough that a typo such as
/// `0-4000000000` is refused instead of allocating a huge set.
pub const MAX_ID: u32 = 1 << 20;

/// An ordered set of small ids (NUMA nodes or CPUs).
///
/// Parses and prints the numactl list syntax: comma-separated ids and inclusive ranges.
///
/// ```
/// use pagemig::topology::IdSet;
/// let set: IdSet = "0-3,7".parse().unwrap();
/// assert_eq!(set.iter().collect::<Vec<_>>(), [0, 1, 2, 3, 7]);
/// assert_eq!(set.to_string(), "0-3,7");
/// ```
#[derive(Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct IdSet(BTreeSet<u32>);

/// A set of NUMA node ids.
pub type NodeSet = IdSet;
/// A set of CPU ids.
pub type CpuSet = IdSet;

/// A list that does not follow the `"0-3,7"` syntax; says which part is wrong and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad list {input:?}: {reason}{}", in_part(part))]
pub struct ListError {
    /// The whole text that was parsed.
    pub input: String,
    /// The comma-separated part that is wrong.
    pub part: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// ` in "PART"`, or nothing for an empty part (`"0,,1"`: the reason says it all).
fn in_part(part: &str) -> String {
    if part.is_empty() {
        String::new()
    } else {
        format!(" in {part:?}")
    }
}

impl IdSet {
    /// The empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `id`; returns whether it was new.
    pub fn insert(&mut self, id: u32) -> bool {
        self.0.insert(id)
    }

    /// Whether `id` is in the set.
    pub fn contains(&self, id: u32) -> bool {
        self.0.contains(&id)
    }

    /// Number of ids.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the set has no id.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Ids in increasing order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = u32> + '_ {
        self.0.iter().copied()
    }

    /// Largest id, if any.
    pub fn max(&self) -> Option<u32> {
        self.0.last().copied()
    }

    /// Ids in both sets.
    pub fn intersection(&self, other: &IdSet) -> IdSet {
        IdSet(self.0.intersection(&other.0).copied().collect())
    }

    /// Ids in `self` that are not in `other`.
    pub fn difference(&self, other: &IdSet) -> IdSet {
        IdSet(self.0.difference(&other.0).copied().collect())
    }

    /// Whether every id of `self` is in `other`.
    pub fn is_subset(&self, other: &IdSet) -> bool {
        self.0.is_subset(&other.0)
    }
}

impl FromIterator<u32> for IdSet {
    fn from_iter<I: IntoIterator<Item = u32>>(iter: I) -> Self {
        IdSet(iter.into_iter().collect())
    }
}

impl FromStr for IdSet {
    type Err = ListError;

    /// Parses `"0-3,7"`. Whitespace around parts and an empty text (an empty set, as sysfs
    /// writes for a node without CPUs) are accepted.
    fn from_str(input: &str) -> Result<Self, ListError> {
        let mut set = IdSet::new();
        let trimmed = input.trim();
        if trimmed.is_empty() {
            return Ok(set);
        }
        for part in trimmed.split(',').map(str::trim) {
            let err = |reason| ListError {
                input: input.to_owned(),
                part: part.to_owned(),
                reason,
            };
            if part.is_empty() {
                return Err(err("empty item (two commas in a row, or one at an end)"));
            }
            let (lo, hi) = part.split_once('-').unwrap_or((part, part));
            let (lo, hi) = (parse_id(lo).map_err(err)?, parse_id(hi).map_err(err)?);
            if lo > hi {
                return Err(err("range goes backwards"));
            }
            set.0.extend(lo..=hi);
        }
        Ok(set)
    }
}

fn parse_id(text: &str) -> Result<u32, &'static str> {
    let text = text.trim();
    if text.is_empty() {
        return Err("missing number");
    }
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err("not a number");
    }
    match text.parse::<u32>() {
        Ok(id) if id <= MAX_ID => Ok(id),
        _ => Err("number too large"),
    }
}

impl fmt::Display for IdSet {
    /// Writes the shortest list form: `0-3,7`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ids = self.iter().peekable();
        let mut comma = "";
        while let Some(lo) = ids.next() {
            let mut hi = lo;
            while ids.next_if_eq(&(hi + 1)).is_some() {
                hi += 1;
            }
            f.write_str(std::mem::replace(&mut comma, ","))?;
            if lo == hi {
                write!(f, "{lo}")?;
            } else {
                write!(f, "{lo}-{hi}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for IdSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdSet({self})")
    }
}

impl From<IdSet> for String {
    fn from(set: IdSet) -> String {
        set.to_string()
    }
}

impl TryFrom<String> for IdSet {
    type Error = ListError;
    fn try_from(text: String) -> Result<Self, ListError> {
        text.parse()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_sysfs_and_numactl_forms() {
        let s: IdSet = "0-3,7, 9-10".parse().unwrap();
        assert_eq!(s.iter().collect::<Vec<_>>(), [0, 1, 2, 3, 7, 9, 10]);
        assert_eq!(s.to_string(), "0-3,7,9-10");
        assert!("".parse::<IdSet>().unwrap().is_empty());
        assert!("\n".parse::<IdSet>().unwrap().is_empty());
        assert_eq!("5".parse::<IdSet>().unwrap().to_string(), "5");
    }

    #[test]
    fn errors_point_at_the_bad_part() {
        for (input, part, reason) in [
            ("0-3,x,7", "x", "not a number"),
            ("0,5-2", "5-2", "range goes backwards"),
            ("3-", "3-", "missing number"),
            ("-1", "-1", "missing number"),
            ("0-99999999999", "0-99999999999", "number too large"),
        ] {
            let e = input.parse::<IdSet>().unwrap_err();
            assert_eq!((e.part.as_str(), e.reason), (part, reason), "{input}");
            assert!(e.to_string().contains(&format!("{part:?}")), "{e}");
        }
        let empty = "1,,2".parse::<IdSet>().unwrap_err();
        assert_eq!(
            empty.to_string(),
            "bad list \"1,,2\": empty item (two commas in a row, or one at an end)"
        );
    }

    proptest! {
        #[test]
        fn display_round_trips(ids in proptest::collection::btree_set(0u32..300, 0..40)) {
            let set: IdSet = ids.iter().copied().collect();
            let back: IdSet = set.to_string().parse().unwrap();
            prop_assert_eq!(back, set);
        }
    }
}
