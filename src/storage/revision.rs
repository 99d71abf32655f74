//! Revision numbers.

/// A point in the store's history: the transaction (`main`) and the
/// operation within it (`sub`). Orders by `main`, then `sub`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Revision {
    /// Revision of the write transaction; what clients see as "revision".
    pub main: i64,
    /// Index of the put/delete inside its transaction, from 0.
    pub sub: i64,
}

impl Revision {
    /// Builds a revision from its parts.
    pub fn new(main: i64, sub: i64) -> Self {
        Revision { main, sub }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_by_main_then_sub() {
        let mut revs = vec![
            Revision::new(3, 0),
            Revision::new(2, 1),
            Revision::new(2, 0),
            Revision::new(10, 0),
        ];
        revs.sort();
        assert_eq!(
            revs,
            vec![
                Revision::new(2, 0),
                Revision::new(2, 1),
                Revision::new(3, 0),
                Revision::new(10, 0)
            ]
        );
    }
}
