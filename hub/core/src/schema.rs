//! The schema catalog: every JSON Schema (2020-12) document the hub knows,
//! compiled once, resolved locally only, with `format` assertions on and the
//! named semantic checks of [`crate::semantic`] available as `x-hub-check`.
//!
//! A document's catalog id is its path under `schemas/` without `.json`
//! (`services/citizen.lookup/v1/request`); its `$id` is [`SCHEMA_BASE`] plus
//! that path plus `.json`.

use std::collections::BTreeMap;

use jsonschema::paths::Location;
use jsonschema::{Draft, Keyword, ValidationError, Validator};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use unicode_normalization::is_nfc;

use crate::fields::{FieldError, FieldSet};
use crate::semantic::Check;

/// The base of every schema's `$id`. The `.invalid` TLD never resolves, so
/// nothing can be fetched from it even by mistake.
pub const SCHEMA_BASE: &str = "https://schemas.hub.invalid/";

/// One reason an instance failed validation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    /// JSON pointer into the validated instance.
    pub pointer: String,
    /// The schema keyword that failed (`x-hub-check:<name>` for semantic checks).
    pub keyword: String,
    /// JSON pointer into the schema, where the failed keyword stands.
    pub schema_path: String,
    pub message: String,
}

/// The catalog could not be built.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("schema {id}: {message}")]
    Invalid { id: String, message: String },
    #[error("schema {id}: $id must be {expected}")]
    WrongId { id: String, expected: String },
}

/// All schema documents, with a compiled validator for each.
pub struct Catalog {
    documents: BTreeMap<String, Value>,
    validators: BTreeMap<String, Validator>,
    /// Per schema, the property paths that hold a personal ID.
    subject_paths: BTreeMap<String, Vec<Vec<String>>>,
}

/// The definition every personal ID in the schemas refers to: what makes a
/// value a data subject's identifier for the subject index.
pub const PERSONAL_ID_REF: &str = "https://schemas.hub.invalid/common/v1.json#/$defs/personal_id";

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog")
            .field("schemas", &self.documents.keys().collect::<Vec<_>>())
            .finish()
    }
}

struct SemanticKeyword(Check);

impl<'i> Keyword<'i> for SemanticKeyword {
    fn validate(&self, instance: &'i Value) -> Result<(), ValidationError<'i>> {
        // The check's name leads the message, so a violation can name it.
        self.0
            .run(instance)
            .map_err(|m| ValidationError::custom(format!("{}: {m}", self.0.name())))
    }
    fn is_valid(&self, instance: &'i Value) -> bool {
        self.0.run(instance).is_ok()
    }
}

fn semantic_keyword_factory<'a>(
    _parent: &'a Map<String, Value>,
    value: &'a Value,
    _path: Location,
) -> Result<Box<dyn for<'i> Keyword<'i>>, ValidationError<'a>> {
    let check = value.as_str().and_then(Check::from_name).ok_or_else(|| {
        ValidationError::custom(format!(
            "x-hub-check must be one of {:?}",
            crate::semantic::CHECK_NAMES
        ))
    })?;
    Ok(Box::new(SemanticKeyword(check)))
}

impl Catalog {
    /// Compile every document. `documents` maps catalog ids to schema JSON.
    pub fn build(documents: BTreeMap<String, Value>) -> Result<Self, CatalogError> {
        for (id, doc) in &documents {
            let expected = format!("{SCHEMA_BASE}{id}.json");
            if doc.get("$id").and_then(Value::as_str) != Some(expected.as_str()) {
                return Err(CatalogError::WrongId {
                    id: id.clone(),
                    expected,
                });
            }
        }
        let mut registry = jsonschema::Registry::new();
        for (id, doc) in &documents {
            registry = registry
                .add(format!("{SCHEMA_BASE}{id}.json"), doc.clone())
                .map_err(|e| CatalogError::Invalid {
                    id: id.clone(),
                    message: e.to_string(),
                })?;
        }
        let registry = registry.prepare().map_err(|e| CatalogError::Invalid {
            id: "(registry)".into(),
            message: e.to_string(),
        })?;
        let mut validators = BTreeMap::new();
        for (id, doc) in &documents {
            let validator = jsonschema::options()
                .with_draft(Draft::Draft202012)
                .with_registry(&registry)
                .offline()
                .should_validate_formats(true)
                .should_ignore_unknown_formats(false)
                .with_format("nfc", is_nfc)
                .with_keyword("x-hub-check", semantic_keyword_factory)
                .build(doc)
                .map_err(|e| CatalogError::Invalid {
                    id: id.clone(),
                    message: e.to_string(),
                })?;
            validators.insert(id.clone(), validator);
        }
        let mut catalog = Self {
            documents,
            validators,
            subject_paths: BTreeMap::new(),
        };
        catalog.subject_paths = catalog
            .documents
            .keys()
            .map(|id| {
                let mut paths: Vec<Vec<String>> = catalog
                    .property_paths(id)
                    .into_iter()
                    .filter(|(_, node)| {
                        node.get("$ref").and_then(Value::as_str) == Some(PERSONAL_ID_REF)
                    })
                    .map(|(path, _)| path)
                    .collect();
                paths.sort();
                paths.dedup();
                (id.clone(), paths)
            })
            .collect();
        Ok(catalog)
    }

    /// Parse `(catalog id, JSON text)` pairs and compile them.
    pub fn from_texts<'a>(
        texts: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, CatalogError> {
        let mut documents = BTreeMap::new();
        for (id, text) in texts {
            let doc: Value = serde_json::from_str(text).map_err(|e| CatalogError::Invalid {
                id: id.to_owned(),
                message: e.to_string(),
            })?;
            documents.insert(id.to_owned(), doc);
        }
        Self::build(documents)
    }

    /// The schemas shipped in the repository's `schemas/` folder, compiled in.
    pub fn builtin() -> Result<Self, CatalogError> {
        Self::from_texts(BUILTIN.iter().copied())
    }

    /// Validate `instance` against the schema `id`; every violation is returned.
    pub fn validate(&self, id: &str, instance: &Value) -> Result<(), SchemaRejection> {
        let validator = self
            .validators
            .get(id)
            .ok_or_else(|| SchemaRejection::UnknownSchema(id.to_owned()))?;
        if validator.is_valid(instance) {
            return Ok(());
        }
        let violations: Vec<Violation> = validator
            .iter_errors(instance)
            .map(|e| {
                let keyword = match e.kind() {
                    jsonschema::error::ValidationErrorKind::Custom { keyword, message } => {
                        let check = message.split_once(": ").map_or("", |(name, _)| name);
                        format!("{keyword}:{check}")
                    }
                    kind => kind.keyword().to_owned(),
                };
                Violation {
                    pointer: e.instance_path().to_string(),
                    keyword,
                    schema_path: e.schema_path().to_string(),
                    message: e.to_string(),
                }
            })
            .collect();
        Err(SchemaRejection::Invalid(violations))
    }

    /// The ids of every schema, sorted.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.documents.keys().map(String::as_str)
    }

    /// One schema document.
    pub fn get(&self, id: &str) -> Option<&Value> {
        self.documents.get(id)
    }

    /// Check that every field of `fields` names a property the schema `id`
    /// describes (through `$ref`, `allOf`/`anyOf`/`oneOf` and array `items`).
    pub fn check_fields(&self, id: &str, fields: &FieldSet) -> Result<(), FieldError> {
        let paths = self.property_paths(id);
        match fields.iter().find(|f| {
            !paths
                .iter()
                .any(|(path, _)| path.as_slice() == f.segments())
        }) {
            Some(missing) => Err(FieldError::NotInSchema {
                field: missing.to_string(),
                schema: id.to_owned(),
            }),
            None => Ok(()),
        }
    }

    /// The personal IDs in `instance` (valid against the schema `id`): the
    /// data subjects it touches, each once.
    pub fn subjects<'v>(&self, id: &str, instance: &'v Value) -> Vec<&'v str> {
        let mut found = Vec::new();
        for path in self.subject_paths.get(id).into_iter().flatten() {
            collect_at(instance, path, &mut found);
        }
        found.sort_unstable();
        found.dedup();
        found
    }

    /// Every property path the schema `id` describes, arrays being
    /// transparent (as in [`crate::fields`]), with the schema node found
    /// there before its `$ref` is followed. A path may appear more than
    /// once (one per `oneOf` branch, say).
    pub fn property_paths(&self, id: &str) -> Vec<(Vec<String>, &Value)> {
        let mut out = Vec::new();
        if let Some(doc) = self.documents.get(id) {
            self.walk(id, doc, &mut Vec::new(), 0, &mut out);
        }
        out
    }

    fn walk<'a>(
        &'a self,
        doc: &str,
        node: &'a Value,
        path: &mut Vec<String>,
        depth: u32,
        out: &mut Vec<(Vec<String>, &'a Value)>,
    ) {
        // The shipped schemas do not recurse; a bound keeps a recursive one finite.
        if depth > 32 {
            return;
        }
        out.push((path.clone(), node));
        if let Some((target_doc, target)) = node
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| self.resolve(doc, r))
        {
            self.walk(target_doc, target, path, depth + 1, out);
        }
        for keyword in ["allOf", "anyOf", "oneOf"] {
            for branch in node
                .get(keyword)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                self.walk(doc, branch, path, depth + 1, out);
            }
        }
        if let Some(items) = node.get("items") {
            self.walk(doc, items, path, depth + 1, out);
        }
        for (name, property) in node
            .get("properties")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            path.push(name.clone());
            self.walk(doc, property, path, depth + 1, out);
            path.pop();
        }
    }

    /// The document id and node a `$ref` met in document `doc` names.
    fn resolve<'a>(&'a self, doc: &str, reference: &str) -> Option<(&'a str, &'a Value)> {
        let (base, fragment) = reference.split_once('#').unwrap_or((reference, ""));
        let target_id = if base.is_empty() {
            doc
        } else {
            base.strip_prefix(SCHEMA_BASE)?.strip_suffix(".json")?
        };
        let (id, document) = self.documents.get_key_value(target_id)?;
        Some((id.as_str(), document.pointer(fragment)?))
    }
}

/// The strings at `path` in `value`, arrays being transparent.
fn collect_at<'v>(value: &'v Value, path: &[String], out: &mut Vec<&'v str>) {
    match (value, path.split_first()) {
        (Value::Array(items), _) => {
            for item in items {
                collect_at(item, path, out);
            }
        }
        (Value::String(s), None) => out.push(s),
        (Value::Object(map), Some((first, rest))) => {
            if let Some(v) = map.get(first) {
                collect_at(v, rest, out);
            }
        }
        _ => {}
    }
}

/// Why an instance was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaRejection {
    UnknownSchema(String),
    Invalid(Vec<Violation>),
}

include!(concat!(env!("OUT_DIR"), "/builtin_schemas.rs"));

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn builtin_catalog_compiles() {
        let c = Catalog::builtin().unwrap();
        assert!(c.ids().any(|i| i == "envelope/v1"));
        assert!(c.ids().any(|i| i == "services/citizen.lookup/v1/request"));
    }

    #[test]
    fn violations_name_pointer_and_keyword() {
        let c = Catalog::builtin().unwrap();
        let bad = json!({"personal_id": "12"});
        let Err(SchemaRejection::Invalid(v)) =
            c.validate("services/citizen.lookup/v1/request", &bad)
        else {
            panic!("expected a rejection");
        };
        assert!(
            v.iter()
                .any(|x| x.pointer == "/personal_id" && x.keyword == "pattern"),
            "{v:?}"
        );
    }

    #[test]
    fn semantic_checks_run_through_refs() {
        let c = Catalog::builtin().unwrap();
        let bad = json!({"personal_id": "999085012345"});
        let Err(SchemaRejection::Invalid(v)) =
            c.validate("services/citizen.lookup/v1/request", &bad)
        else {
            panic!("expected a rejection");
        };
        assert!(
            v.iter().any(|x| x.keyword.starts_with("x-hub-check")),
            "{v:?}"
        );
    }

    #[test]
    fn field_pointers_are_checked_against_the_response_schema() {
        let c = Catalog::builtin().unwrap();
        let id = "services/citizen.lookup/v1/response";
        let ok =
            FieldSet::parse_list("/found,/citizen/full_name,/citizen/current_residence/province")
                .unwrap();
        c.check_fields(id, &ok).unwrap();
        for bad in ["/citizen/religion", "/full_name", "/citizen/full_name/x"] {
            let fields = FieldSet::parse_list(bad).unwrap();
            assert!(
                matches!(
                    c.check_fields(id, &fields),
                    Err(FieldError::NotInSchema { .. })
                ),
                "{bad}"
            );
        }
        // Through array items.
        let parcels = FieldSet::parse_list("/parcels/area_m2,/parcels/uses/purpose").unwrap();
        c.check_fields("services/parcels.by_holder/v1/response", &parcels)
            .unwrap();
    }

    #[test]
    fn personal_ids_are_found_wherever_the_schema_puts_them() {
        let c = Catalog::builtin().unwrap();
        let lookup = json!({"personal_id": "001085012345"});
        assert_eq!(
            c.subjects("services/citizen.lookup/v1/request", &lookup),
            ["001085012345"]
        );
        // Inside arrays, once each.
        let enterprise = json!({"enterprise": {"legal_representatives": [
            {"personal_id": "079192000123"}, {"personal_id": "001085012345"}, {"personal_id": "079192000123"}
        ]}});
        assert_eq!(
            c.subjects("services/enterprise.registered/v1/event", &enterprise),
            ["001085012345", "079192000123"]
        );
        assert!(
            c.subjects("services/citizen.lookup/v1/request", &json!({}))
                .is_empty()
        );
    }

    #[test]
    fn names_must_be_nfc() {
        let c = Catalog::builtin().unwrap();
        // "Nguyễn" decomposed (NFD) is not accepted where a name is expected.
        let nfd: String = unicode_normalization::UnicodeNormalization::nfd("Nguyễn").collect();
        let req =
            json!({"personal_id": "001085012345", "full_name": nfd, "birth_date": "1985-03-12"});
        assert!(
            c.validate("services/citizen.verify/v1/request", &req)
                .is_err()
        );
        let nfc = json!({"personal_id": "001085012345", "full_name": "Nguyễn Văn An", "birth_date": "1985-03-12"});
        assert!(
            c.validate("services/citizen.verify/v1/request", &nfc)
                .is_ok()
        );
    }
}
