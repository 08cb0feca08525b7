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
}

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
        Ok(Self {
            documents,
            validators,
        })
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
