//! RFC 8785 JSON Canonicalization Scheme.
//!
//! Object members are sorted by the UTF-16 code units of their names, strings
//! are escaped as ECMAScript's `JSON.stringify` does, and numbers are written
//! as ECMAScript's `Number.prototype.toString` writes an IEEE 754 double.
//! Integers beyond ±2^53 cannot survive that round trip, so they are refused
//! rather than silently changed: identifiers and amounts travel as strings.

use serde_json::{Map, Number, Value};

mod ser;

/// Why a value has no canonical form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JcsError {
    #[error(
        "the number {0} is not exactly representable as an IEEE 754 double (send it as a string)"
    )]
    UnsafeInteger(String),
    #[error("the number {0} is not finite")]
    NotFinite(String),
    #[error("{0} is not a JSON object")]
    NotAnObject(&'static str),
    /// The value has no JSON form (a map with keys that are not strings,
    /// a serializer's own error).
    #[error("not representable as JSON: {0}")]
    NotJson(String),
}

/// The largest integer a double holds exactly with all its neighbours (2^53).
const MAX_SAFE: u64 = 1 << 53;

/// The canonical bytes of `value`.
pub fn canonicalize(value: &Value) -> Result<Vec<u8>, JcsError> {
    let mut out = Vec::with_capacity(256);
    write_value(value, &mut out)?;
    Ok(out)
}

/// `canonical` and `slot` from [`canonicalize_with_slot`] with the member
/// `name` put in at `slot`, its value given in canonical form.
pub fn insert_member(canonical: &[u8], slot: usize, name: &str, canonical_value: &[u8]) -> Vec<u8> {
    let (before, after) = canonical.split_at(slot.min(canonical.len()));
    let mut out = Vec::with_capacity(canonical.len() + name.len() + canonical_value.len() + 8);
    out.extend_from_slice(before);
    let last = after.first() == Some(&b'}');
    if last && before.len() > 1 {
        out.push(b',');
    }
    write_string(name, &mut out);
    out.push(b':');
    out.extend_from_slice(canonical_value);
    if !last {
        out.push(b',');
    }
    out.extend_from_slice(after);
    out
}

/// The canonical bytes of any serializable value: those of
/// `canonicalize(&serde_json::to_value(value)?)`, written without building
/// the `Value` (except that a non-finite float, or an object naming a
/// member twice, is refused where `to_value` would change it).
pub fn canonicalize_serialize<T: serde::Serialize + ?Sized>(
    value: &T,
) -> Result<Vec<u8>, JcsError> {
    let mut out = Vec::with_capacity(256);
    value
        .serialize(ser::Canonical {
            out: &mut out,
            slot: None,
        })
        .map_err(|e| e.0)?;
    Ok(out)
}

/// The canonical bytes of `value`, an object, and where in them a member
/// `name` (which it does not have) goes in RFC 8785's order: the offset of
/// the first member that sorts after it, or of the closing brace. With
/// [`insert_member`], the canonical form of the object plus that member,
/// without canonicalising it again.
pub fn canonicalize_with_slot<T: serde::Serialize + ?Sized>(
    value: &T,
    name: &str,
) -> Result<(Vec<u8>, usize), JcsError> {
    let mut out = Vec::with_capacity(512);
    let mut slot = None;
    value
        .serialize(ser::Canonical {
            out: &mut out,
            slot: Some((name, &mut slot)),
        })
        .map_err(|e| e.0)?;
    match (slot, out.first()) {
        (Some(slot), Some(b'{')) => Ok((out, slot)),
        _ => Err(JcsError::NotAnObject("the value")),
    }
}

fn write_value(value: &Value, out: &mut Vec<u8>) -> Result<(), JcsError> {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => write_number(n, out)?,
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(item, out)?;
            }
            out.push(b']');
        }
        Value::Object(map) => write_object(map, out)?,
    }
    Ok(())
}

fn write_object(map: &Map<String, Value>, out: &mut Vec<u8>) -> Result<(), JcsError> {
    // The map iterates in byte order, RFC 8785's for ASCII names: then
    // there is nothing to collect and sort.
    let in_order = map
        .keys()
        .zip(map.keys().skip(1))
        .all(|(a, b)| utf16_order(a, b).is_lt());
    if in_order {
        return write_members(map.iter(), out);
    }
    let mut members: Vec<(&String, &Value)> = map.iter().collect();
    members.sort_by(|a, b| utf16_order(a.0, b.0));
    write_members(members.into_iter(), out)
}

/// RFC 8785's order of member names: by their UTF-16 code units, which
/// for ASCII names is byte order.
fn utf16_order(a: &str, b: &str) -> std::cmp::Ordering {
    if a.is_ascii() && b.is_ascii() {
        a.cmp(b)
    } else {
        a.encode_utf16().cmp(b.encode_utf16())
    }
}

fn write_members<'a>(
    members: impl Iterator<Item = (&'a String, &'a Value)>,
    out: &mut Vec<u8>,
) -> Result<(), JcsError> {
    out.push(b'{');
    for (i, (k, v)) in members.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_string(k, out);
        out.push(b':');
        write_value(v, out)?;
    }
    out.push(b'}');
    Ok(())
}

fn write_number(n: &Number, out: &mut Vec<u8>) -> Result<(), JcsError> {
    if let Some(u) = n.as_u64() {
        if u > MAX_SAFE {
            return Err(JcsError::UnsafeInteger(n.to_string()));
        }
        out.extend_from_slice(itoa(u, &mut [0; 20]));
        return Ok(());
    }
    if let Some(i) = n.as_i64() {
        if i.unsigned_abs() > MAX_SAFE {
            return Err(JcsError::UnsafeInteger(n.to_string()));
        }
        if i < 0 {
            out.push(b'-');
        }
        out.extend_from_slice(itoa(i.unsigned_abs(), &mut [0; 20]));
        return Ok(());
    }
    let f = n
        .as_f64()
        .ok_or_else(|| JcsError::NotFinite(n.to_string()))?;
    if !f.is_finite() {
        return Err(JcsError::NotFinite(n.to_string()));
    }
    // Between 2^53 and 10^21 ECMAScript prints a double as a plain integer,
    // which parses back as one past 2^53 - refused above; refuse it here too
    // so that canonical text always canonicalizes to itself. (From 10^21 on
    // the exponent form parses back as a double.)
    if f.abs() > MAX_SAFE as f64 && f.abs() < 1e21 {
        return Err(JcsError::UnsafeInteger(n.to_string()));
    }
    if f == 0.0 {
        // ECMAScript prints negative zero as "0".
        out.push(b'0');
        return Ok(());
    }
    let mut buf = ryu_js::Buffer::new();
    out.extend_from_slice(buf.format_finite(f).as_bytes());
    Ok(())
}

/// The decimal digits of `n`, written at the end of `buf` (no allocation:
/// the log writes several integers per entry).
fn itoa(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[at..];
        }
    }
}

fn write_string(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    // Most strings need no escape; a test of every byte that the compiler
    // can vectorise (no early exit) finds those faster than the loop below.
    let plain = s.bytes().fold(true, |plain, b| {
        plain & (b >= 0x20 && b != b'"' && b != b'\\')
    });
    if plain {
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
        return;
    }
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let escape: Option<&[u8]> = match b {
            b'"' => Some(b"\\\""),
            b'\\' => Some(b"\\\\"),
            0x08 => Some(b"\\b"),
            0x0c => Some(b"\\f"),
            b'\n' => Some(b"\\n"),
            b'\r' => Some(b"\\r"),
            b'\t' => Some(b"\\t"),
            _ => None,
        };
        if let Some(esc) = escape {
            out.extend_from_slice(&s.as_bytes()[start..i]);
            out.extend_from_slice(esc);
            start = i + 1;
        } else if b < 0x20 {
            out.extend_from_slice(&s.as_bytes()[start..i]);
            out.extend_from_slice(format!("\\u{b:04x}").as_bytes());
            start = i + 1;
        }
    }
    out.extend_from_slice(&s.as_bytes()[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_value_without_a_json_form_is_named_as_such() {
        let keyed_by_pairs = std::collections::BTreeMap::from([((1u8, 2u8), 3u8)]);
        match canonicalize_serialize(&keyed_by_pairs) {
            Err(JcsError::NotJson(why)) => assert!(why.contains("key must be a string"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    /// What the serializer writes against canonicalising
    /// `serde_json::to_value` of the same thing; and where it puts a member.
    fn serialized_as_value<T: serde::Serialize>(value: &T) {
        let via_value = canonicalize(&serde_json::to_value(value).unwrap()).unwrap();
        assert_eq!(
            String::from_utf8(canonicalize_serialize(value).unwrap()).unwrap(),
            String::from_utf8(via_value).unwrap()
        );
        let object = serde_json::to_value(value).unwrap();
        if let Value::Object(map) = &object {
            for name in ["", "a", "hub_seal", "m", "\u{1f600}", "\u{ffff}"] {
                if !map.contains_key(name) {
                    inserted_as_whole(object.clone(), name, json!({"v": [1]}));
                }
            }
        }
    }

    #[derive(serde::Serialize)]
    enum Shape {
        Unit,
        Newtype(u8),
        Tuple(i8, &'static str),
        Struct { z: bool, a: Option<f64> },
    }

    #[derive(serde::Serialize)]
    struct Unsorted<'a> {
        zeta: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        skipped: Option<u8>,
        alpha: &'a str,
        #[serde(rename = "\u{fb01}")]
        ligature: char,
        #[serde(rename = "\u{1f600}")]
        smiley: (),
        shapes: Vec<Shape>,
        #[serde(with = "serde_bytes_as_seq")]
        bytes: &'a [u8],
        #[serde(flatten)]
        extra: std::collections::BTreeMap<String, Value>,
        nested: Option<Box<Unsorted<'a>>>,
    }

    mod serde_bytes_as_seq {
        pub fn serialize<S: serde::Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(b)
        }
    }

    #[test]
    fn the_serializer_writes_what_canonicalising_the_value_writes() {
        let inner = Unsorted {
            zeta: 1 << 53,
            skipped: None,
            alpha: "quote \" backslash \\ control \u{1} \u{7f} tab\t \u{e9}",
            ligature: '\u{fb01}',
            smiley: (),
            shapes: vec![
                Shape::Unit,
                Shape::Newtype(7),
                Shape::Tuple(-3, "t"),
                Shape::Struct {
                    z: true,
                    a: Some(-0.0),
                },
            ],
            bytes: &[0, 255],
            extra: [
                ("b".to_owned(), json!({"y": [1.5e-7, 1e21], "x": {}})),
                ("\u{e9}".to_owned(), json!(null)),
            ]
            .into(),
            nested: None,
        };
        let outer = Unsorted {
            skipped: Some(2),
            nested: Some(Box::new(inner)),
            extra: std::collections::BTreeMap::new(),
            shapes: vec![Shape::Struct { z: false, a: None }],
            ..Unsorted {
                zeta: 0,
                skipped: None,
                alpha: "",
                ligature: 'x',
                smiley: (),
                shapes: vec![],
                bytes: &[],
                extra: Default::default(),
                nested: None,
            }
        };
        serialized_as_value(&outer);
        serialized_as_value(&json!({"a": [true, false, null, -1, 2.5, "s"], "": {}}));
        serialized_as_value(&Shape::Struct {
            z: true,
            a: Some(1.0),
        });
        serialized_as_value(&Shape::Newtype(1));
        serialized_as_value(&std::collections::BTreeMap::from([
            (3u8, "three"),
            (10, "ten"),
        ]));
    }

    #[test]
    fn the_serializer_refuses_what_to_value_would_change() {
        assert!(matches!(
            canonicalize_serialize(&f64::NAN),
            Err(JcsError::NotFinite(_))
        ));
        assert!(matches!(
            canonicalize_serialize(&[(1u64 << 53) + 1]),
            Err(JcsError::UnsafeInteger(_))
        ));
        assert!(matches!(
            canonicalize_serialize(&u128::MAX),
            Err(JcsError::UnsafeInteger(_))
        ));
        #[derive(serde::Serialize)]
        struct Twice {
            a: u8,
            #[serde(flatten)]
            more: std::collections::BTreeMap<&'static str, u8>,
        }
        let twice = Twice {
            a: 1,
            more: [("a", 2)].into(),
        };
        assert_eq!(
            canonicalize_serialize(&twice),
            Err(JcsError::NotJson("an object names a member twice".into()))
        );
        assert_eq!(
            canonicalize_with_slot(&[1], "a"),
            Err(JcsError::NotAnObject("the value"))
        );
    }

    /// `canonicalize_with_slot` + `insert_member` against canonicalising
    /// the object with the member.
    fn inserted_as_whole(object: Value, name: &str, value: Value) {
        let Value::Object(map) = &object else {
            panic!("not an object")
        };
        let (canonical, slot) = canonicalize_with_slot(map, name).unwrap();
        assert_eq!(canonical, canonicalize(&object).unwrap());
        let inserted = insert_member(&canonical, slot, name, &canonicalize(&value).unwrap());
        let mut whole = map.clone();
        whole.insert(name.to_owned(), value);
        assert_eq!(
            String::from_utf8(inserted).unwrap(),
            String::from_utf8(canonicalize(&Value::Object(whole)).unwrap()).unwrap(),
            "{object} with {name}"
        );
    }

    #[test]
    fn a_member_inserted_goes_where_canonicalising_puts_it() {
        let object = json!({
            "a": {"k": 1, "n": {"zz": [{"k": "\"n\":"}]}},
            "k": "\",\"n\":\"zz\":",
            "n": [{"m": {}}, "{\"m\":"],
            "zz": null,
        });
        for name in ["0", "b", "m", "zzz", "hub_seal"] {
            inserted_as_whole(object.clone(), name, json!("v\"al\u{1}"));
            inserted_as_whole(object.clone(), name, json!({"z": [1, "}"], "a": 2.5}));
        }
        inserted_as_whole(json!({}), "m", json!("v"));
        inserted_as_whole(json!({"a": 1}), "b", json!("v"));
        inserted_as_whole(json!({"b": 1}), "a", json!("v"));
        // Names outside ASCII, in UTF-16 order (U+1F600 before U+FB01).
        inserted_as_whole(json!({"\u{fb01}": 1, "a": 2}), "\u{1f600}", json!("v"));
        inserted_as_whole(json!({"\u{1f600}": 1}), "\u{fb01}", json!("v"));
    }

    #[test]
    fn sorts_by_utf16_code_units_not_bytes() {
        // U+1F600 (surrogate pair D83D DE00) sorts before U+FB01 in UTF-16,
        // although its UTF-8 bytes sort after.
        let v = json!({"\u{fb01}": 1, "\u{1f600}": 2});
        let out = String::from_utf8(canonicalize(&v).unwrap()).unwrap();
        assert_eq!(out, "{\"\u{1f600}\":2,\"\u{fb01}\":1}");
    }

    #[test]
    fn refuses_integers_beyond_two_to_the_53() {
        let v: Value = serde_json::from_str("9007199254740993").unwrap();
        assert!(matches!(canonicalize(&v), Err(JcsError::UnsafeInteger(_))));
        let v: Value = serde_json::from_str("9007199254740992").unwrap();
        assert_eq!(canonicalize(&v).unwrap(), b"9007199254740992");
        let v = json!([0, -1, 7, 10, -9_007_199_254_740_992_i64, 1_234_567_890_u64]);
        assert_eq!(
            canonicalize(&v).unwrap(),
            b"[0,-1,7,10,-9007199254740992,1234567890]"
        );
    }

    #[test]
    fn negative_zero_and_exponents_follow_ecmascript() {
        let v: Value = serde_json::from_str("[-0.0, 1e21, 1e-7, 123e-2]").unwrap();
        assert_eq!(canonicalize(&v).unwrap(), b"[0,1e+21,1e-7,1.23]");
    }

    #[test]
    fn an_integer_past_2_53_is_refused_in_every_spelling() {
        // Found by the envelope fuzz target: 402E16 was accepted as a double
        // and printed as 4020000000000000000, which was then refused.
        for text in [
            "402E16",
            "-402E16",
            "9007199254740994.0",
            "4020000000000000000",
        ] {
            let v: Value = serde_json::from_str(text).unwrap();
            assert!(
                matches!(canonicalize(&v), Err(JcsError::UnsafeInteger(_))),
                "{text}"
            );
        }
        // 2^53 itself, and from 10^21 on (exponent form), are fixed points.
        for text in ["9007199254740992", "9007199254740992.0", "1e21", "-1.5e300"] {
            let v: Value = serde_json::from_str(text).unwrap();
            let once = canonicalize(&v).unwrap();
            let again = canonicalize(&serde_json::from_slice(&once).unwrap()).unwrap();
            assert_eq!(once, again, "{text}");
        }
    }
}

/// Parse JSON text the way RFC 8785 requires of its input: like
/// `serde_json`, but an object with a duplicated member name is an error
/// (I-JSON, RFC 7493), so that no two parsers can read one signed text
/// differently.
pub fn parse_strict(text: &[u8]) -> Result<Value, serde_json::Error> {
    use serde::de::DeserializeSeed;
    let mut de = serde_json::Deserializer::from_slice(text);
    let value = StrictValue.deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

struct StrictValue;

impl<'de> serde::de::DeserializeSeed<'de> for StrictValue {
    type Value = Value;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for StrictValue {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Value, E> {
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("a number that is not finite"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(v) = seq.next_element_seed(StrictValue)? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(serde::de::Error::custom(format!(
                    "duplicate member name {key:?}"
                )));
            }
            let value = map.next_value_seed(StrictValue)?;
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod strict_tests {
    use super::*;

    #[test]
    fn duplicate_member_names_are_refused_at_any_depth() {
        assert!(parse_strict(br#"{"a":1,"a":2}"#).is_err());
        assert!(parse_strict(br#"{"x":[{"b":1,"b":1}]}"#).is_err());
        assert!(parse_strict(br#"{"a":1} trailing"#).is_err());
        let v = parse_strict(br#"{"a":[1,2.5,"s",null,true,{"b":{}}]}"#).unwrap();
        assert_eq!(
            v,
            serde_json::from_str::<Value>(r#"{"a":[1,2.5,"s",null,true,{"b":{}}]}"#).unwrap()
        );
    }
}
