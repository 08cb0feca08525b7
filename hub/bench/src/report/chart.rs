//! The report's two charts as self-contained SVG: throughput per scenario
//! against its target, and latency percentiles against offered load.

use std::fmt::Write;

/// One bar: a label, the measured value and the target, if any.
#[derive(Debug, Clone)]
pub struct Bar {
    pub label: String,
    pub value: f64,
    pub target: Option<f64>,
}

/// One line of the latency chart.
#[derive(Debug, Clone)]
pub struct Series {
    pub label: String,
    /// (offered per second, milliseconds)
    pub points: Vec<(f64, f64)>,
    pub dashed: bool,
    pub color: &'static str,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn head(out: &mut String, width: u32, height: u32, title: &str) {
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{x}" y="22" text-anchor="middle" font-size="15" font-weight="bold">{title}</text>
"#,
        x = width / 2,
        title = esc(title),
    );
}

/// Horizontal bars, one per scenario, each with its target marked.
pub fn bars(title: &str, unit: &str, bars: &[Bar]) -> String {
    let (left, right, top, row) = (250.0, 150.0, 40.0, 34.0);
    let width = 900.0;
    let height = top + row * bars.len() as f64 + 40.0;
    let max = bars
        .iter()
        .flat_map(|b| [b.value, b.target.unwrap_or(0.0)])
        .fold(1.0_f64, f64::max)
        * 1.1;
    let scale = (width - left - right) / max;
    let mut out = String::new();
    head(&mut out, width as u32, height as u32, title);
    for (i, b) in bars.iter().enumerate() {
        let y = top + row * i as f64;
        let w = (b.value * scale).max(1.0);
        let met = b.target.is_none_or(|t| b.value >= t);
        let fill = if met { "#3a7d44" } else { "#c0504d" };
        let _ = write!(
            out,
            r##"<text x="{lx}" y="{ty}" text-anchor="end">{label}</text>
<rect x="{left}" y="{ry}" width="{w:.1}" height="{h}" fill="{fill}"/>
<text x="{vx:.1}" y="{ty}">{value:.0} {unit}</text>
"##,
            lx = left - 8.0,
            ty = y + row / 2.0 + 4.0,
            label = esc(&b.label),
            ry = y + 6.0,
            h = row - 12.0,
            vx = left + w + 6.0,
            value = b.value,
            unit = esc(unit),
        );
        if let Some(t) = b.target {
            let tx = left + t * scale;
            let _ = writeln!(
                out,
                r##"<line x1="{tx:.1}" x2="{tx:.1}" y1="{y1}" y2="{y2}" stroke="black" stroke-width="2" stroke-dasharray="4 2"/>"##,
                y1 = y + 2.0,
                y2 = y + row - 2.0,
            );
        }
    }
    let _ = write!(
        out,
        r##"<text x="{left}" y="{ly}" fill="#555">green: target met, red: not met; dashed mark: the target</text>
</svg>
"##,
        ly = height - 14.0,
    );
    out
}

/// Lines of latency (log scale, ms) against offered load.
pub fn latency(title: &str, series: &[Series], threshold_ms: Option<f64>) -> String {
    let (left, right, top, bottom) = (95.0, 200.0, 40.0, 50.0);
    let (width, height) = (900.0, 460.0);
    let points = || series.iter().flat_map(|s| s.points.iter().copied());
    let max_x = points().map(|p| p.0).fold(1.0_f64, f64::max) * 1.05;
    let hi = points()
        .map(|p| p.1)
        .chain(threshold_ms)
        .fold(1.0_f64, f64::max);
    let lo = points().map(|p| p.1).fold(hi, f64::min).max(0.01);
    let (d_lo, d_hi) = (
        lo.log10().floor(),
        hi.log10().ceil().max(lo.log10().floor() + 1.0),
    );
    let plot_w = width - left - right;
    let plot_h = height - top - bottom;
    let x = |v: f64| left + v / max_x * plot_w;
    let y = |ms: f64| top + plot_h - (ms.max(0.01).log10() - d_lo) / (d_hi - d_lo) * plot_h;
    let mut out = String::new();
    head(&mut out, width as u32, height as u32, title);
    // Decades on the y axis, five ticks on the x axis.
    let mut d = d_lo;
    while d <= d_hi {
        let ms = 10f64.powf(d);
        let _ = write!(
            out,
            r##"<line x1="{left}" x2="{x2}" y1="{yy:.1}" y2="{yy:.1}" stroke="#ddd"/>
<text x="{tx}" y="{ty:.1}" text-anchor="end">{ms} ms</text>
"##,
            x2 = left + plot_w,
            yy = y(ms),
            tx = left - 6.0,
            ty = y(ms) + 4.0,
        );
        d += 1.0;
    }
    // Ticks at round numbers: 1, 2 or 5 times a power of ten, about five.
    let rough = max_x / 5.0;
    let decade = 10f64.powf(rough.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * decade)
        .find(|s| *s >= rough)
        .unwrap_or(rough);
    let mut v = 0.0;
    while v <= max_x {
        let _ = write!(
            out,
            r##"<line x1="{xx:.1}" x2="{xx:.1}" y1="{top}" y2="{yb}" stroke="#eee"/>
<text x="{xx:.1}" y="{ty}" text-anchor="middle">{v:.0}</text>
"##,
            xx = x(v),
            yb = top + plot_h,
            ty = top + plot_h + 16.0,
        );
        v += step;
    }
    let _ = write!(
        out,
        r##"<text x="{cx}" y="{ty}" text-anchor="middle">offered load (exchanges/s)</text>
<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#888"/>
"##,
        cx = left + plot_w / 2.0,
        ty = height - 12.0,
    );
    if let Some(t) = threshold_ms {
        let _ = write!(
            out,
            r##"<line x1="{left}" x2="{x2}" y1="{yy:.1}" y2="{yy:.1}" stroke="#c0504d" stroke-dasharray="6 3"/>
<text x="{x2}" y="{ty:.1}" fill="#c0504d" text-anchor="end">p99 target {t} ms</text>
"##,
            x2 = left + plot_w,
            yy = y(t),
            ty = y(t) - 4.0,
        );
    }
    for (i, s) in series.iter().enumerate() {
        let path: Vec<String> = s
            .points
            .iter()
            .map(|&(px, py)| format!("{:.1},{:.1}", x(px), y(py)))
            .collect();
        let dash = if s.dashed {
            r#" stroke-dasharray="5 4""#
        } else {
            ""
        };
        let _ = writeln!(
            out,
            r##"<polyline points="{pts}" fill="none" stroke="{c}" stroke-width="2"{dash}/>"##,
            pts = path.join(" "),
            c = s.color,
        );
        for &(px, py) in &s.points {
            let _ = writeln!(
                out,
                r##"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{}"/>"##,
                x(px),
                y(py),
                s.color
            );
        }
        let ly = top + 14.0 + 20.0 * i as f64;
        let lx = left + plot_w + 14.0;
        let _ = write!(
            out,
            r##"<line x1="{lx}" x2="{lx2}" y1="{ly}" y2="{ly}" stroke="{c}" stroke-width="2"{dash}/>
<text x="{tx}" y="{ty}">{label}</text>
"##,
            lx2 = lx + 24.0,
            c = s.color,
            tx = lx + 30.0,
            ty = ly + 4.0,
            label = esc(&s.label),
        );
    }
    out.push_str("</svg>\n");
    out
}
