//! Typed identifiers, parsed once at the edge.
//!
//! Each type's constructor is the only way to make one, and it checks the
//! shape, so code deeper in never re-validates.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// An identifier did not have the required shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {value:?}: {reason}")]
pub struct IdError {
    pub kind: &'static str,
    pub value: String,
    pub reason: &'static str,
}

fn err(kind: &'static str, value: &str, reason: &'static str) -> IdError {
    IdError {
        kind,
        value: value.chars().take(80).collect(),
        reason,
    }
}

/// Text identifiers are cloned into every draft, record and map key that
/// names them: shared (`Arc<str>`), a clone costs no allocation.
macro_rules! string_newtype {
    ($name:ident) => {
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::parse(s)
            }
        }
        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                Self::parse(&s)
            }
        }
        // As the text itself: neither cloned nor copied to be written.
        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }
        impl $name {
            /// The identifier as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
    };
}

fn all(s: &str, f: impl Fn(u8) -> bool) -> bool {
    s.bytes().all(f)
}

/// An agency code in the Decision 20/2020/QĐ-TTg shape: four dotted levels,
/// e.g. `000.00.00.H29`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub struct AgencyCode(Arc<str>);
string_newtype!(AgencyCode);

impl AgencyCode {
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let parts: Vec<&str> = s.split('.').collect();
        let alnum = |p: &str, n: usize| {
            p.len() == n && all(p, |b| b.is_ascii_digit() || b.is_ascii_uppercase())
        };
        let ok = parts.len() == 4
            && alnum(parts[0], 3)
            && alnum(parts[1], 2)
            && alnum(parts[2], 2)
            && parts[3].len() == 3
            && parts[3].as_bytes()[0].is_ascii_uppercase()
            && all(&parts[3][1..], |b| b.is_ascii_digit());
        if ok {
            Ok(Self(s.into()))
        } else {
            Err(err(
                "agency code",
                s,
                "expected four dotted levels like 000.00.00.H29",
            ))
        }
    }
}

/// A subsystem of an agency: lowercase letters, digits and dashes, 1 to 50.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub struct Subsystem(Arc<str>);
string_newtype!(Subsystem);

impl Subsystem {
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let ok = (1..=50).contains(&s.len())
            && s.as_bytes()[0].is_ascii_alphanumeric()
            && all(s, |b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'
            });
        if ok {
            Ok(Self(s.into()))
        } else {
            Err(err(
                "subsystem",
                s,
                "expected 1-50 lowercase letters, digits or dashes",
            ))
        }
    }
}

/// A member of the exchange: an agency's subsystem. Written `agency/subsystem`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Member {
    pub agency: AgencyCode,
    pub subsystem: Subsystem,
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.agency, self.subsystem)
    }
}

impl FromStr for Member {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let (a, b) = s
            .split_once('/')
            .ok_or_else(|| err("member", s, "expected agency/subsystem"))?;
        Ok(Self {
            agency: AgencyCode::parse(a)?,
            subsystem: Subsystem::parse(b)?,
        })
    }
}

/// Sex as the personal ID encodes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sex {
    Male,
    Female,
}

/// A 12-digit personal identification number (số định danh cá nhân).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub struct PersonalId(Arc<str>);
string_newtype!(PersonalId);

impl PersonalId {
    pub fn parse(s: &str) -> Result<Self, IdError> {
        if s.len() == 12 && all(s, |b| b.is_ascii_digit()) {
            Ok(Self(s.into()))
        } else {
            Err(err("personal ID", s, "expected 12 digits"))
        }
    }

    /// Digits 1-3: the province (or country) of birth registration.
    pub fn province_code(&self) -> &str {
        &self.0[..3]
    }

    /// Digit 4 decodes to the birth century's first year and the sex.
    pub fn century_and_sex(&self) -> (i32, Sex) {
        let d = i32::from(self.0.as_bytes()[3] - b'0');
        let century = 1900 + (d / 2) * 100;
        let sex = if d % 2 == 0 { Sex::Male } else { Sex::Female };
        (century, sex)
    }

    /// Digits 4-6 decode to the full birth year.
    pub fn birth_year(&self) -> i32 {
        let (century, _) = self.century_and_sex();
        let yy =
            i32::from(self.0.as_bytes()[4] - b'0') * 10 + i32::from(self.0.as_bytes()[5] - b'0');
        century + yy
    }
}

/// An enterprise code, which is also the tax code: 10 digits whose 10th is a
/// check digit, optionally followed by `-NNN` for a branch.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub struct TaxCode(Arc<str>);
string_newtype!(TaxCode);

/// Weights of digits 1-9 in the tax-code check digit.
const TAX_WEIGHTS: [u32; 9] = [31, 29, 23, 19, 17, 13, 7, 5, 3];

impl TaxCode {
    /// Parse the shape only (10 digits, optional `-NNN`); see [`TaxCode::check_digit_ok`].
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let (main, branch) = match s.split_once('-') {
            Some((m, b)) => (m, Some(b)),
            None => (s, None),
        };
        let main_ok = main.len() == 10 && all(main, |b| b.is_ascii_digit());
        let branch_ok = branch.is_none_or(|b| b.len() == 3 && all(b, |c| c.is_ascii_digit()));
        if main_ok && branch_ok {
            Ok(Self(s.into()))
        } else {
            Err(err("tax code", s, "expected 10 digits, optionally -NNN"))
        }
    }

    /// The check digit digits 1-9 call for, or `None` when no code with
    /// those digits can be issued (the computation gives 10).
    pub fn expected_check_digit(first_nine: &[u8]) -> Option<u8> {
        let sum: u32 = first_nine
            .iter()
            .zip(TAX_WEIGHTS)
            .map(|(d, w)| u32::from(d - b'0') * w)
            .sum();
        let check = 10 - (sum % 11);
        u8::try_from(check).ok().filter(|c| *c < 10)
    }

    /// Whether the 10th digit is the check digit of the first nine.
    pub fn check_digit_ok(&self) -> bool {
        let b = self.0.as_bytes();
        Self::expected_check_digit(&b[..9]) == Some(b[9] - b'0')
    }
}

/// A service name such as `citizen.lookup`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub struct ServiceName(Arc<str>);
string_newtype!(ServiceName);

impl ServiceName {
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let seg_ok = |p: &str| {
            !p.is_empty()
                && p.as_bytes()[0].is_ascii_lowercase()
                && all(p, |b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'
                })
        };
        if s.len() <= 64 && s.contains('.') && s.split('.').all(seg_ok) {
            Ok(Self(s.into()))
        } else {
            Err(err(
                "service",
                s,
                "expected dotted lowercase words like citizen.lookup",
            ))
        }
    }
}

/// A purpose-of-use code (the code list is in `schemas/common/v1.json`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub struct PurposeCode(Arc<str>);
string_newtype!(PurposeCode);

impl PurposeCode {
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let ok = (2..=40).contains(&s.len())
            && s.as_bytes()[0].is_ascii_lowercase()
            && all(s, |b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'
            });
        if ok {
            Ok(Self(s.into()))
        } else {
            Err(err(
                "purpose",
                s,
                "expected a lowercase code like public_service",
            ))
        }
    }
}

/// The case (dossier) reference of the procedure an exchange serves.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub struct CaseRef(Arc<str>);
string_newtype!(CaseRef);

impl CaseRef {
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let ok = (1..=64).contains(&s.len())
            && all(s, |b| b.is_ascii_alphanumeric() || b"._/-".contains(&b));
        if ok {
            Ok(Self(s.into()))
        } else {
            Err(err(
                "case reference",
                s,
                "expected 1-64 of A-Z a-z 0-9 . _ / -",
            ))
        }
    }
}

/// An exchange id: a UUIDv7, so ids sort by creation time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub struct ExchangeId(uuid::Uuid);

impl Serialize for ExchangeId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
        serializer.serialize_str(self.0.hyphenated().encode_lower(&mut text))
    }
}

impl ExchangeId {
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let u = uuid::Uuid::parse_str(s).map_err(|_| err("exchange id", s, "not a UUID"))?;
        if u.get_version_num() != 7 || s.len() != 36 {
            return Err(err(
                "exchange id",
                s,
                "expected a hyphenated UUID version 7",
            ));
        }
        Ok(Self(u))
    }

    /// A new UUIDv7 from a timestamp (milliseconds since the epoch) and 10
    /// random bytes, both supplied by the caller.
    pub fn from_parts(unix_millis: u64, random: [u8; 10]) -> Self {
        let mut b = [0u8; 16];
        b[..6].copy_from_slice(&unix_millis.to_be_bytes()[2..]);
        b[6..].copy_from_slice(&random);
        b[6] = 0x70 | (b[6] & 0x0f);
        b[8] = 0x80 | (b[8] & 0x3f);
        Self(uuid::Uuid::from_bytes(b))
    }
}

impl fmt::Display for ExchangeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl FromStr for ExchangeId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        Self::parse(s)
    }
}

impl TryFrom<String> for ExchangeId {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        Self::parse(&s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agency_codes_follow_decision_20() {
        assert!(AgencyCode::parse("000.00.00.H29").is_ok());
        assert!(AgencyCode::parse("G01.10.05.A01").is_ok());
        for bad in [
            "000.00.00.29",
            "000.00.00",
            "00.00.00.H29",
            "000.00.00.h29",
            "000.00.00.H29 ",
        ] {
            assert!(AgencyCode::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn personal_id_decodes_century_sex_and_year() {
        let id = PersonalId::parse("001085012345").unwrap();
        assert_eq!(id.province_code(), "001");
        assert_eq!(id.century_and_sex(), (1900, Sex::Male));
        assert_eq!(id.birth_year(), 1985);
        let id = PersonalId::parse("079305000001").unwrap();
        assert_eq!(id.century_and_sex(), (2000, Sex::Female));
        assert_eq!(id.birth_year(), 2005);
    }

    #[test]
    fn tax_code_check_digit() {
        // Weighted sum of 010010910 is 114; 114 mod 11 = 4; check = 6.
        assert!(TaxCode::parse("0100109106").unwrap().check_digit_ok());
        assert!(!TaxCode::parse("0100109107").unwrap().check_digit_ok());
        assert!(TaxCode::parse("0100109106-001").unwrap().check_digit_ok());
        assert!(TaxCode::parse("010010910").is_err());
    }

    #[test]
    fn exchange_ids_are_v7() {
        let id = ExchangeId::from_parts(1_700_000_000_000, [7; 10]);
        let s = id.to_string();
        assert_eq!(ExchangeId::parse(&s).unwrap(), id);
        assert!(ExchangeId::parse("6ba7b810-9dad-41d1-80b4-00c04fd430c8").is_err());
    }

    #[test]
    fn identifiers_serialize_as_their_text_and_read_back() {
        fn round_trip<T>(text: &str)
        where
            T: serde::Serialize
                + serde::de::DeserializeOwned
                + fmt::Display
                + PartialEq
                + fmt::Debug,
        {
            let json = serde_json::to_string(&serde_json::Value::String(text.to_owned())).unwrap();
            let value: T = serde_json::from_str(&json).unwrap();
            assert_eq!(value.to_string(), text);
            assert_eq!(serde_json::to_string(&value).unwrap(), json);
            assert_eq!(serde_json::from_str::<T>(&json).unwrap(), value);
        }
        round_trip::<AgencyCode>("000.00.00.H29");
        round_trip::<Subsystem>("population-registry");
        round_trip::<PersonalId>("001085012345");
        round_trip::<ServiceName>("citizen.lookup");
        round_trip::<ExchangeId>("01930f1e-a2b4-7c3d-8e5f-000000000001");
        let member: Member = "000.00.00.G01/population-registry".parse().unwrap();
        assert_eq!(
            serde_json::to_value(&member).unwrap(),
            serde_json::json!({"agency": "000.00.00.G01", "subsystem": "population-registry"})
        );
        assert!(serde_json::from_str::<Subsystem>("\"Not Valid\"").is_err());
        assert!(
            serde_json::from_str::<ExchangeId>("\"01930F1E-A2B4-7C3D-8E5F-00000000000\"").is_err()
        );
    }
}
