//! The field columns of one destination, looked up by key and by the previous row's key order.

use std::collections::HashMap;

/// The field columns of one destination (a table, a file's header), in order, with a lookup by
/// field key, for sinks that give every field key a column of its own.
///
/// Rows of one stream nearly always list their keys in the same order, so the columns also
/// remember which column the key at each position of the previous row went to:
/// [`at`](Self::at) then answers with one string comparison instead of a hash lookup, which
/// matters on the per-value path of a large batch.
///
/// ```
/// use flatsync_plugin_sdk::FieldColumns;
///
/// let mut columns = FieldColumns::from_names(vec!["email".to_owned()]);
/// for (position, key) in ["email", "name"].into_iter().enumerate() {
///     let column = match columns.at(position, key) {
///         Some(column) => column,
///         None => {
///             // A sink checks the key and widens its destination here.
///             let column = columns.get(key).unwrap_or_else(|| columns.push(key.to_owned()));
///             columns.remember_at(position, column);
///             column
///         }
///     };
///     assert_eq!(columns.name(column), key);
/// }
/// assert_eq!(columns.at(1, "name"), Some(1), "the next row in the same order");
/// assert_eq!(columns.at(1, "email"), None, "another order is looked up again");
/// ```
#[derive(Debug, Default, Clone)]
pub struct FieldColumns {
    names: Vec<String>,
    index: HashMap<String, usize>,
    /// Column of the key at each position of the previous row; `usize::MAX` where unknown.
    by_position: Vec<usize>,
}

impl FieldColumns {
    /// No columns yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The columns `names`, in that order (a destination that already exists). Names should
    /// be distinct; of two equal ones, [`get`](Self::get) finds the later.
    pub fn from_names(names: Vec<String>) -> Self {
        let index = names
            .iter()
            .enumerate()
            .map(|(column, name)| (name.clone(), column))
            .collect();
        Self {
            names,
            index,
            by_position: Vec::new(),
        }
    }

    /// How many columns there are.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether there are no columns.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The column names, in order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The name of column `column`. Panics when there is no such column.
    pub fn name(&self, column: usize) -> &str {
        &self.names[column]
    }

    /// The column named exactly `key`.
    pub fn get(&self, key: &str) -> Option<usize> {
        self.index.get(key).copied()
    }

    /// Adds column `name` at the end and returns it. The caller has checked that there is no
    /// column of that name yet ([`get`](Self::get)).
    pub fn push(&mut self, name: String) -> usize {
        let column = self.names.len();
        self.index.insert(name.clone(), column);
        self.names.push(name);
        column
    }

    /// The column the previous row's key at `position` went to, when that key was `key` too.
    /// `None` asks the caller to find (or add) the column and [`remember_at`](Self::remember_at).
    pub fn at(&self, position: usize, key: &str) -> Option<usize> {
        let column = *self.by_position.get(position)?;
        self.names
            .get(column)
            .is_some_and(|name| name == key)
            .then_some(column)
    }

    /// Remembers that the key at `position` of the current row went to `column`.
    pub fn remember_at(&mut self, position: usize, column: usize) {
        if self.by_position.len() <= position {
            self.by_position.resize(position + 1, usize::MAX);
        }
        self.by_position[position] = column;
    }

    /// Forgets every column from `len` on (those a rolled-back write added).
    pub fn truncate(&mut self, len: usize) {
        for name in self.names.drain(len.min(self.names.len())..) {
            self.index.remove(&name);
        }
        self.by_position.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_found_by_name_and_by_its_position_in_the_previous_row() {
        let mut columns = FieldColumns::from_names(vec!["a".to_owned(), "b".to_owned()]);
        assert_eq!(
            (columns.len(), columns.get("b"), columns.get("c")),
            (2, Some(1), None)
        );
        assert_eq!(columns.at(0, "b"), None, "nothing remembered yet");
        columns.remember_at(3, 1);
        assert_eq!(columns.at(3, "b"), Some(1));
        assert_eq!(columns.at(3, "a"), None, "another key at that position");
        assert_eq!(columns.at(0, "b"), None, "positions before stay unknown");

        assert_eq!(columns.push("c".to_owned()), 2);
        assert_eq!(columns.get("c"), Some(2));
        assert_eq!(columns.names(), ["a", "b", "c"]);
        columns.remember_at(0, 2);
        assert_eq!(columns.at(0, "c"), Some(2));
    }

    #[test]
    fn truncating_forgets_the_columns_and_the_row_order() {
        let mut columns = FieldColumns::new();
        assert!(columns.is_empty());
        for name in ["a", "b", "c"] {
            let column = columns.push(name.to_owned());
            columns.remember_at(column, column);
        }
        columns.truncate(1);
        assert_eq!(columns.names(), ["a"]);
        assert_eq!((columns.get("b"), columns.get("c")), (None, None));
        assert_eq!(columns.at(0, "a"), None, "the row order is forgotten too");
        // A column added again gets the next index, not a stale one.
        assert_eq!(columns.push("c".to_owned()), 1);
        assert_eq!(columns.get("c"), Some(1));
        columns.truncate(5);
        assert_eq!(columns.len(), 2);
    }
}
