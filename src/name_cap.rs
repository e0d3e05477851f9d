//! A bound on the distinct client-chosen names (application_name, process command lines) that
//! key long-lived maps and metric series: the first `MAX_DISTINCT_NAMES` distinct names keep
//! their own entry for the life of the process; later ones are folded into `other`.

use parking_lot::Mutex;
use std::collections::HashSet;

/// Most distinct names one `NameCap` admits (application names in SHOW LEAKS_SUMMARY and the
/// metrics' `application_name` label; origins in SHOW LEAKS_SUMMARY).
pub const MAX_DISTINCT_NAMES: usize = 100;

/// The name every name past the cap is reported under.
pub const OTHER: &str = "other";

/// The names admitted so far. Clients choose their names freely, so anything keyed by them
/// (history maps, Prometheus series that live as long as the process) must go through one of
/// these to stay bounded.
#[derive(Debug)]
pub struct NameCap {
    cap: usize,
    admitted: Mutex<HashSet<String>>,
}

impl Default for NameCap {
    fn default() -> Self {
        NameCap::new(MAX_DISTINCT_NAMES)
    }
}

impl NameCap {
    /// A cap admitting at most `cap` distinct names.
    pub fn new(cap: usize) -> NameCap {
        NameCap {
            cap,
            admitted: Mutex::new(HashSet::new()),
        }
    }

    /// The name to record `name` under: itself when admitted (admitting it while there is
    /// room), else `other`.
    pub fn fold(&self, name: &str) -> String {
        let mut admitted = self.admitted.lock();
        if admitted.contains(name) {
            return name.to_string();
        }
        if admitted.len() < self.cap && name != OTHER {
            admitted.insert(name.to_string());
            return name.to_string();
        }
        OTHER.to_string()
    }

    /// The name `name` is reported under, without admitting it.
    pub fn folded(&self, name: &str) -> String {
        if self.admitted.lock().contains(name) {
            name.to_string()
        } else {
            OTHER.to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_past_the_cap_fold_into_other_and_admitted_ones_stay() {
        let cap = NameCap::new(2);
        assert_eq!(cap.fold("a"), "a");
        assert_eq!(cap.folded("b"), OTHER);
        assert_eq!(cap.fold("b"), "b");
        assert_eq!(cap.fold("c"), OTHER);
        assert_eq!(cap.fold("a"), "a");
        assert_eq!(cap.folded("b"), "b");
        assert_eq!(cap.folded("c"), OTHER);
    }
}
