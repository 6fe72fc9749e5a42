//! A listing of names (tags, repositories) as the database hands it over: one string, the
//! names joined by commas (neither kind of name can hold one), in byte order. A listing of
//! 100,000 names is then one row and one allocation, and its JSON is written in one pass,
//! with no per-name work between the database and the socket.

use std::fmt::Write;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Names {
    joined: String,
    len: usize,
}

impl Names {
    /// From the database's `string_agg(name, ',')`. The order is checked, not trusted: an
    /// aggregate over a sorted subquery keeps its order in practice, not by any guarantee, and
    /// a listing out of order would break `last` pagination. Out of order, it is sorted here.
    pub(super) fn from_joined(joined: Option<String>) -> Names {
        let joined = joined.unwrap_or_default();
        if joined.is_empty() {
            return Names::default();
        }
        let mut len = 1;
        let mut sorted = true;
        let mut prev: Option<&str> = None;
        for name in joined.split(',') {
            if let Some(p) = prev {
                len += 1;
                sorted &= p.as_bytes() < name.as_bytes();
            }
            prev = Some(name);
        }
        if sorted {
            return Names { joined, len };
        }
        let mut names: Vec<&str> = joined.split(',').collect();
        names.sort_unstable();
        names.dedup();
        Names::from_sorted(names)
    }

    /// From names already in byte order.
    pub fn from_sorted<S: AsRef<str>>(names: impl IntoIterator<Item = S>) -> Names {
        let mut out = Names::default();
        for n in names {
            if out.len > 0 {
                out.joined.push(',');
            }
            out.joined.push_str(n.as_ref());
            out.len += 1;
        }
        out
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.joined.split(',').filter(|_| self.len > 0)
    }

    pub fn last(&self) -> Option<&str> {
        (self.len > 0).then(|| self.joined.rsplit(',').next().unwrap_or_default())
    }

    /// Keeps the first `n` names.
    pub fn truncate(&mut self, n: usize) {
        if n >= self.len {
            return;
        }
        if n == 0 {
            *self = Names::default();
            return;
        }
        let cut = self
            .joined
            .match_indices(',')
            .nth(n - 1)
            .map_or(self.joined.len(), |(i, _)| i);
        self.joined.truncate(cut);
        self.len = n;
    }

    pub fn to_vec(&self) -> Vec<String> {
        self.iter().map(str::to_string).collect()
    }

    /// Appends the names as a JSON array of strings.
    pub fn write_json_array(&self, out: &mut String) {
        out.push('[');
        // Valid names need no escaping; anything else goes through the JSON encoder.
        let plain = !self
            .joined
            .bytes()
            .any(|b| b == b'"' || b == b'\\' || b < 0x20);
        if plain {
            if self.len > 0 {
                out.reserve(self.joined.len() + 2 * self.len + 1);
                out.push('"');
                for (i, part) in self.joined.split(',').enumerate() {
                    if i > 0 {
                        out.push_str("\",\"");
                    }
                    out.push_str(part);
                }
                out.push('"');
            }
        } else {
            for (i, name) in self.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(out, "{}", serde_json::Value::from(name));
            }
        }
        out.push(']');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(n: &Names) -> serde_json::Value {
        let mut s = String::new();
        n.write_json_array(&mut s);
        serde_json::from_str(&s).unwrap()
    }

    #[test]
    fn joined_names_list_truncate_and_serialise() {
        let mut n = Names::from_joined(Some("a,b,c.1,d-2".into()));
        assert_eq!(n.len(), 4);
        assert_eq!(n.last(), Some("d-2"));
        assert_eq!(json(&n), serde_json::json!(["a", "b", "c.1", "d-2"]));
        n.truncate(2);
        assert_eq!((n.len(), n.last()), (2, Some("b")));
        assert_eq!(n.to_vec(), vec!["a", "b"]);
        n.truncate(0);
        assert!(n.is_empty());
        assert_eq!(json(&n), serde_json::json!([]));
        assert_eq!(n.iter().count(), 0);
        let empty = Names::from_joined(None);
        assert_eq!((empty.len(), empty.last()), (0, None));
        let one = Names::from_joined(Some("only".into()));
        assert_eq!((one.len(), one.last()), (1, Some("only")));
        assert_eq!(json(&one), serde_json::json!(["only"]));
    }

    #[test]
    fn out_of_order_input_is_sorted_in_byte_order() {
        let n = Names::from_joined(Some("b,a,B,c,a".into()));
        assert_eq!(n.to_vec(), vec!["B", "a", "b", "c"]);
        assert_eq!(n.len(), 4);
    }

    #[test]
    fn unusual_characters_are_escaped() {
        let n = Names::from_sorted(["a\"b", "c\\d"]);
        assert_eq!(json(&n), serde_json::json!(["a\"b", "c\\d"]));
    }
}
