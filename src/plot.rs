//! Line and scatter charts as SVG and PNG, for the experiment report.
//!
//! A chart is a grid of panels; each panel holds named series. Log axes are drawn by
//! plotting log10 of the data on a linear axis and labelling ticks with the original
//! values, which keeps one code path for every axis kind and both output formats. The page
//! draws its live chart with the same code, as SVG text.

#[cfg(not(target_arch = "wasm32"))]
use std::path::Path;
#[cfg(not(target_arch = "wasm32"))]
use std::sync::OnceLock;

use anyhow::{anyhow, Result};
use plotters::coord::Shift;
use plotters::prelude::*;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mark {
    Line,
    Dashed,
    Dots,
}

#[derive(Clone, Debug)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub mark: Mark,
    /// Index into the palette; series with the same index share a color.
    pub color: usize,
}

#[derive(Clone, Debug, Default)]
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub log_x: bool,
    pub log_y: bool,
    /// Clip the y range to at most this (e.g. to keep a diverging curve from flattening
    /// the others).
    pub y_max: Option<f64>,
    pub series: Vec<Series>,
}

const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

pub fn color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// Loads a system sans-serif font once (both backends measure text with it). In a browser,
/// plotters measures text with the page's own fonts.
#[cfg(not(target_arch = "wasm32"))]
fn fonts() -> Result<()> {
    static READY: OnceLock<bool> = OnceLock::new();
    let ready = *READY.get_or_init(|| {
        let candidates = [
            std::env::var("SELFISH_FONT").unwrap_or_default(),
            "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf".into(),
            "/usr/share/fonts/TTF/DejaVuSans.ttf".into(),
            "/usr/share/fonts/dejavu/DejaVuSans.ttf".into(),
            "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf".into(),
            "/Library/Fonts/Arial.ttf".into(),
            "/System/Library/Fonts/Supplemental/Arial.ttf".into(),
            "C:\\Windows\\Fonts\\arial.ttf".into(),
        ];
        for path in candidates.iter().filter(|p| !p.is_empty()) {
            if let Ok(bytes) = std::fs::read(path) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    });
    if !ready {
        return Err(anyhow!(
            "no TrueType font for chart labels: install one (Debian: `apt-get install \
             fonts-dejavu-core`) or point SELFISH_FONT at a .ttf file"
        ));
    }
    Ok(())
}

#[cfg(target_arch = "wasm32")]
fn fonts() -> Result<()> {
    Ok(())
}

/// Columns actually used and the picture's size for a grid of panels.
fn layout(cols: usize, panels: &[Panel]) -> (usize, (u32, u32)) {
    let cols = cols.clamp(1, panels.len().max(1));
    let rows = panels.len().div_ceil(cols).max(1);
    (cols, (cols as u32 * 520, rows as u32 * 380 + 40))
}

/// Writes `<stem>.svg` and `<stem>.png`.
#[cfg(not(target_arch = "wasm32"))]
pub fn chart(stem: &Path, title: &str, cols: usize, panels: &[Panel]) -> Result<()> {
    fonts()?;
    let (cols, size) = layout(cols, panels);
    let svg = stem.with_extension("svg");
    {
        let root = SVGBackend::new(&svg, size).into_drawing_area();
        draw(&root, title, cols, panels)?;
        root.present()
            .map_err(|e| anyhow!("cannot write '{}': {e}", svg.display()))?;
    }
    let png = stem.with_extension("png");
    let root = BitMapBackend::new(&png, size).into_drawing_area();
    draw(&root, title, cols, panels)?;
    root.present()
        .map_err(|e| anyhow!("cannot write '{}': {e}", png.display()))?;
    Ok(())
}

/// The chart as SVG text (the page's live chart).
pub fn svg(title: &str, cols: usize, panels: &[Panel]) -> Result<String> {
    fonts()?;
    let (cols, size) = layout(cols, panels);
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, size).into_drawing_area();
        draw(&root, title, cols, panels)?;
        root.present()
            .map_err(|e| anyhow!("drawing a chart failed: {e}"))?;
    }
    Ok(out)
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    cols: usize,
    panels: &[Panel],
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("drawing a chart failed: {e}");
    root.fill(&WHITE).map_err(err)?;
    let root = root.titled(title, ("sans-serif", 22)).map_err(err)?;
    let rows = panels.len().div_ceil(cols).max(1);
    for (area, panel) in root.split_evenly((rows, cols)).iter().zip(panels) {
        draw_panel(area, panel).map_err(err)?;
    }
    Ok(())
}

fn tf(log: bool, v: f64) -> f64 {
    if log {
        v.log10()
    } else {
        v
    }
}

fn label(log: bool, v: f64) -> String {
    if !log {
        return if v.abs() >= 1e4 || (v != 0.0 && v.abs() < 1e-2) {
            format!("{v:.1e}")
        } else {
            format!("{v:.3}")
                .trim_end_matches('0')
                .trim_end_matches('.')
                .to_string()
        };
    }
    let x = 10f64.powf(v);
    if (0.01..10000.0).contains(&x) {
        // three significant digits
        let scale = 10f64.powi(2 - x.log10().floor() as i32);
        format!("{}", (x * scale).round() / scale)
    } else {
        format!("{x:.1e}")
    }
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    p: &Panel,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let pts: Vec<(f64, f64)> = p
        .series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .filter(|&(x, y)| {
            x.is_finite()
                && y.is_finite()
                && (!p.log_x || x > 0.0)
                && (!p.log_y || y > 0.0)
                && p.y_max.is_none_or(|m| y <= m)
        })
        .map(|(x, y)| (tf(p.log_x, x), tf(p.log_y, y)))
        .collect();
    let (mut x0, mut x1, mut y0, mut y1) = pts.iter().fold(
        (
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ),
        |(a, b, c, d), &(x, y)| (a.min(x), b.max(x), c.min(y), d.max(y)),
    );
    if !x0.is_finite() {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    let pad = |lo: f64, hi: f64| {
        let d = if hi > lo { (hi - lo) * 0.05 } else { 0.5 };
        (lo - d, hi + d)
    };
    let (x0, x1) = pad(x0, x1);
    let (y0, y1) = pad(y0, y1);
    let mut chart = ChartBuilder::on(area)
        .caption(&p.title, ("sans-serif", 16))
        .margin(8)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(x0..x1, y0..y1)?;
    let (lx, ly) = (p.log_x, p.log_y);
    chart
        .configure_mesh()
        // no minor grid: cleaner, and a fraction of the PNG's size
        .light_line_style(TRANSPARENT)
        .x_desc(p.x_label.as_str())
        .y_desc(p.y_label.as_str())
        .x_label_formatter(&|v| label(lx, *v))
        .y_label_formatter(&|v| label(ly, *v))
        .label_style(("sans-serif", 12))
        .draw()?;
    for s in &p.series {
        let c = color(s.color);
        let data: Vec<(f64, f64)> = s
            .points
            .iter()
            .copied()
            .filter(|&(x, y)| {
                x.is_finite()
                    && y.is_finite()
                    && (!lx || x > 0.0)
                    && (!ly || y > 0.0)
                    && p.y_max.is_none_or(|m| y <= m)
            })
            .map(|(x, y)| (tf(lx, x), tf(ly, y)))
            .collect();
        let anno = match s.mark {
            Mark::Line => chart.draw_series(LineSeries::new(data, c.stroke_width(2)))?,
            Mark::Dashed => {
                chart.draw_series(DashedLineSeries::new(data, 6, 4, c.stroke_width(2)))?
            }
            Mark::Dots => chart.draw_series(
                data.into_iter()
                    .map(|xy| Circle::new(xy, 3, c.mix(0.7).filled())),
            )?,
        };
        if !s.name.is_empty() {
            anno.label(s.name.as_str())
                .legend(move |(x, y)| Rectangle::new([(x, y - 4), (x + 14, y + 4)], c.filled()));
        }
    }
    if p.series.iter().any(|s| !s.name.is_empty()) {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK.mix(0.3))
            .label_font(("sans-serif", 11))
            .position(SeriesLabelPosition::UpperRight)
            .draw()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_svg_and_png() {
        let dir = std::env::temp_dir().join(format!("selfish-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let panel = Panel {
            title: "ppl".into(),
            x_label: "T".into(),
            y_label: "perplexity".into(),
            log_y: true,
            series: vec![
                Series {
                    name: "plain".into(),
                    points: (1..=200)
                        .map(|k| (k as f64 / 100.0, 5.0 + 1.0 / k as f64))
                        .collect(),
                    mark: Mark::Line,
                    color: 0,
                },
                Series {
                    name: "dots".into(),
                    points: vec![(0.5, 7.0), (1.0, f64::NAN), (1.5, 6.0)],
                    mark: Mark::Dots,
                    color: 1,
                },
            ],
            ..Default::default()
        };
        chart(&dir.join("c"), "test", 2, &[panel.clone(), panel.clone()]).unwrap();
        let svg = std::fs::read_to_string(dir.join("c.svg")).unwrap();
        assert!(svg.contains("<svg") && svg.contains("plain"));
        assert_eq!(super::svg("test", 2, &[panel.clone(), panel]).unwrap(), svg);
        let bytes = std::fs::read(dir.join("c.png")).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        if std::env::var_os("KEEP_PLOT").is_none() {
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }
}
