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
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::{CoordTranslate, Shift};
use plotters::prelude::*;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mark {
    Line,
    Dashed,
    Dots,
}

#[derive(Clone, Debug)]
pub struct Series {
    /// In the chart's legend; empty: not listed.
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub mark: Mark,
    /// Index into the palette; series with the same index share a color.
    pub color: usize,
    /// A shaded range around the line (e.g. a 95% interval over seeds).
    pub band: Option<Band>,
}

/// `(x, low, high)` points of a shaded range.
#[derive(Clone, Debug)]
pub struct Band(pub Vec<(f64, f64, f64)>);

/// One row of an interval chart: a run's per-seed values, their mean and its interval.
#[derive(Clone, Debug)]
pub struct Interval {
    pub name: String,
    pub color: usize,
    pub points: Vec<f64>,
    pub mean: f64,
    pub ci95: Option<(f64, f64)>,
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

/// Series `i`'s colour: the ten palette colours, then the same ten lighter, then darker, so
/// each of a table's 22 runs has a look of its own (with [`dash`]).
fn color(i: usize) -> RGBColor {
    let RGBColor(r, g, b) = PALETTE[i % PALETTE.len()];
    let toward = |c: u8, to: f64, w: f64| (c as f64 + (to - c as f64) * w).round() as u8;
    let shade = |to: f64, w: f64| RGBColor(toward(r, to, w), toward(g, to, w), toward(b, to, w));
    match (i / PALETTE.len()) % 3 {
        0 => RGBColor(r, g, b),
        1 => shade(255.0, 0.4),
        _ => shade(0.0, 0.35),
    }
}

/// Series `i`'s `(dash, gap)` pattern in pixels: the first ten solid (dashed when the mark
/// asks for it), the lighter ten dashed, the darker ten dotted; `None` is a solid line.
fn dash(i: usize, mark: Mark) -> Option<(u32, u32)> {
    match (mark, (i / PALETTE.len()) % 3) {
        (Mark::Line, 0) => None,
        (Mark::Line, 1) | (Mark::Dashed, 0) => Some((7, 4)),
        _ => Some((2, 3)),
    }
}

/// A line in series `i`'s look, in any coordinates (the chart's or the legend's pixels).
fn stroke<DB: DrawingBackend, CT: CoordTranslate>(
    area: &DrawingArea<DB, CT>,
    points: Vec<CT::From>,
    i: usize,
    mark: Mark,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>>
where
    CT::From: Clone,
{
    let c = color(i);
    match dash(i, mark) {
        None => area.draw(&PathElement::new(points, c.stroke_width(2))),
        Some((on, off)) => area.draw(&plotters::element::DashedPathElement::new(
            points,
            on,
            off,
            c.stroke_width(2),
        )),
    }
}

/// Loads a system sans-serif font once (both backends measure text with it).
#[cfg(not(target_arch = "wasm32"))]
fn font_ready() -> bool {
    static READY: OnceLock<bool> = OnceLock::new();
    *READY.get_or_init(|| {
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
    })
}

/// In a browser, plotters measures text with the page's own fonts.
#[cfg(target_arch = "wasm32")]
fn font_ready() -> bool {
    true
}

/// Width of the legend column beside the panels.
const LEGEND_W: u32 = 210;
/// Height of one legend entry.
const LEGEND_ROW: u32 = 20;

/// Something drawn the same way into any plotters backend (an SVG and a PNG).
trait Painter {
    fn paint<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static;
}

fn fail<E: std::error::Error + Send + Sync>(e: DrawingAreaErrorKind<E>) -> anyhow::Error {
    anyhow!("drawing a chart failed: {e}")
}

struct Grid<'a> {
    title: &'a str,
    cols: usize,
    rows: usize,
    panels: &'a [Panel],
    legend: Vec<(String, usize, Mark)>,
    width: u32,
}

impl Painter for Grid<'_> {
    fn paint<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        let root = root.titled(self.title, ("sans-serif", 22)).map_err(fail)?;
        let (grid, side) = root.split_horizontally(self.width);
        for (area, panel) in grid
            .split_evenly((self.rows, self.cols))
            .iter()
            .zip(self.panels)
        {
            draw_panel(area, panel).map_err(fail)?;
        }
        draw_legend(&side, &self.legend).map_err(fail)
    }
}

#[cfg(not(target_arch = "wasm32"))]
struct Rows<'a> {
    title: &'a str,
    x_label: &'a str,
    rows: &'a [Interval],
}

#[cfg(not(target_arch = "wasm32"))]
impl Painter for Rows<'_> {
    fn paint<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        let root = root.titled(self.title, ("sans-serif", 18)).map_err(fail)?;
        draw_intervals(&root, self.x_label, self.rows).map_err(fail)
    }
}

/// Panels in a grid of `cols` columns and one legend of every named series beside them, so
/// no legend covers data; and the picture's size.
fn grid<'a>(title: &'a str, cols: usize, panels: &'a [Panel]) -> (Grid<'a>, (u32, u32)) {
    let cols = cols.clamp(1, panels.len().max(1));
    let rows = panels.len().div_ceil(cols).max(1);
    let legend = legend_of(panels);
    let extra = if legend.is_empty() { 0 } else { LEGEND_W };
    let width = cols as u32 * 520;
    // Taller than the panels need when the legend's rows need it (a table of 22 runs).
    let height = (rows as u32 * 380 + 40).max(legend.len() as u32 * LEGEND_ROW + 60);
    let size = (width + extra, height);
    let g = Grid {
        title,
        cols,
        rows,
        panels,
        legend,
        width,
    };
    (g, size)
}

/// Writes `<stem>.svg` and `<stem>.png` of a [`grid`].
#[cfg(not(target_arch = "wasm32"))]
pub fn chart(stem: &Path, title: &str, cols: usize, panels: &[Panel]) -> Result<()> {
    let (g, size) = grid(title, cols, panels);
    render(stem, size, &g)
}

/// A [`grid`] as SVG text (the page's live chart).
pub fn svg(title: &str, cols: usize, panels: &[Panel]) -> Result<String> {
    if !font_ready() {
        return Err(no_font());
    }
    let (g, size) = grid(title, cols, panels);
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, size).into_drawing_area();
        root.fill(&WHITE).map_err(fail)?;
        g.paint(&root)?;
        root.present().map_err(fail)?;
    }
    Ok(out)
}

fn no_font() -> anyhow::Error {
    anyhow!(
        "no TrueType font for chart labels: install one (Debian: `apt-get install \
         fonts-dejavu-core`) or point SELFISH_FONT at a .ttf file"
    )
}

#[cfg(not(target_arch = "wasm32"))]
/// Writes `<stem>.svg` and `<stem>.png` for [`Interval`] rows: one row per run, its seeds as
/// dots, the mean as a bar and the 95% interval as a line with caps, on a log axis.
pub fn intervals(stem: &Path, title: &str, x_label: &str, rows: &[Interval]) -> Result<()> {
    let size = (900, 110 + 28 * rows.len() as u32);
    render(
        stem,
        size,
        &Rows {
            title,
            x_label,
            rows,
        },
    )
}

/// Draws the same picture into an SVG and a PNG.
#[cfg(not(target_arch = "wasm32"))]
fn render(stem: &Path, size: (u32, u32), p: &impl Painter) -> Result<()> {
    if !font_ready() {
        return Err(no_font());
    }
    let svg = stem.with_extension("svg");
    {
        let root = SVGBackend::new(&svg, size).into_drawing_area();
        root.fill(&WHITE).map_err(fail)?;
        p.paint(&root)?;
        root.present()
            .map_err(|e| anyhow!("cannot write '{}': {e}", svg.display()))?;
    }
    let png = stem.with_extension("png");
    let root = BitMapBackend::new(&png, size).into_drawing_area();
    root.fill(&WHITE).map_err(fail)?;
    p.paint(&root)?;
    root.present()
        .map_err(|e| anyhow!("cannot write '{}': {e}", png.display()))?;
    Ok(())
}

/// Every named series once, in order of first appearance.
fn legend_of(panels: &[Panel]) -> Vec<(String, usize, Mark)> {
    let mut v: Vec<(String, usize, Mark)> = Vec::new();
    for s in panels.iter().flat_map(|p| &p.series) {
        if !s.name.is_empty() && !v.iter().any(|l| l.0 == s.name) {
            v.push((s.name.clone(), s.color, s.mark));
        }
    }
    v
}

fn draw_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    items: &[(String, usize, Mark)],
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let style = ("sans-serif", 13).into_font().color(&BLACK);
    for (i, (name, color, mark)) in items.iter().enumerate() {
        let y = 40 + (LEGEND_ROW * i as u32) as i32;
        match mark {
            Mark::Dots => area.draw(&Circle::new((18, y), 4, self::color(*color).filled()))?,
            _ => stroke(area, vec![(6, y), (32, y)], *color, *mark)?,
        }
        area.draw(&Text::new(name.clone(), (38, y - 7), style.clone()))?;
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

/// Tick positions at round values between `lo` and `hi` (on a log axis both are log10 of the
/// data, and so are the ticks): steps of 1, 2 or 5 times a power of ten on a linear axis; on a
/// log axis the sparsest of a few sets of mantissas per decade that gives four ticks (three
/// when they are whole decades).
fn ticks(lo: f64, hi: f64, log: bool) -> Vec<f64> {
    if !(lo.is_finite() && hi.is_finite() && hi > lo) {
        return vec![];
    }
    if log {
        const SETS: [&[f64]; 4] = [
            &[1.0],
            &[1.0, 2.0, 5.0],
            &[1.0, 2.0, 3.0, 5.0, 7.0],
            &[1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0],
        ];
        let in_range = |set: &[f64]| -> Vec<f64> {
            (lo.floor() as i32..=hi.ceil() as i32)
                .flat_map(|d| set.iter().map(move |m| (m * 10f64.powi(d)).log10()))
                .filter(|t| (lo..=hi).contains(t))
                .collect()
        };
        let enough = |(k, t): &(usize, Vec<f64>)| t.len() >= if *k == 0 { 3 } else { 4 };
        if let Some((_, t)) = SETS.iter().map(|s| in_range(s)).enumerate().find(enough) {
            return t;
        }
        // Less than about a factor of 2: round values of the data itself.
        let (a, b) = (10f64.powf(lo), 10f64.powf(hi));
        return ticks(a, b, false).into_iter().map(f64::log10).collect();
    }
    // the step of 1, 2 or 5 times a power of ten that gives closest to six ticks
    let mag = 10f64.powf(((hi - lo) / 6.0).log10().floor());
    let count = |s: f64| (hi / s).floor() - (lo / s).ceil() + 1.0;
    let step = [0.5, 1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .min_by(|a, b| (count(*a) - 6.0).abs().total_cmp(&(count(*b) - 6.0).abs()))
        .unwrap_or(mag);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    (first..=last).map(|k| k as f64 * step).collect()
}

/// A linear axis over `f64` with its ticks from [`ticks`] (plotters' own would fall on
/// non-round values of an axis that holds log10 of the data).
struct Axis {
    inner: RangedCoordf64,
    ticks: Vec<f64>,
}

impl Axis {
    fn new(lo: f64, hi: f64, log: bool) -> Axis {
        Axis {
            inner: (lo..hi).into(),
            ticks: ticks(lo, hi, log),
        }
    }
}

impl Ranged for Axis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, v: &f64, limit: (i32, i32)) -> i32 {
        self.inner.map(v, limit)
    }

    fn key_points<H: KeyPointHint>(&self, hint: H) -> Vec<f64> {
        // no light (minor) grid lines
        if hint.weight().allow_light_points() {
            vec![]
        } else {
            self.ticks.clone()
        }
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.inner.range()
    }
}

/// `2e-3`, `1.5e5`: two significant digits, no trailing `.0`.
fn exponent(v: f64) -> String {
    format!("{v:.1e}").replace(".0e", "e")
}

fn label(log: bool, v: f64) -> String {
    if !log {
        return if v.abs() >= 1e4 || (v != 0.0 && v.abs() < 1e-2) {
            exponent(v)
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
        exponent(x)
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
        .build_cartesian_2d(Axis::new(x0, x1, p.log_x), Axis::new(y0, y1, p.log_y))?;
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
        if let Some(Band(band)) = &s.band {
            // Clamped to the panel (a two-seed interval can be far wider than the data).
            let y = |v: f64| {
                let t = if ly && v <= 0.0 { y0 } else { tf(ly, v) };
                if t.is_finite() {
                    t.clamp(y0, y1)
                } else {
                    y1
                }
            };
            let keep =
                |&&(x, lo, hi): &&(f64, f64, f64)| x.is_finite() && !lo.is_nan() && !hi.is_nan();
            let upper = band
                .iter()
                .filter(keep)
                .map(|&(x, _, hi)| (tf(lx, x), y(hi)));
            let lower = band
                .iter()
                .filter(keep)
                .rev()
                .map(|&(x, lo, _)| (tf(lx, x), y(lo)));
            let outline: Vec<(f64, f64)> = upper.chain(lower).collect();
            if outline.len() >= 3 {
                chart.draw_series(std::iter::once(Polygon::new(outline, c.mix(0.18).filled())))?;
            }
        }
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
        match s.mark {
            Mark::Dots => {
                chart.draw_series(
                    data.into_iter()
                        .map(|xy| Circle::new(xy, 3, c.mix(0.7).filled())),
                )?;
            }
            // one point draws no line (a run evaluated once)
            _ if data.len() == 1 => {
                chart.draw_series(std::iter::once(Circle::new(data[0], 3, c.filled())))?;
            }
            _ => stroke(chart.plotting_area(), data, s.color, s.mark)?,
        }
    }
    Ok(())
}

#[cfg(not(target_arch = "wasm32"))]
fn draw_intervals<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    x_label: &str,
    rows: &[Interval],
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let vals: Vec<f64> = rows
        .iter()
        .flat_map(|r| {
            r.points
                .iter()
                .copied()
                .chain(r.ci95.map(|c| c.0))
                .chain(r.ci95.map(|c| c.1))
        })
        .filter(|v| v.is_finite() && *v > 0.0)
        .collect();
    let lo = vals.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = vals.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    // A log axis when the rows span a factor of 3 or more (a whole table, margin 0 among
    // them); a linear one otherwise, whose ticks fall on round values.
    let log = hi / lo >= 3.0;
    let at = |v: f64| if log { v.log10() } else { v };
    let (lo, hi) = (at(lo), at(hi));
    let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) };
    let pad = ((hi - lo) * 0.06).max(if log { 0.02 } else { 0.01 * hi.abs() });
    let n = rows.len() as f64;
    let names: Vec<String> = rows.iter().map(|r| r.name.clone()).collect();
    let mut chart = ChartBuilder::on(area)
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(210)
        .build_cartesian_2d(Axis::new(lo - pad, hi + pad, log), -0.5..(n - 0.5))?;
    chart
        .configure_mesh()
        .light_line_style(TRANSPARENT)
        .y_labels(rows.len().max(1))
        .x_desc(x_label)
        .x_label_formatter(&|v| label(log, *v))
        .y_label_formatter(&|v| {
            // Rows from the top: row 0 is drawn at y = n - 1.
            let i = (n - 1.0 - v).round();
            if (v - v.round()).abs() < 1e-6 && i >= 0.0 && (i as usize) < names.len() {
                names[i as usize].clone()
            } else {
                String::new()
            }
        })
        .label_style(("sans-serif", 12))
        .draw()?;
    for (i, r) in rows.iter().enumerate() {
        let y = n - 1.0 - i as f64;
        let c = color(r.color);
        if let Some((a, b)) = r.ci95.filter(|(a, b)| *a > 0.0 && *b > 0.0) {
            let (a, b) = (at(a), at(b));
            chart.draw_series(std::iter::once(PathElement::new(
                vec![(a, y), (b, y)],
                c.stroke_width(2),
            )))?;
            for x in [a, b] {
                chart.draw_series(std::iter::once(PathElement::new(
                    vec![(x, y - 0.18), (x, y + 0.18)],
                    c.stroke_width(2),
                )))?;
            }
        }
        if r.mean > 0.0 {
            let m = at(r.mean);
            chart.draw_series(std::iter::once(PathElement::new(
                vec![(m, y - 0.32), (m, y + 0.32)],
                BLACK.stroke_width(2),
            )))?;
        }
        // Seeds spread slightly up and down so equal values stay visible.
        let k = r.points.len().max(1) as f64;
        chart.draw_series(r.points.iter().enumerate().filter(|(_, v)| **v > 0.0).map(
            |(j, v)| {
                let dy = if k > 1.0 {
                    0.24 * (j as f64 / (k - 1.0) - 0.5)
                } else {
                    0.0
                };
                Circle::new((at(*v), y + dy), 4, c.mix(0.75).filled())
            },
        ))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_fall_on_round_values() {
        assert_eq!(
            ticks(6.3, 20.1, false),
            [8.0, 10.0, 12.0, 14.0, 16.0, 18.0, 20.0]
        );
        assert_eq!(ticks(-0.07, 2.07, false), [0.0, 0.5, 1.0, 1.5, 2.0]);
        let data = |lo: f64, hi: f64| -> Vec<f64> {
            let t = ticks(lo.log10(), hi.log10(), true);
            t.iter()
                .map(|v| (10f64.powf(*v) * 1e6).round() / 1e6)
                .collect()
        };
        // A table's runs, from the untied rows to margin 0.
        assert_eq!(data(10.7, 63.0), [15.0, 20.0, 30.0, 40.0, 50.0, 60.0]);
        // Gradient norms over five decades: whole decades only.
        assert_eq!(data(2e-5, 0.9), [1e-4, 1e-3, 0.01, 0.1]);
        // Less than a factor of 2: round values of the data.
        assert_eq!(data(9.1, 11.6), [9.5, 10.0, 10.5, 11.0, 11.5]);
        assert_eq!(label(true, 2e-3f64.log10()), "2e-3");
    }

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
                    band: Some(Band(vec![
                        (0.5, 6.0, 8.0),
                        (1.0, 5.5, 7.0),
                        (1.5, 5.2, 6.0),
                    ])),
                },
                Series {
                    name: "dots".into(),
                    points: vec![(0.5, 7.0), (1.0, f64::NAN), (1.5, 6.0)],
                    mark: Mark::Dots,
                    color: 1,
                    band: None,
                },
            ],
            ..Default::default()
        };
        chart(&dir.join("c"), "test", 2, &[panel.clone(), panel]).unwrap();
        let svg = std::fs::read_to_string(dir.join("c.svg")).unwrap();
        assert!(svg.contains("<svg") && svg.contains("plain"));
        let bytes = std::fs::read(dir.join("c.png")).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        if std::env::var_os("KEEP_PLOT").is_none() {
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }
}
