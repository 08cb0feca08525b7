//! Reference adapter for a synthetic population registry.
//!
//! The registry stores citizens the way social insurance writes them: birth
//! dates as `yyyymmdd` with a precision flag (0 full date, 1 year only, 2
//! year and month), sex as 1/2/3, flat Vietnamese field names. The adapter
//! converts that native form to the national schema (`citizen.lookup`,
//! `citizen.verify`) - the "technical conversion" the platform owes.
//! It also declares the event `citizen.address_changed`, which the
//! registry publishes through the hub.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use hub_adapter_sdk::synthetic::SplitMix64;
use hub_adapter_sdk::{Adapter, AdapterError, AdapterRequest, HandlerFuture, ServiceSpec};
use hub_core::ids::Member;
use serde_json::{Value, json};

/// The registry's member identity.
pub const PROVIDER: &str = "000.00.00.G01/population-registry";

/// A citizen as the native registry stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NativeCitizen {
    pub so_dinh_danh: String,
    pub ho_ten: String,
    /// `yyyymmdd`; the unknown parts are `00` per `kieu_ngay_sinh`.
    pub ngay_sinh: String,
    /// 0 full date, 1 year only, 2 year and month.
    pub kieu_ngay_sinh: u8,
    /// 1 male, 2 female, 3 other.
    pub gioi_tinh: u8,
    pub ma_dan_toc: String,
    pub ma_tinh_khai_sinh: String,
    pub thuong_tru: NativeAddress,
    pub noi_o_hien_tai: Option<NativeAddress>,
    pub so_cmnd: Option<String>,
    /// 1 single, 2 married, 3 divorced, 4 widowed.
    pub hon_nhan: u8,
}

/// An address as the native registry stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NativeAddress {
    pub ma_tinh: String,
    pub ma_huyen: String,
    pub ma_xa: String,
    pub chi_tiet: String,
}

impl NativeAddress {
    fn to_national(&self) -> Value {
        json!({
            "province": self.ma_tinh,
            "district": self.ma_huyen,
            "commune": self.ma_xa,
            "detail": self.chi_tiet,
            "country": "VN",
        })
    }
}

impl NativeCitizen {
    /// The national-schema form of this record.
    pub fn to_national(&self) -> Value {
        let d = &self.ngay_sinh;
        let (y, m, day) = (&d[..4], &d[4..6], &d[6..8]);
        let (birth_date, precision) = match self.kieu_ngay_sinh {
            1 => (format!("{y}-01-01"), Some("year")),
            2 => (format!("{y}-{m}-01"), Some("year_month")),
            _ => (format!("{y}-{m}-{day}"), None),
        };
        let mut c = json!({
            "personal_id": self.so_dinh_danh,
            "full_name": self.ho_ten,
            "birth_date": birth_date,
            "sex": if self.gioi_tinh == 2 { "2" } else { "1" },
            "ethnicity": self.ma_dan_toc,
            "nationality": "VN",
            "birth_registration_province": self.ma_tinh_khai_sinh,
            "permanent_residence": self.thuong_tru.to_national(),
            "marital_status": match self.hon_nhan { 2 => "married", 3 => "divorced", 4 => "widowed", _ => "single" },
        });
        if let Some(p) = precision {
            c["birth_date_precision"] = json!(p);
        }
        if let Some(a) = &self.noi_o_hien_tai {
            c["current_residence"] = a.to_national();
        }
        if let Some(old) = &self.so_cmnd {
            c["old_id_card_number"] = json!(old);
        }
        c
    }
}

const FAMILY: [&str; 14] = [
    "Nguyễn", "Trần", "Lê", "Phạm", "Hoàng", "Huỳnh", "Phan", "Vũ", "Võ", "Đặng", "Bùi", "Đỗ",
    "Hồ", "Ngô",
];
const MIDDLE_M: [&str; 6] = ["Văn", "Hữu", "Đức", "Minh", "Quốc", "Thành"];
const MIDDLE_F: [&str; 6] = ["Thị", "Ngọc", "Thu", "Thanh", "Phương", "Mai"];
const GIVEN_M: [&str; 10] = [
    "An", "Bình", "Cường", "Dũng", "Hải", "Hùng", "Khoa", "Long", "Nam", "Sơn",
];
const GIVEN_F: [&str; 10] = [
    "Anh", "Chi", "Hà", "Hạnh", "Hoa", "Lan", "Linh", "Ngân", "Thảo", "Trang",
];
const STREETS: [&str; 8] = [
    "đường Lê Lợi",
    "phố Hàng Bạc",
    "đường Trần Hưng Đạo",
    "đường Nguyễn Trãi",
    "phố Huế",
    "đường Hai Bà Trưng",
    "đường Quang Trung",
    "đường Lý Thường Kiệt",
];

/// The synthetic registry: three fixed citizens for walkthroughs and tests,
/// then `generated` more from a fixed seed.
#[derive(Debug, Clone)]
pub struct Registry {
    citizens: BTreeMap<String, NativeCitizen>,
}

fn address(p: &str, district: &str, commune: &str, detail: &str) -> NativeAddress {
    NativeAddress {
        ma_tinh: p.into(),
        ma_huyen: district.into(),
        ma_xa: commune.into(),
        chi_tiet: detail.into(),
    }
}

impl Registry {
    /// The fixed citizens every demo and test can rely on.
    pub fn fixtures() -> Vec<NativeCitizen> {
        vec![
            NativeCitizen {
                so_dinh_danh: "001085012345".into(),
                ho_ten: "Nguyễn Văn An".into(),
                ngay_sinh: "19850312".into(),
                kieu_ngay_sinh: 0,
                gioi_tinh: 1,
                ma_dan_toc: "01".into(),
                ma_tinh_khai_sinh: "01".into(),
                thuong_tru: address("01", "001", "00004", "Số 12 phố Phúc Xá"),
                noi_o_hien_tai: Some(address(
                    "01",
                    "005",
                    "00160",
                    "Số 8 ngõ 20 phố Trần Duy Hưng",
                )),
                so_cmnd: Some("012345678".into()),
                hon_nhan: 2,
            },
            NativeCitizen {
                so_dinh_danh: "079192000123".into(),
                ho_ten: "Trần Thị Bích Ngọc".into(),
                ngay_sinh: "19920708".into(),
                kieu_ngay_sinh: 0,
                gioi_tinh: 2,
                ma_dan_toc: "01".into(),
                ma_tinh_khai_sinh: "79".into(),
                thuong_tru: address("79", "760", "26734", "Số 45 đường Lê Lợi"),
                noi_o_hien_tai: None,
                so_cmnd: None,
                hon_nhan: 1,
            },
            NativeCitizen {
                so_dinh_danh: "048201000456".into(),
                ho_ten: "Lê Minh Khoa".into(),
                ngay_sinh: "20010000".into(),
                kieu_ngay_sinh: 1,
                gioi_tinh: 1,
                ma_dan_toc: "17".into(),
                ma_tinh_khai_sinh: "48".into(),
                thuong_tru: address("48", "490", "20194", "Tổ 5 phường Thạch Thang"),
                noi_o_hien_tai: None,
                so_cmnd: None,
                hon_nhan: 1,
            },
        ]
    }

    /// The fixtures and `generated` synthetic citizens from `seed`.
    pub fn synthetic(seed: u64, generated: usize) -> Self {
        let mut rng = SplitMix64::new(seed);
        let mut citizens: BTreeMap<String, NativeCitizen> = Self::fixtures()
            .into_iter()
            .map(|c| (c.so_dinh_danh.clone(), c))
            .collect();
        while citizens.len() < generated + 3 {
            let province3 = rng.province();
            let province = &province3[1..];
            let year = 1940 + rng.below(70) as i32;
            let male = rng.below(2) == 0;
            let id = rng.personal_id(province3, year, male);
            let (middle, given) = if male {
                (*rng.pick(&MIDDLE_M), *rng.pick(&GIVEN_M))
            } else {
                (*rng.pick(&MIDDLE_F), *rng.pick(&GIVEN_F))
            };
            let name = format!("{} {middle} {given}", rng.pick(&FAMILY));
            let month = 1 + rng.below(12);
            let day = 1 + rng.below(28);
            let district = format!("{:03}", rng.below(1000));
            let commune = format!("{:05}", rng.below(100_000));
            let detail = format!("Số {} {}", 1 + rng.below(300), rng.pick(&STREETS));
            citizens.insert(
                id.clone(),
                NativeCitizen {
                    so_dinh_danh: id,
                    ho_ten: name,
                    ngay_sinh: format!("{year}{month:02}{day:02}"),
                    kieu_ngay_sinh: 0,
                    gioi_tinh: if male { 1 } else { 2 },
                    ma_dan_toc: format!("{:02}", 1 + rng.below(54)),
                    ma_tinh_khai_sinh: province.to_owned(),
                    thuong_tru: address(province, &district, &commune, &detail),
                    noi_o_hien_tai: None,
                    so_cmnd: None,
                    hon_nhan: 1 + rng.below(4) as u8,
                },
            );
        }
        Self { citizens }
    }

    pub fn get(&self, personal_id: &str) -> Option<&NativeCitizen> {
        self.citizens.get(personal_id)
    }

    pub fn len(&self) -> usize {
        self.citizens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.citizens.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &NativeCitizen> {
        self.citizens.values()
    }
}

/// The adapter in front of the registry.
#[derive(Debug)]
pub struct PopulationAdapter {
    provider: Member,
    registry: Registry,
}

impl PopulationAdapter {
    #[allow(clippy::expect_used)]
    pub fn new(registry: Registry) -> Self {
        Self {
            provider: PROVIDER
                .parse()
                .expect("the provider constant is well formed"),
            registry,
        }
    }

    fn answer(&self, req: &AdapterRequest) -> Result<Value, AdapterError> {
        let id = req.payload["personal_id"].as_str().unwrap_or_default();
        let found = self.registry.get(id);
        match req.service.as_str() {
            "citizen.lookup" => Ok(match found {
                Some(c) => json!({"found": true, "citizen": c.to_national()}),
                None => json!({"found": false}),
            }),
            "citizen.verify" => {
                let matched = found.is_some_and(|c| {
                    let national = c.to_national();
                    national["full_name"] == req.payload["full_name"]
                        && national["birth_date"] == req.payload["birth_date"]
                });
                Ok(json!({"match": matched}))
            }
            other => Err(AdapterError::UnknownService(other.to_owned())),
        }
    }
}

impl Adapter for PopulationAdapter {
    fn provider(&self) -> &Member {
        &self.provider
    }

    fn services(&self) -> Vec<ServiceSpec> {
        vec![
            ServiceSpec::query("citizen.lookup", 1),
            ServiceSpec::query("citizen.verify", 1),
            ServiceSpec::event("citizen.address_changed", 1),
        ]
    }

    fn handle<'a>(&'a self, request: &'a AdapterRequest) -> HandlerFuture<'a> {
        Box::pin(async move { self.answer(request) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hub_core::schema::Catalog;

    #[test]
    fn every_record_converts_to_a_valid_national_record() {
        let catalog = Catalog::builtin().unwrap();
        let registry = Registry::synthetic(42, 300);
        assert_eq!(registry.len(), 303);
        for c in registry.iter() {
            let answer = json!({"found": true, "citizen": c.to_national()});
            catalog
                .validate("services/citizen.lookup/v1/response", &answer)
                .unwrap_or_else(|e| panic!("{}: {e:?}", c.so_dinh_danh));
        }
    }

    #[test]
    fn generation_is_deterministic() {
        let a: Vec<_> = Registry::synthetic(7, 50).iter().cloned().collect();
        let b: Vec<_> = Registry::synthetic(7, 50).iter().cloned().collect();
        assert_eq!(a, b);
    }

    #[test]
    fn year_only_birth_dates_say_so() {
        let c = Registry::synthetic(1, 0)
            .get("048201000456")
            .unwrap()
            .to_national();
        assert_eq!(c["birth_date"], "2001-01-01");
        assert_eq!(c["birth_date_precision"], "year");
    }
}
