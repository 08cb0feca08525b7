//! Field-level grants: which parts of a query's response a consumer may
//! receive (data minimisation, Decree 13/2023 art. 3).
//!
//! A grant may name the response fields it releases as JSON pointers
//! (RFC 6901) into the response. Arrays are transparent: `/parcels/area_m2`
//! names the area of every parcel, since a grant cannot know in advance how
//! many items an answer holds. [`FieldSet::release`] keeps exactly the
//! named subtrees of an answer and reports which of them it found; the hub
//! does this before it countersigns and answers, so that what the consumer
//! never had the right to see is neither sent nor logged.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Why a field pointer or a field list was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    #[error(
        "field {0:?} is not a JSON pointer to a field (it must start with '/', name no empty \
         segment, and escape only as ~0 or ~1)"
    )]
    Syntax(String),
    #[error("a field list must name at least one field")]
    Empty,
    #[error("field {field:?} is not in the response schema {schema}")]
    NotInSchema { field: String, schema: String },
}

/// A JSON pointer to a field of a response, e.g. `/citizen/full_name`.
/// Shared, not copied, when cloned: every entry draft of a minimised
/// exchange carries its grant's pointers, and drafts are cloned on the
/// way to the log.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct FieldPointer(Arc<Pointer>);

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Pointer {
    text: String,
    segments: Vec<String>,
}

impl Serialize for FieldPointer {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0.text)
    }
}

impl FieldPointer {
    pub fn parse(text: &str) -> Result<Self, FieldError> {
        let bad = || FieldError::Syntax(text.to_owned());
        let rest = text.strip_prefix('/').ok_or_else(bad)?;
        let segments = rest
            .split('/')
            .map(|raw| {
                if raw.is_empty() {
                    return Err(bad());
                }
                let mut out = String::with_capacity(raw.len());
                let mut chars = raw.chars();
                while let Some(c) = chars.next() {
                    match c {
                        '~' => match chars.next() {
                            Some('0') => out.push('~'),
                            Some('1') => out.push('/'),
                            _ => return Err(bad()),
                        },
                        c if c.is_control() => return Err(bad()),
                        c => out.push(c),
                    }
                }
                Ok(out)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self(Arc::new(Pointer {
            text: text.to_owned(),
            segments,
        })))
    }

    pub fn as_str(&self) -> &str {
        &self.0.text
    }

    /// The unescaped property names, outermost first.
    pub fn segments(&self) -> &[String] {
        &self.0.segments
    }
}

impl fmt::Display for FieldPointer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl TryFrom<String> for FieldPointer {
    type Error = FieldError;
    fn try_from(s: String) -> Result<Self, FieldError> {
        Self::parse(&s)
    }
}

impl std::str::FromStr for FieldPointer {
    type Err = FieldError;
    fn from_str(s: &str) -> Result<Self, FieldError> {
        Self::parse(s)
    }
}

/// The fields a grant releases: a non-empty set of pointers.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "Vec<FieldPointer>")]
pub struct FieldSet(BTreeSet<FieldPointer>);

impl Serialize for FieldSet {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(&self.0)
    }
}

impl TryFrom<Vec<FieldPointer>> for FieldSet {
    type Error = FieldError;
    fn try_from(fields: Vec<FieldPointer>) -> Result<Self, FieldError> {
        Self::new(fields)
    }
}

/// A tree of property names; a node that ends a pointer keeps its whole subtree.
#[derive(Default)]
struct Tree<'a> {
    ends: Option<&'a FieldPointer>,
    children: BTreeMap<&'a str, Tree<'a>>,
}

impl FieldSet {
    pub fn new(fields: impl IntoIterator<Item = FieldPointer>) -> Result<Self, FieldError> {
        let set: BTreeSet<_> = fields.into_iter().collect();
        if set.is_empty() {
            return Err(FieldError::Empty);
        }
        Ok(Self(set))
    }

    /// Parse a comma-separated list (`/found,/citizen/full_name`).
    pub fn parse_list(text: &str) -> Result<Self, FieldError> {
        Self::new(
            text.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(FieldPointer::parse)
                .collect::<Result<Vec<_>, _>>()?,
        )
    }

    pub fn iter(&self) -> impl Iterator<Item = &FieldPointer> {
        self.0.iter()
    }

    pub fn to_vec(&self) -> Vec<FieldPointer> {
        self.0.iter().cloned().collect()
    }

    /// The comma-separated form [`FieldSet::parse_list`] reads.
    pub fn to_list(&self) -> String {
        self.0
            .iter()
            .map(FieldPointer::as_str)
            .collect::<Vec<_>>()
            .join(",")
    }

    fn tree(&self) -> Tree<'_> {
        let mut root = Tree::default();
        for pointer in &self.0 {
            let mut node = &mut root;
            for segment in pointer.segments() {
                node = node.children.entry(segment.as_str()).or_default();
            }
            node.ends = Some(pointer);
        }
        root
    }

    /// The part of `answer` these fields release, and the pointers that
    /// found something in it (the fields actually released).
    pub fn release(&self, answer: &Value) -> (Value, Vec<FieldPointer>) {
        let tree = self.tree();
        let mut found = BTreeSet::new();
        let kept = keep(answer, &tree, &mut found).unwrap_or_else(|| Value::Object(Map::new()));
        (kept, found.into_iter().cloned().collect())
    }
}

/// Whether `body` holds nothing but the fields `released` (an auditor's
/// check of a minimised response: its entry lists what it released).
pub fn holds_only(body: &Value, released: &[FieldPointer]) -> bool {
    match FieldSet::new(released.iter().cloned()) {
        Ok(set) => set.release(body).0 == *body,
        Err(_) => *body == Value::Object(Map::new()),
    }
}

/// What of `value` the tree keeps; `None` when nothing.
fn keep<'a>(
    value: &Value,
    node: &Tree<'a>,
    found: &mut BTreeSet<&'a FieldPointer>,
) -> Option<Value> {
    if let Some(pointer) = node.ends {
        found.insert(pointer);
        return Some(value.clone());
    }
    match value {
        Value::Object(map) => {
            let kept: Map<String, Value> = node
                .children
                .iter()
                .filter_map(|(name, child)| {
                    let v = map.get(*name)?;
                    Some(((*name).to_owned(), keep(v, child, found)?))
                })
                .collect();
            (!kept.is_empty()).then_some(Value::Object(kept))
        }
        Value::Array(items) => {
            let kept: Vec<Value> = items
                .iter()
                .filter_map(|item| keep(item, node, found))
                .collect();
            (!kept.is_empty()).then_some(Value::Array(kept))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn set(list: &str) -> FieldSet {
        FieldSet::parse_list(list).unwrap()
    }

    #[test]
    fn pointers_parse_rfc6901_escapes_and_refuse_the_rest() {
        let p = FieldPointer::parse("/a~1b/c~0d").unwrap();
        assert_eq!(p.segments(), ["a/b", "c~d"]);
        for bad in ["", "/", "a/b", "/a//b", "/a~2", "/a~", "/a\n"] {
            assert!(FieldPointer::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(FieldSet::parse_list(" , "), Err(FieldError::Empty));
    }

    #[test]
    fn release_keeps_named_subtrees_only() {
        let answer = json!({
            "found": true,
            "citizen": {"full_name": "A", "ethnicity": "01", "current_residence": {"x": 1}}
        });
        let (kept, found) =
            set("/found,/citizen/full_name,/citizen/current_residence,/citizen/religion")
                .release(&answer);
        assert_eq!(
            kept,
            json!({"found": true, "citizen": {"full_name": "A", "current_residence": {"x": 1}}})
        );
        let found: Vec<_> = found.iter().map(FieldPointer::as_str).collect();
        assert_eq!(
            found,
            ["/citizen/current_residence", "/citizen/full_name", "/found"]
        );
    }

    #[test]
    fn arrays_are_transparent_and_empty_parents_vanish() {
        let answer =
            json!({"parcels": [{"area": "1", "holders": [{"id": "x"}]}, {"holders": []}], "n": 2});
        let (kept, found) = set("/parcels/area").release(&answer);
        assert_eq!(kept, json!({"parcels": [{"area": "1"}]}));
        assert_eq!(found.len(), 1);
        let (kept, found) = set("/missing").release(&answer);
        assert_eq!(kept, json!({}));
        assert!(found.is_empty());
        assert!(holds_only(&json!({}), &found));
        assert!(holds_only(
            &json!({"parcels": [{"area": "1"}]}),
            &set("/parcels/area").to_vec()
        ));
        assert!(!holds_only(&answer, &set("/parcels/area").to_vec()));
    }

    #[test]
    fn a_field_set_round_trips_through_serde_and_refuses_bad_pointers() {
        let s = set("/b,/a,/x~1y~0z");
        let text = serde_json::to_string(&s).unwrap();
        assert_eq!(text, r#"["/a","/b","/x~1y~0z"]"#);
        let pointer = s.iter().last().unwrap();
        assert_eq!(pointer.segments(), ["x/y~z"]);
        assert_eq!(serde_json::to_value(pointer).unwrap(), "/x~1y~0z");
        assert_eq!(serde_json::from_str::<FieldSet>(&text).unwrap(), s);
        assert!(serde_json::from_str::<FieldSet>(r#"["a"]"#).is_err());
        assert!(serde_json::from_str::<FieldSet>("[]").is_err());
    }
}
