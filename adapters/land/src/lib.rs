//! Reference adapter for a synthetic land registry.
//!
//! The registry keys parcels by commune code, map sheet and parcel number,
//! keeps areas in square decimetres (integers), dates as `dd/MM/yyyy` and a
//! use term of `"Lâu dài"` for long-term use. The adapter converts that to
//! the national schema for `parcel.lookup` and `parcels.by_holder`.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use hub_adapter_sdk::synthetic::SplitMix64;
use hub_adapter_sdk::{Adapter, AdapterError, AdapterRequest, HandlerFuture, ServiceSpec};
use hub_core::ids::Member;
use serde_json::{Value, json};

/// The registry's member identity.
pub const PROVIDER: &str = "000.00.00.G13/land-registry";

/// A rights holder as the registry stores it: `("CD", id, name)` for a
/// citizen (công dân), `("DN", code, name)` for an enterprise.
pub type NativeHolder = (&'static str, String, String);

/// A parcel as the native registry stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NativeParcel {
    pub ma_xa: String,
    pub so_to: u32,
    pub so_thua: u32,
    pub dien_tich_dm2: u64,
    pub dia_chi: String,
    /// (purpose code, area in dm², term: "Lâu dài" or dd/MM/yyyy, origin)
    pub muc_dich: Vec<(&'static str, u64, String, String)>,
    /// (serial, issue date dd/MM/yyyy)
    pub gcn: Option<(String, String)>,
    pub chu_su_dung: Vec<NativeHolder>,
}

fn m2(dm2: u64) -> String {
    let (whole, frac) = (dm2 / 100, dm2 % 100);
    if frac == 0 {
        whole.to_string()
    } else {
        format!("{whole}.{frac:02}")
            .trim_end_matches('0')
            .to_owned()
    }
}

fn iso_date(dd_mm_yyyy: &str) -> String {
    match dd_mm_yyyy.split('/').collect::<Vec<_>>().as_slice() {
        [d, m, y] => format!("{y}-{m}-{d}"),
        _ => dd_mm_yyyy.to_owned(),
    }
}

impl NativeParcel {
    /// The national-schema form of this parcel.
    pub fn to_national(&self) -> Value {
        let mut p = json!({
            "commune_code": self.ma_xa,
            "map_sheet": self.so_to,
            "parcel_number": self.so_thua,
            "area_m2": m2(self.dien_tich_dm2),
            "address": self.dia_chi,
            "uses": self.muc_dich.iter().map(|(code, area, term, origin)| json!({
                "purpose": code,
                "area_m2": m2(*area),
                "term": if term == "Lâu dài" { "long_term".to_owned() } else { iso_date(term) },
                "origin": origin,
            })).collect::<Vec<_>>(),
            "holders": self.chu_su_dung.iter().map(|(kind, id, name)| if *kind == "DN" {
                json!({"kind": "enterprise", "enterprise_code": id, "name": name})
            } else {
                json!({"kind": "citizen", "personal_id": id, "name": name})
            }).collect::<Vec<_>>(),
        });
        if let Some((serial, date)) = &self.gcn {
            p["certificate"] = json!({"serial": serial, "issue_date": iso_date(date)});
        }
        p
    }

    fn key(&self) -> (String, u32, u32) {
        (self.ma_xa.clone(), self.so_to, self.so_thua)
    }
}

const USES: [&str; 5] = ["ONT", "ODT", "LUC", "CLN", "BHK"];

/// The synthetic registry: fixed parcels, then generated ones.
#[derive(Debug, Clone)]
pub struct Registry {
    parcels: BTreeMap<(String, u32, u32), NativeParcel>,
}

impl Registry {
    /// The fixed parcels every demo and test can rely on; their holders are
    /// the population and enterprise registries' fixtures.
    pub fn fixtures() -> Vec<NativeParcel> {
        vec![
            NativeParcel {
                ma_xa: "00004".into(),
                so_to: 12,
                so_thua: 345,
                dien_tich_dm2: 12_050,
                dia_chi: "Số 12 phố Phúc Xá, phường Phúc Xá, quận Ba Đình, Hà Nội".into(),
                muc_dich: vec![("ODT", 12_050, "Lâu dài".into(), "Nhận chuyển nhượng".into())],
                gcn: Some(("CS01234567".into(), "20/10/2016".into())),
                chu_su_dung: vec![("CD", "001085012345".into(), "Nguyễn Văn An".into())],
            },
            NativeParcel {
                ma_xa: "26734".into(),
                so_to: 5,
                so_thua: 78,
                dien_tich_dm2: 250_000,
                dia_chi: "Số 120 đường Nguyễn Trãi, Hồ Chí Minh".into(),
                muc_dich: vec![(
                    "TMD",
                    250_000,
                    "31/12/2058".into(),
                    "Nhà nước cho thuê đất trả tiền hằng năm".into(),
                )],
                gcn: Some(("DA00098765".into(), "05/03/2009".into())),
                chu_su_dung: vec![(
                    "DN",
                    "0304567898".into(),
                    "Công ty Cổ phần Vận tải Phương Nam".into(),
                )],
            },
        ]
    }

    /// The fixtures and `generated` more from `seed`, held by the
    /// population fixtures' first citizen or by no one known.
    pub fn synthetic(seed: u64, generated: usize) -> Self {
        let mut rng = SplitMix64::new(seed);
        let mut parcels: BTreeMap<_, _> =
            Self::fixtures().into_iter().map(|p| (p.key(), p)).collect();
        while parcels.len() < generated + 2 {
            let province3 = rng.province();
            let year = 1950 + rng.below(50) as i32;
            let male = rng.below(2) == 0;
            let holder_id = rng.personal_id(province3, year, male);
            let area = 5_000 + rng.below(500_000);
            let purpose = *rng.pick(&USES);
            let p = NativeParcel {
                ma_xa: format!("{:05}", rng.below(100_000)),
                so_to: 1 + rng.below(60) as u32,
                so_thua: 1 + rng.below(900) as u32,
                dien_tich_dm2: area,
                dia_chi: format!(
                    "Thửa {} tờ bản đồ số {}",
                    1 + rng.below(900),
                    1 + rng.below(60)
                ),
                muc_dich: vec![(
                    purpose,
                    area,
                    "Lâu dài".into(),
                    "Công nhận quyền sử dụng đất".into(),
                )],
                gcn: None,
                chu_su_dung: vec![("CD", holder_id, "Hoàng Văn Nam".into())],
            };
            parcels.insert(p.key(), p);
        }
        Self { parcels }
    }

    pub fn get(&self, commune: &str, sheet: u32, parcel: u32) -> Option<&NativeParcel> {
        self.parcels.get(&(commune.to_owned(), sheet, parcel))
    }

    /// Every parcel one holder (personal ID or enterprise code) holds.
    pub fn by_holder(&self, id: &str) -> Vec<&NativeParcel> {
        self.parcels
            .values()
            .filter(|p| p.chu_su_dung.iter().any(|(_, h, _)| h == id))
            .collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = &NativeParcel> {
        self.parcels.values()
    }
}

/// The adapter in front of the registry.
#[derive(Debug)]
pub struct LandAdapter {
    provider: Member,
    registry: Registry,
}

impl LandAdapter {
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
        let p = &req.payload;
        match req.service.as_str() {
            "parcel.lookup" => {
                let sheet = p["map_sheet"]
                    .as_u64()
                    .and_then(|v| u32::try_from(v).ok())
                    .unwrap_or(0);
                let number = p["parcel_number"]
                    .as_u64()
                    .and_then(|v| u32::try_from(v).ok())
                    .unwrap_or(0);
                let commune = p["commune_code"].as_str().unwrap_or_default();
                Ok(match self.registry.get(commune, sheet, number) {
                    Some(parcel) => json!({"found": true, "parcel": parcel.to_national()}),
                    None => json!({"found": false}),
                })
            }
            "parcels.by_holder" => {
                let id = p["personal_id"]
                    .as_str()
                    .or(p["enterprise_code"].as_str())
                    .unwrap_or_default();
                let parcels: Vec<Value> = self
                    .registry
                    .by_holder(id)
                    .into_iter()
                    .map(NativeParcel::to_national)
                    .collect();
                Ok(json!({"parcels": parcels}))
            }
            other => Err(AdapterError::UnknownService(other.to_owned())),
        }
    }
}

impl Adapter for LandAdapter {
    fn provider(&self) -> &Member {
        &self.provider
    }

    fn services(&self) -> Vec<ServiceSpec> {
        vec![
            ServiceSpec::query("parcel.lookup", 1),
            ServiceSpec::query("parcels.by_holder", 1),
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
    fn every_parcel_converts_to_a_valid_national_record() {
        let catalog = Catalog::builtin().unwrap();
        for p in Registry::synthetic(42, 200).iter() {
            let answer = json!({"found": true, "parcel": p.to_national()});
            catalog
                .validate("services/parcel.lookup/v1/response", &answer)
                .unwrap_or_else(|e| panic!("{:?}: {e:?}", p.key()));
        }
    }

    #[test]
    fn holders_find_their_parcels() {
        let r = Registry::synthetic(1, 10);
        assert_eq!(r.by_holder("001085012345").len(), 1);
        assert_eq!(r.by_holder("0304567898").len(), 1);
        assert_eq!(m2(12_050), "120.5");
    }
}
