//! Reference adapter for a synthetic enterprise registry.
//!
//! The registry keeps records the way the national business-registration
//! API shows them: Vietnamese labels for type and status, dates as
//! `dd/MM/yyyy`, charter capital as a number with three decimals, `Y`/`N`
//! for the main business line. The adapter converts them to the national
//! schema for `enterprise.lookup`, and declares the event
//! `enterprise.registered`, which the registry publishes through the hub.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use hub_adapter_sdk::synthetic::SplitMix64;
use hub_adapter_sdk::{Adapter, AdapterError, AdapterRequest, HandlerFuture, ServiceSpec};
use hub_core::ids::Member;
use serde_json::{Value, json};

/// The registry's member identity.
pub const PROVIDER: &str = "000.00.00.G09/enterprise-registry";

/// An enterprise as the native registry stores it.
#[derive(Debug, Clone, PartialEq)]
pub struct NativeEnterprise {
    pub ma_so_doanh_nghiep: String,
    pub ten_doanh_nghiep: String,
    pub loai_hinh: &'static str,
    /// `dd/MM/yyyy`
    pub ngay_thanh_lap: String,
    pub tinh_trang: &'static str,
    /// VND, in thousandths (the registry's numeric(21,3) without a float).
    pub von_dieu_le_thousandths: u64,
    pub tru_so: (String, String, String, String),
    pub nguoi_dai_dien: Vec<(String, Option<String>, String)>,
    pub nganh_nghe: Vec<(String, String, char)>,
}

fn iso_date(dd_mm_yyyy: &str) -> String {
    let p: Vec<&str> = dd_mm_yyyy.split('/').collect();
    match p.as_slice() {
        [d, m, y] => format!("{y}-{m}-{d}"),
        _ => dd_mm_yyyy.to_owned(),
    }
}

fn decimal(thousandths: u64) -> String {
    let (whole, frac) = (thousandths / 1000, thousandths % 1000);
    if frac == 0 {
        whole.to_string()
    } else {
        format!("{whole}.{frac:03}")
            .trim_end_matches('0')
            .to_owned()
    }
}

impl NativeEnterprise {
    /// The national-schema form of this record.
    pub fn to_national(&self) -> Value {
        let (p, d, c, detail) = &self.tru_so;
        json!({
            "enterprise_code": self.ma_so_doanh_nghiep,
            "name": self.ten_doanh_nghiep,
            "type": match self.loai_hinh {
                "Công ty TNHH một thành viên" => "llc_one_member",
                "Công ty TNHH hai thành viên trở lên" => "llc_multi_member",
                "Công ty cổ phần" => "joint_stock",
                "Công ty hợp danh" => "partnership",
                _ => "private",
            },
            "founding_date": iso_date(&self.ngay_thanh_lap),
            "status": match self.tinh_trang {
                "Đang hoạt động" => "active",
                "Tạm ngừng kinh doanh" => "suspended",
                "Đang làm thủ tục giải thể" => "dissolving",
                "Đã giải thể" => "dissolved",
                _ => "bankrupt",
            },
            "charter_capital": decimal(self.von_dieu_le_thousandths),
            "head_office": {"province": p, "district": d, "commune": c, "detail": detail, "country": "VN"},
            "legal_representatives": self.nguoi_dai_dien.iter().map(|(name, id, position)| {
                let mut r = json!({"full_name": name, "position": position});
                if let Some(id) = id { r["personal_id"] = json!(id); }
                r
            }).collect::<Vec<_>>(),
            "business_lines": self.nganh_nghe.iter().map(|(code, name, main)| {
                json!({"vsic": code, "name": name, "main": *main == 'Y'})
            }).collect::<Vec<_>>(),
        })
    }
}

const TYPES: [&str; 5] = [
    "Công ty TNHH một thành viên",
    "Công ty TNHH hai thành viên trở lên",
    "Công ty cổ phần",
    "Công ty hợp danh",
    "Doanh nghiệp tư nhân",
];
const LINES: [(&str, &str); 6] = [
    ("6201", "Lập trình máy vi tính"),
    ("4620", "Bán buôn nông, lâm sản nguyên liệu"),
    ("1079", "Sản xuất thực phẩm khác chưa được phân vào đâu"),
    ("4933", "Vận tải hàng hóa bằng đường bộ"),
    ("5610", "Nhà hàng và các dịch vụ ăn uống phục vụ lưu động"),
    ("4101", "Xây dựng nhà để ở"),
];
const WORDS: [&str; 8] = [
    "Sao Mai",
    "Hồng Hà",
    "Phương Nam",
    "Bình Minh",
    "Trường Sơn",
    "Việt Tiến",
    "Hòa Phát Đạt",
    "Ánh Dương",
];

/// The synthetic registry: fixed enterprises, then generated ones.
#[derive(Debug, Clone)]
pub struct Registry {
    enterprises: BTreeMap<String, NativeEnterprise>,
}

impl Registry {
    /// The fixed enterprises every demo and test can rely on.
    pub fn fixtures() -> Vec<NativeEnterprise> {
        vec![
            NativeEnterprise {
                ma_so_doanh_nghiep: "0103456789".into(),
                ten_doanh_nghiep: "Công ty TNHH Phần mềm Sao Mai".into(),
                loai_hinh: TYPES[0],
                ngay_thanh_lap: "15/06/2015".into(),
                tinh_trang: "Đang hoạt động",
                von_dieu_le_thousandths: 5_000_000_000_000,
                tru_so: (
                    "01".into(),
                    "005".into(),
                    "00160".into(),
                    "Tầng 3, số 8 phố Duy Tân".into(),
                ),
                nguoi_dai_dien: vec![(
                    "Nguyễn Văn An".into(),
                    Some("001085012345".into()),
                    "Giám đốc".into(),
                )],
                nganh_nghe: vec![
                    ("6201".into(), LINES[0].1.into(), 'Y'),
                    ("4620".into(), LINES[1].1.into(), 'N'),
                ],
            },
            NativeEnterprise {
                ma_so_doanh_nghiep: "0304567898".into(),
                ten_doanh_nghiep: "Công ty Cổ phần Vận tải Phương Nam".into(),
                loai_hinh: TYPES[2],
                ngay_thanh_lap: "02/01/2008".into(),
                tinh_trang: "Đang hoạt động",
                von_dieu_le_thousandths: 25_000_000_000_500,
                tru_so: (
                    "79".into(),
                    "760".into(),
                    "26734".into(),
                    "Số 120 đường Nguyễn Trãi".into(),
                ),
                nguoi_dai_dien: vec![(
                    "Trần Thị Bích Ngọc".into(),
                    Some("079192000123".into()),
                    "Tổng giám đốc".into(),
                )],
                nganh_nghe: vec![("4933".into(), LINES[3].1.into(), 'Y')],
            },
        ]
    }

    /// The fixtures and `generated` more from `seed`.
    pub fn synthetic(seed: u64, generated: usize) -> Self {
        let mut rng = SplitMix64::new(seed);
        let mut enterprises: BTreeMap<String, NativeEnterprise> = Self::fixtures()
            .into_iter()
            .map(|e| (e.ma_so_doanh_nghiep.clone(), e))
            .collect();
        while enterprises.len() < generated + 2 {
            let code = rng.tax_code();
            let kind = *rng.pick(&TYPES);
            let (vsic, line) = *rng.pick(&LINES);
            let province = &rng.province()[1..];
            let founded = format!(
                "{:02}/{:02}/{}",
                1 + rng.below(28),
                1 + rng.below(12),
                1995 + rng.below(30)
            );
            let capital = (1 + rng.below(500)) * 100_000_000_000;
            let name = format!("{kind} {}", rng.pick(&WORDS));
            let detail = format!("Số {} đường số {}", 1 + rng.below(300), 1 + rng.below(30));
            let district = format!("{:03}", rng.below(1000));
            let commune = format!("{:05}", rng.below(100_000));
            enterprises.insert(
                code.clone(),
                NativeEnterprise {
                    ma_so_doanh_nghiep: code,
                    ten_doanh_nghiep: name,
                    loai_hinh: kind,
                    ngay_thanh_lap: founded,
                    tinh_trang: "Đang hoạt động",
                    von_dieu_le_thousandths: capital,
                    tru_so: (province.to_owned(), district, commune, detail),
                    nguoi_dai_dien: vec![("Phạm Minh Long".into(), None, "Giám đốc".into())],
                    nganh_nghe: vec![(vsic.into(), line.into(), 'Y')],
                },
            );
        }
        Self { enterprises }
    }

    pub fn get(&self, code: &str) -> Option<&NativeEnterprise> {
        self.enterprises.get(code)
    }

    pub fn iter(&self) -> impl Iterator<Item = &NativeEnterprise> {
        self.enterprises.values()
    }
}

/// The adapter in front of the registry.
#[derive(Debug)]
pub struct EnterpriseAdapter {
    provider: Member,
    registry: Registry,
}

impl EnterpriseAdapter {
    #[allow(clippy::expect_used)]
    pub fn new(registry: Registry) -> Self {
        Self {
            provider: PROVIDER
                .parse()
                .expect("the provider constant is well formed"),
            registry,
        }
    }
}

impl Adapter for EnterpriseAdapter {
    fn provider(&self) -> &Member {
        &self.provider
    }

    fn services(&self) -> Vec<ServiceSpec> {
        vec![
            ServiceSpec::query("enterprise.lookup", 1),
            ServiceSpec::event("enterprise.registered", 1),
        ]
    }

    fn handle<'a>(&'a self, request: &'a AdapterRequest) -> HandlerFuture<'a> {
        Box::pin(async move {
            if request.service.as_str() != "enterprise.lookup" {
                return Err(AdapterError::UnknownService(request.service.to_string()));
            }
            let code = request.payload["enterprise_code"]
                .as_str()
                .unwrap_or_default();
            Ok(match self.registry.get(code) {
                Some(e) => json!({"found": true, "enterprise": e.to_national()}),
                None => json!({"found": false}),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hub_core::schema::Catalog;

    #[test]
    fn every_record_converts_to_a_valid_national_record() {
        let catalog = Catalog::builtin().unwrap();
        for e in Registry::synthetic(42, 200).iter() {
            let answer = json!({"found": true, "enterprise": e.to_national()});
            catalog
                .validate("services/enterprise.lookup/v1/response", &answer)
                .unwrap_or_else(|err| panic!("{}: {err:?}", e.ma_so_doanh_nghiep));
        }
    }

    #[test]
    fn capital_keeps_its_thousandths() {
        assert_eq!(decimal(25_000_000_000_500), "25000000000.5");
        assert_eq!(decimal(5_000_000_000_000), "5000000000");
    }
}
