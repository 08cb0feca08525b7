//! A request body as the exchange endpoint parses it: strict JSON, the
//! JSON limits, the request wrapper, RFC 8785, the envelope schema, the
//! typed envelope. Never a panic; whatever parses canonicalizes to a
//! fixed point, and the canonical serializer writes the same bytes.
#![no_main]

use std::sync::LazyLock;

use hub_core::decide::{Partial, parse};
use hub_core::jcs;
use hub_core::schema::Catalog;
use libfuzzer_sys::fuzz_target;

static CATALOG: LazyLock<Catalog> =
    LazyLock::new(|| Catalog::builtin().expect("the built-in schemas load"));

fuzz_target!(|data: &[u8]| {
    let _ = parse(data, &CATALOG, &mut Partial::default());
    if let Ok(value) = jcs::parse_strict(data)
        && let Ok(canonical) = jcs::canonicalize(&value)
    {
        assert_eq!(
            jcs::canonicalize_serialize(&value).expect("serializes as it canonicalizes"),
            canonical
        );
        let again = jcs::parse_strict(&canonical).expect("canonical JSON parses");
        assert_eq!(jcs::canonicalize(&again).expect("canonicalizes"), canonical);
    }
});
