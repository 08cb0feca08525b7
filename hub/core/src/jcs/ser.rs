//! A `serde` serializer that writes RFC 8785 canonical JSON directly, for
//! [`super::canonicalize_serialize`] and [`super::canonicalize_with_slot`].
//!
//! It writes what canonicalising `serde_json::to_value(x)` would write,
//! without building that tree of `Value`s first (on the log's append path
//! the tree, its allocations and its drop cost more than the canonical
//! bytes themselves). Each object writes its members' values into a scratch
//! buffer of its own, then copies them out in RFC 8785's order.
//!
//! Where `serde_json` would quietly change a value, this refuses it: a
//! non-finite float is an error here (`to_value` makes it `null`), and so
//! is a member name given twice (`to_value` keeps the last).

use std::borrow::Cow;
use std::ops::Range;

use serde::ser::{self, Serialize};
use serde_json::Number;

use super::{JcsError, utf16_order, write_number, write_string};

/// `serde`'s error type wraps the canonicaliser's.
#[derive(Debug)]
pub(super) struct Error(pub(super) JcsError);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for Error {}

impl ser::Error for Error {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        Self(JcsError::NotJson(msg.to_string()))
    }
}

fn not_json(what: &str) -> Error {
    Error(JcsError::NotJson(what.to_owned()))
}

/// Writes one value's canonical bytes to `out`. `slot`, for the outermost
/// object only: the name of a member it does not have, and where in `out`
/// that member would go (see `canonicalize_with_slot`).
pub(super) struct Canonical<'a> {
    pub(super) out: &'a mut Vec<u8>,
    pub(super) slot: Option<(&'a str, &'a mut Option<usize>)>,
}

impl<'a> Canonical<'a> {
    fn nested(out: &'a mut Vec<u8>) -> Self {
        Self { out, slot: None }
    }

    fn number(self, n: Number) -> Result<(), Error> {
        write_number(&n, self.out).map_err(Error)
    }

    fn object(self, len: Option<usize>) -> Object<'a> {
        Object {
            out: self.out,
            slot: self.slot,
            scratch: Vec::with_capacity(len.unwrap_or(4) * 24),
            members: Vec::with_capacity(len.unwrap_or(4)),
            key: None,
            wrap: None,
        }
    }

    /// Open `{"variant":`, the way `serde_json` writes an enum's variant
    /// with content: an object of one member (so nothing to sort), closed
    /// by the [`Wrap`] this returns once the content is written.
    fn variant(self, variant: &'static str) -> (&'a mut Vec<u8>, Wrap<'a>) {
        let mut slot = None;
        if let Some((name, at)) = self.slot {
            if utf16_order(variant, name).is_gt() {
                *at = Some(self.out.len() + 1);
            } else {
                slot = Some(at);
            }
        }
        self.out.push(b'{');
        write_string(variant, self.out);
        self.out.push(b':');
        (self.out, Wrap { slot })
    }
}

/// The end of an enum variant's one-member object (see
/// [`Canonical::variant`]); `slot` is still to be set if it is `Some`.
pub(super) struct Wrap<'a> {
    slot: Option<&'a mut Option<usize>>,
}

impl Wrap<'_> {
    fn close(self, out: &mut Vec<u8>) {
        if let Some(at) = self.slot {
            *at = Some(out.len());
        }
        out.push(b'}');
    }
}

/// An array's elements, written as they come.
pub(super) struct Array<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
    /// Set when the array is the content of an enum variant.
    wrap: Option<Wrap<'a>>,
}

impl<'a> Array<'a> {
    fn open(out: &'a mut Vec<u8>) -> Self {
        out.push(b'[');
        Self {
            out,
            first: true,
            wrap: None,
        }
    }

    fn element<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), Error> {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        value.serialize(Canonical::nested(self.out))
    }

    fn close(self) -> Result<(), Error> {
        self.out.push(b']');
        if let Some(wrap) = self.wrap {
            wrap.close(self.out);
        }
        Ok(())
    }
}

/// An object's members: their values written to `scratch` as they come,
/// copied to `out` in RFC 8785's order when it closes.
pub(super) struct Object<'a> {
    out: &'a mut Vec<u8>,
    slot: Option<(&'a str, &'a mut Option<usize>)>,
    scratch: Vec<u8>,
    members: Vec<(Cow<'static, str>, Range<usize>)>,
    /// The name of the member whose value comes next (maps give it apart).
    key: Option<Cow<'static, str>>,
    /// Set when the object is the content of an enum variant.
    wrap: Option<Wrap<'a>>,
}

impl<'a> Object<'a> {
    fn member<T: ?Sized + Serialize>(
        &mut self,
        name: Cow<'static, str>,
        value: &T,
    ) -> Result<(), Error> {
        let start = self.scratch.len();
        value.serialize(Canonical::nested(&mut self.scratch))?;
        self.members.push((name, start..self.scratch.len()));
        Ok(())
    }

    fn close(mut self) -> Result<(), Error> {
        // `BTreeMap` keys, and some structs' fields, arrive in order
        // already: then nothing is sorted.
        let in_order = |w: &[(Cow<'static, str>, Range<usize>)]| utf16_order(&w[0].0, &w[1].0);
        if !self.members.windows(2).all(|w| in_order(w).is_lt()) {
            self.members.sort_by(|a, b| utf16_order(&a.0, &b.0));
        }
        if self.members.windows(2).any(|w| in_order(w).is_eq()) {
            return Err(not_json("an object names a member twice"));
        }
        let out = self.out;
        out.reserve(self.scratch.len() + self.members.len() * 16 + 2);
        out.push(b'{');
        for (i, (name, value)) in self.members.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            if let Some((slot_name, slot)) = self.slot.as_mut()
                && slot.is_none()
                && utf16_order(name, slot_name).is_gt()
            {
                **slot = Some(out.len());
            }
            write_string(name, out);
            out.push(b':');
            out.extend_from_slice(&self.scratch[value.clone()]);
        }
        if let Some((_, slot)) = self.slot.as_mut()
            && slot.is_none()
        {
            **slot = Some(out.len());
        }
        out.push(b'}');
        if let Some(wrap) = self.wrap {
            wrap.close(out);
        }
        Ok(())
    }
}

/// Integers that a JSON number holds as they are (past 2^53 refused by
/// `write_number`).
macro_rules! integers {
    ($($method:ident: $t:ty),*) => {$(
        fn $method(self, v: $t) -> Result<(), Error> {
            self.number(v.into())
        }
    )*};
}

impl<'a> ser::Serializer for Canonical<'a> {
    type Ok = ();
    type Error = Error;
    type SerializeSeq = Array<'a>;
    type SerializeTuple = Array<'a>;
    type SerializeTupleStruct = Array<'a>;
    type SerializeTupleVariant = Array<'a>;
    type SerializeMap = Object<'a>;
    type SerializeStruct = Object<'a>;
    type SerializeStructVariant = Object<'a>;

    fn serialize_bool(self, v: bool) -> Result<(), Error> {
        self.out
            .extend_from_slice(if v { b"true" } else { b"false" });
        Ok(())
    }

    integers!(
        serialize_i8: i8, serialize_i16: i16, serialize_i32: i32, serialize_i64: i64,
        serialize_u8: u8, serialize_u16: u16, serialize_u32: u32, serialize_u64: u64
    );

    fn serialize_i128(self, v: i128) -> Result<(), Error> {
        let n = i64::try_from(v).map_err(|_| Error(JcsError::UnsafeInteger(v.to_string())))?;
        self.number(n.into())
    }

    fn serialize_u128(self, v: u128) -> Result<(), Error> {
        let n = u64::try_from(v).map_err(|_| Error(JcsError::UnsafeInteger(v.to_string())))?;
        self.number(n.into())
    }

    fn serialize_f32(self, v: f32) -> Result<(), Error> {
        self.serialize_f64(f64::from(v))
    }

    fn serialize_f64(self, v: f64) -> Result<(), Error> {
        let n = Number::from_f64(v).ok_or_else(|| Error(JcsError::NotFinite(v.to_string())))?;
        self.number(n)
    }

    fn serialize_char(self, v: char) -> Result<(), Error> {
        write_string(v.encode_utf8(&mut [0; 4]), self.out);
        Ok(())
    }

    fn serialize_str(self, v: &str) -> Result<(), Error> {
        write_string(v, self.out);
        Ok(())
    }

    fn serialize_bytes(self, v: &[u8]) -> Result<(), Error> {
        // As `serde_json` does: an array of numbers.
        let mut array = Array::open(self.out);
        for b in v {
            array.element(b)?;
        }
        array.close()
    }

    fn serialize_none(self) -> Result<(), Error> {
        self.serialize_unit()
    }

    fn serialize_some<T: ?Sized + Serialize>(self, value: &T) -> Result<(), Error> {
        value.serialize(self)
    }

    fn serialize_unit(self) -> Result<(), Error> {
        self.out.extend_from_slice(b"null");
        Ok(())
    }

    fn serialize_unit_struct(self, _name: &'static str) -> Result<(), Error> {
        self.serialize_unit()
    }

    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<(), Error> {
        self.serialize_str(variant)
    }

    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        let (out, wrap) = self.variant(variant);
        value.serialize(Canonical::nested(&mut *out))?;
        wrap.close(out);
        Ok(())
    }

    fn serialize_seq(self, _len: Option<usize>) -> Result<Array<'a>, Error> {
        Ok(Array::open(self.out))
    }

    fn serialize_tuple(self, len: usize) -> Result<Array<'a>, Error> {
        self.serialize_seq(Some(len))
    }

    fn serialize_tuple_struct(self, _name: &'static str, len: usize) -> Result<Array<'a>, Error> {
        self.serialize_seq(Some(len))
    }

    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Array<'a>, Error> {
        let (out, wrap) = self.variant(variant);
        let mut array = Array::open(out);
        array.wrap = Some(wrap);
        Ok(array)
    }

    fn serialize_map(self, len: Option<usize>) -> Result<Object<'a>, Error> {
        Ok(self.object(len))
    }

    fn serialize_struct(self, _name: &'static str, len: usize) -> Result<Object<'a>, Error> {
        Ok(self.object(Some(len)))
    }

    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Object<'a>, Error> {
        let (out, wrap) = self.variant(variant);
        let mut object = Canonical::nested(out).object(Some(len));
        object.wrap = Some(wrap);
        Ok(object)
    }
}

/// The element methods of `serde`'s four array-like traits, all one here.
macro_rules! array_like {
    ($($trait:ident :: $method:ident),*) => {$(
        impl ser::$trait for Array<'_> {
            type Ok = ();
            type Error = Error;

            fn $method<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), Error> {
                self.element(value)
            }

            fn end(self) -> Result<(), Error> {
                self.close()
            }
        }
    )*};
}

array_like!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field
);

impl ser::SerializeMap for Object<'_> {
    type Ok = ();
    type Error = Error;

    fn serialize_key<T: ?Sized + Serialize>(&mut self, key: &T) -> Result<(), Error> {
        self.key = Some(Cow::Owned(key.serialize(MemberName)?));
        Ok(())
    }

    fn serialize_value<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), Error> {
        let name = self
            .key
            .take()
            .ok_or_else(|| not_json("a map value without its key"))?;
        self.member(name, value)
    }

    fn end(self) -> Result<(), Error> {
        self.close()
    }
}

/// A struct's fields, and a struct variant's, are named members.
macro_rules! struct_like {
    ($($trait:ident),*) => {$(
        impl ser::$trait for Object<'_> {
            type Ok = ();
            type Error = Error;

            fn serialize_field<T: ?Sized + Serialize>(
                &mut self,
                key: &'static str,
                value: &T,
            ) -> Result<(), Error> {
                self.member(Cow::Borrowed(key), value)
            }

            fn end(self) -> Result<(), Error> {
                self.close()
            }
        }
    )*};
}

struct_like!(SerializeStruct, SerializeStructVariant);

/// A map key as a member name, as `serde_json` makes one: strings as they
/// are, numbers, booleans and unit variants spelled out; anything else is
/// refused.
struct MemberName;

fn key_must_be_a_string() -> Error {
    not_json("key must be a string")
}

/// Member names from values that `serde_json` spells out.
macro_rules! spelled_out {
    ($($method:ident: $t:ty),*) => {$(
        fn $method(self, v: $t) -> Result<String, Error> {
            Ok(v.to_string())
        }
    )*};
}

impl ser::Serializer for MemberName {
    type Ok = String;
    type Error = Error;
    type SerializeSeq = ser::Impossible<String, Error>;
    type SerializeTuple = ser::Impossible<String, Error>;
    type SerializeTupleStruct = ser::Impossible<String, Error>;
    type SerializeTupleVariant = ser::Impossible<String, Error>;
    type SerializeMap = ser::Impossible<String, Error>;
    type SerializeStruct = ser::Impossible<String, Error>;
    type SerializeStructVariant = ser::Impossible<String, Error>;

    spelled_out!(
        serialize_bool: bool, serialize_char: char,
        serialize_i8: i8, serialize_i16: i16, serialize_i32: i32, serialize_i64: i64, serialize_i128: i128,
        serialize_u8: u8, serialize_u16: u16, serialize_u32: u32, serialize_u64: u64, serialize_u128: u128
    );

    fn serialize_f32(self, _v: f32) -> Result<String, Error> {
        Err(key_must_be_a_string())
    }

    fn serialize_f64(self, _v: f64) -> Result<String, Error> {
        Err(key_must_be_a_string())
    }

    fn serialize_str(self, v: &str) -> Result<String, Error> {
        Ok(v.to_owned())
    }

    fn serialize_bytes(self, _v: &[u8]) -> Result<String, Error> {
        Err(key_must_be_a_string())
    }

    fn serialize_none(self) -> Result<String, Error> {
        Err(key_must_be_a_string())
    }

    fn serialize_some<T: ?Sized + Serialize>(self, _value: &T) -> Result<String, Error> {
        Err(key_must_be_a_string())
    }

    fn serialize_unit(self) -> Result<String, Error> {
        Err(key_must_be_a_string())
    }

    fn serialize_unit_struct(self, _name: &'static str) -> Result<String, Error> {
        Err(key_must_be_a_string())
    }

    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<String, Error> {
        Ok(variant.to_owned())
    }

    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<String, Error> {
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _value: &T,
    ) -> Result<String, Error> {
        Err(key_must_be_a_string())
    }

    fn serialize_seq(self, _len: Option<usize>) -> Result<Self::SerializeSeq, Error> {
        Err(key_must_be_a_string())
    }

    fn serialize_tuple(self, _len: usize) -> Result<Self::SerializeTuple, Error> {
        Err(key_must_be_a_string())
    }

    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleStruct, Error> {
        Err(key_must_be_a_string())
    }

    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleVariant, Error> {
        Err(key_must_be_a_string())
    }

    fn serialize_map(self, _len: Option<usize>) -> Result<Self::SerializeMap, Error> {
        Err(key_must_be_a_string())
    }

    fn serialize_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStruct, Error> {
        Err(key_must_be_a_string())
    }

    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStructVariant, Error> {
        Err(key_must_be_a_string())
    }
}
