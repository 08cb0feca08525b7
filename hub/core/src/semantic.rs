//! Checks a JSON Schema cannot express, run as named validators.
//!
//! A schema asks for one with the keyword `"x-hub-check": "<name>"`; the
//! catalog compiles it like any other keyword, so a failure is reported with
//! the instance's JSON pointer like any other violation.
//!
//! | name | applies to | checks |
//! | --- | --- | --- |
//! | `personal-id-province` | a personal ID string | digits 1-3 are a real province code |
//! | `personal-id-consistency` | an object with `personal_id`, `birth_date`, `sex` | the province, the century/sex digit and the year digits agree with the record |
//! | `tax-code-check-digit` | a tax / enterprise code string | the 10th digit is the check digit |

use serde_json::Value;

use crate::ids::{PersonalId, Sex, TaxCode};

/// The names a schema may give to `x-hub-check`.
pub const CHECK_NAMES: [&str; 3] = [
    "personal-id-province",
    "personal-id-consistency",
    "tax-code-check-digit",
];

/// The 63 province codes of birth registration used in digits 1-3 of a
/// personal ID (001 Hà Nội ... 096 Cà Mau). The two-digit administrative
/// province code is the same number without its leading zero.
pub const PROVINCE_CODES: [&str; 63] = [
    "001", "002", "004", "006", "008", "010", "011", "012", "014", "015", "017", "019", "020",
    "022", "024", "025", "026", "027", "030", "031", "033", "034", "035", "036", "037", "038",
    "040", "042", "044", "045", "046", "048", "049", "051", "052", "054", "056", "058", "060",
    "062", "064", "066", "067", "068", "070", "072", "074", "075", "077", "079", "080", "082",
    "083", "084", "086", "087", "089", "091", "092", "093", "094", "095", "096",
];

/// One named check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    PersonalIdProvince,
    PersonalIdConsistency,
    TaxCodeCheckDigit,
}

impl Check {
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "personal-id-province" => Some(Self::PersonalIdProvince),
            "personal-id-consistency" => Some(Self::PersonalIdConsistency),
            "tax-code-check-digit" => Some(Self::TaxCodeCheckDigit),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::PersonalIdProvince => "personal-id-province",
            Self::PersonalIdConsistency => "personal-id-consistency",
            Self::TaxCodeCheckDigit => "tax-code-check-digit",
        }
    }

    /// Run the check; `Err` names what disagrees. Values of the wrong type
    /// pass here because the schema's own `type` reports them.
    pub fn run(self, instance: &Value) -> Result<(), String> {
        match self {
            Self::PersonalIdProvince => match instance.as_str() {
                Some(s) => personal_id_province(s),
                None => Ok(()),
            },
            Self::TaxCodeCheckDigit => match instance.as_str().map(TaxCode::parse) {
                Some(Ok(code)) if !code.check_digit_ok() => Err(format!(
                    "tax code {code}: the check digit does not match digits 1-9"
                )),
                _ => Ok(()),
            },
            Self::PersonalIdConsistency => personal_id_consistency(instance),
        }
    }
}

fn personal_id_province(s: &str) -> Result<(), String> {
    match PersonalId::parse(s) {
        Ok(id) if !PROVINCE_CODES.contains(&id.province_code()) => Err(format!(
            "personal ID {id}: {} is not a province code of birth registration",
            id.province_code()
        )),
        _ => Ok(()),
    }
}

fn personal_id_consistency(record: &Value) -> Result<(), String> {
    let Some(id) = record
        .get("personal_id")
        .and_then(Value::as_str)
        .and_then(|s| PersonalId::parse(s).ok())
    else {
        return Ok(());
    };
    personal_id_province(id.as_str())?;
    if let Some(year) = record
        .get("birth_date")
        .and_then(Value::as_str)
        .and_then(|d| d.get(..4))
        .and_then(|y| y.parse::<i32>().ok())
    {
        let (century, _) = id.century_and_sex();
        if !(century..century + 100).contains(&year) {
            return Err(format!(
                "personal ID {id}: digit 4 says born in {century}-{}, the record says {year}",
                century + 99
            ));
        }
        if id.birth_year() != year {
            return Err(format!(
                "personal ID {id}: digits 5-6 say born in {}, the record says {year}",
                id.birth_year()
            ));
        }
    }
    let (_, id_sex) = id.century_and_sex();
    let record_sex = match record.get("sex").and_then(Value::as_str) {
        Some("1") => Some(Sex::Male),
        Some("2") => Some(Sex::Female),
        _ => None,
    };
    if let Some(sex) = record_sex
        && sex != id_sex
    {
        return Err(format!(
            "personal ID {id}: digit 4 encodes {id_sex:?}, the record says {sex:?}"
        ));
    }
    if let Some(province) = record
        .get("birth_registration_province")
        .and_then(Value::as_str)
        && format!("0{province}") != id.province_code()
    {
        return Err(format!(
            "personal ID {id}: digits 1-3 say birth registered in province {}, the record says {province}",
            &id.province_code()[1..]
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn there_are_63_distinct_province_codes() {
        let mut v = PROVINCE_CODES.to_vec();
        v.sort_unstable();
        v.dedup();
        assert_eq!(v.len(), 63);
    }

    #[test]
    fn consistency_catches_each_disagreement() {
        let ok = json!({"personal_id": "001085012345", "birth_date": "1985-03-12", "sex": "1", "birth_registration_province": "01"});
        assert_eq!(Check::PersonalIdConsistency.run(&ok), Ok(()));
        let cases = [
            json!({"personal_id": "001085012345", "birth_date": "1986-03-12", "sex": "1"}),
            json!({"personal_id": "001085012345", "birth_date": "2085-03-12", "sex": "1"}),
            json!({"personal_id": "001085012345", "birth_date": "1985-03-12", "sex": "2"}),
            json!({"personal_id": "003085012345", "birth_date": "1985-03-12", "sex": "1"}),
            json!({"personal_id": "001085012345", "birth_date": "1985-03-12", "birth_registration_province": "79"}),
        ];
        for c in cases {
            assert!(Check::PersonalIdConsistency.run(&c).is_err(), "{c}");
        }
    }

    #[test]
    fn tax_code_check() {
        assert!(Check::TaxCodeCheckDigit.run(&json!("0100109106")).is_ok());
        assert!(Check::TaxCodeCheckDigit.run(&json!("0100109105")).is_err());
    }
}
