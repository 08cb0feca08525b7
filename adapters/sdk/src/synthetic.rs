//! Deterministic synthetic data for reference registries and tests: the same
//! seed always gives the same records, and no record is a real person.

use hub_core::ids::TaxCode;
use hub_core::semantic::PROVINCE_CODES;

/// SplitMix64: small, fast, and the same on every platform.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0; the bias is negligible for small n).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// One element of a non-empty slice.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        let i = usize::try_from(self.below(items.len() as u64)).unwrap_or(0);
        &items[i]
    }

    /// `n` random decimal digits.
    pub fn digits(&mut self, n: usize) -> String {
        (0..n)
            .map(|_| char::from(b'0' + (self.below(10) as u8)))
            .collect()
    }

    /// A random real province code of birth registration (3 digits).
    pub fn province(&mut self) -> &'static str {
        self.pick::<&str>(&PROVINCE_CODES)
    }

    /// A personal ID consistent with `province` (3 digits), `year` and sex.
    pub fn personal_id(&mut self, province: &str, year: i32, male: bool) -> String {
        let century_index = (year - 1900).div_euclid(100);
        let digit = century_index * 2 + i32::from(!male);
        format!(
            "{province}{digit}{:02}{}",
            year.rem_euclid(100),
            self.digits(6)
        )
    }

    /// A tax code with a valid check digit.
    pub fn tax_code(&mut self) -> String {
        loop {
            let first = format!("0{}", self.digits(8));
            if let Some(check) = TaxCode::expected_check_digit(first.as_bytes()) {
                return format!("{first}{check}");
            }
        }
    }
}

/// How many records a reference adapter process generates:
/// `ADAPTER_SYNTHETIC_RECORDS`, default 1000.
pub fn records_from_env() -> usize {
    std::env::var("ADAPTER_SYNTHETIC_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hub_core::ids::PersonalId;

    #[test]
    fn generated_identifiers_pass_the_hubs_checks() {
        let mut rng = SplitMix64::new(1);
        for _ in 0..200 {
            let code = TaxCode::parse(&rng.tax_code()).unwrap();
            assert!(code.check_digit_ok());
            let year = 1930 + rng.below(90) as i32;
            let male = rng.below(2) == 0;
            let id = PersonalId::parse(&rng.personal_id("079", year, male)).unwrap();
            assert_eq!(id.birth_year(), year);
        }
    }
}
