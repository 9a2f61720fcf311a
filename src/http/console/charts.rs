//! Server-rendered charts for the console dashboard: inline SVG strings for a
//! tera template's `| safe`, no JavaScript, no chart library.
//!
//! Each chart is one `<svg>` with a `viewBox`, `width="100%"`, `role="img"`, and
//! a `<title>` plus a `<desc>` stating the data in words for screen readers.
//! Text is `fill="currentColor"` (follows the page, dark mode safe), series use
//! the colour-blind-safe Okabe–Ito palette inline, and the `chart*` CSS classes
//! allow restyling. Text is XML-escaped, non-finite numbers count as 0, numbers
//! carry at most one decimal, and the same input gives byte-identical output.

use std::fmt;

/// One line of a line chart: (x, y) points, x ascending.
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// One horizontal bar.
pub struct Bar {
    pub label: String,
    pub value: f64,
    /// Shown after the value, e.g. "12 of 40".
    pub note: Option<String>,
}

/// How values are shown in labels and descriptions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// A plain number: "12", "2.5".
    Count,
    /// A fraction 0..1, shown as "12.5%".
    Percent,
    /// Minutes, shown as "4.2 min", or as "1.3 h" from 90 minutes on.
    Minutes,
}

impl Format {
    /// Formats `v` (non-finite counts as 0) with at most one decimal place.
    pub fn format(self, v: f64) -> String {
        let v = finite(v);
        match self {
            Format::Count => N(v).to_string(),
            Format::Percent => format!("{}%", N(v * 100.0)),
            Format::Minutes if v >= 90.0 => format!("{} h", N(v / 60.0)),
            Format::Minutes => format!("{} min", N(v)),
        }
    }
}

/// Okabe–Ito colours that read on both light and dark backgrounds.
const PALETTE: [&str; 6] = [
    "#0072B2", "#E69F00", "#009E73", "#CC79A7", "#D55E00", "#56B4E9",
];
const WIDTH: f64 = 600.0;
/// Line chart plot area (the top depends on the legend).
const LEFT: f64 = 52.0;
const RIGHT: f64 = 588.0;
const BOTTOM: f64 = 216.0;
/// Grid divisions of the line chart's y axis (0 to the nice max).
const STEPS: u32 = 5;
/// Bar chart: height of a row, where bars start, and a full bar's width.
const ROW: f64 = 22.0;
const BAR_X: f64 = 184.0;
const BAR_W: f64 = 260.0;
const TEXT: &str = r#"class="chart-label" fill="currentColor""#;
const GRID: &str = r#"class="chart-grid" stroke="currentColor" stroke-opacity="0.15""#;
const AXIS: &str = r#"class="chart-axis" stroke="currentColor" stroke-opacity="0.5""#;

/// A cleaned series: colour, label, points with finite x.
type Line<'a> = (&'static str, &'a str, Vec<(f64, f64)>);

/// A line chart (e.g. queue depth over time). `x_ticks` are (x, label) pairs
/// for the x axis; ticks outside the data's x range are skipped. Points with a
/// non-finite x are dropped, a non-finite y counts as 0; the y axis starts at 0.
pub fn line_chart(
    title: &str,
    x_ticks: &[(f64, String)],
    series: &[Series],
    format: Format,
) -> String {
    let lines: Vec<Line> = series
        .iter()
        .zip(PALETTE.iter().cycle())
        .map(|(s, &colour)| {
            let pts = s.points.iter().filter(|p| p.0.is_finite());
            let pts = pts.map(|&(x, y)| (finite(x), finite(y))).collect();
            (colour, s.label.as_str(), pts)
        })
        .filter(|(_, _, pts): &Line| !pts.is_empty())
        .collect();
    if lines.is_empty() {
        return empty(title);
    }
    let all = || lines.iter().flat_map(|l| l.2.iter().copied());
    let (lo, hi) = all().fold((f64::MAX, f64::MIN), |(a, b), (x, _)| (a.min(x), b.max(x)));
    let pad = if hi > lo { 0.0 } else { 0.5 }; // a single x value sits mid-chart
    let (x0, span) = (lo - pad, hi - lo + 2.0 * pad);
    // Counts get whole-number grid lines: a scale of at least 5 in 5 steps.
    let floor = if format == Format::Count { 5.0 } else { 0.0 };
    let ymax = nice_max(all().fold(floor, |m, (_, y)| y.max(m)));
    let top = if lines.len() > 1 { 48.0 } else { 30.0 };
    let sx = |x: f64| LEFT + (x - x0) / span * (RIGHT - LEFT);
    let sy = |y: f64| BOTTOM - y.clamp(0.0, ymax) / ymax * (BOTTOM - top);

    let desc: Vec<String> = lines
        .iter()
        .map(|(_, label, pts)| {
            let last = format.format(pts[pts.len() - 1].1);
            let max = format.format(pts.iter().fold(f64::MIN, |m, p| p.1.max(m)));
            format!("{label}: latest {last}, max {max}")
        })
        .collect();
    let mut s = open(title, &desc.join("; "), BOTTOM + 24.0);
    for i in 0..=STEPS {
        let v = ymax * f64::from(i) / f64::from(STEPS);
        let (y, label) = (N(sy(v)), super::escape(&format.format(v)));
        s += &format!(
            r#"<line {GRID} x1="{LEFT}" y1="{y}" x2="{RIGHT}" y2="{y}"/><text {TEXT} x="{LEFT}" dx="-6" y="{y}" dy="4" text-anchor="end">{label}</text>"#
        );
    }
    s += &format!(r#"<line {AXIS} x1="{LEFT}" y1="{BOTTOM}" x2="{RIGHT}" y2="{BOTTOM}"/>"#);
    for (x, label) in x_ticks.iter().filter(|t| t.0.is_finite()) {
        let (x, label) = (sx(finite(*x)), super::escape(label));
        if (LEFT - 0.5..=RIGHT + 0.5).contains(&x) {
            let x = N(x);
            s += &format!(
                r#"<text {TEXT} x="{x}" y="{BOTTOM}" dy="16" text-anchor="middle">{label}</text>"#
            );
        }
    }
    let mut legend_x = LEFT; // legend items flow left to right, sized by label
    for (colour, label, pts) in &lines {
        if lines.len() > 1 {
            let (x, label) = (N(legend_x), truncate(label, 22));
            legend_x += 32.0 + 6.5 * label.chars().count() as f64;
            let label = super::escape(&label);
            s += &format!(
                r#"<rect x="{x}" y="24" width="10" height="10" fill="{colour}"/><text {TEXT} x="{x}" dx="14" y="33">{label}</text>"#
            );
        }
        let coords = pts
            .iter()
            .map(|&(x, y)| format!("{},{}", N(sx(x)), N(sy(y))));
        let (points, (x, y)) = (coords.collect::<Vec<_>>().join(" "), pts[pts.len() - 1]);
        let (cx, cy) = (N(sx(x)), N(sy(y)));
        s += &format!(
            r#"<polyline class="chart-line" fill="none" stroke="{colour}" stroke-width="2" stroke-linejoin="round" points="{points}"/><circle cx="{cx}" cy="{cy}" r="3" fill="{colour}"/>"#
        );
    }
    s + "</svg>"
}

/// Horizontal bar chart (e.g. escalation rate per SOP version). `max` fixes the
/// scale (1.0 for percentages), else the largest value; values beyond the scale
/// are drawn full width, and with no positive scale every bar is empty.
pub fn bar_chart(title: &str, bars: &[Bar], max: Option<f64>, format: Format) -> String {
    if bars.is_empty() {
        return empty(title);
    }
    let values: Vec<f64> = bars.iter().map(|b| finite(b.value)).collect();
    let largest = values.iter().fold(0.0, |m, &v| v.max(m));
    // Never 0, so no division by zero; all values are ≤ 0 when it is tiny.
    let max = max.map(finite).filter(|&m| m > 0.0);
    let max = max.unwrap_or(largest).max(f64::MIN_POSITIVE);
    let shown = |b: &Bar, v: f64| match &b.note {
        Some(note) => format!("{} ({note})", format.format(v)),
        None => format.format(v),
    };
    let rows = || bars.iter().zip(values.iter().copied());
    let desc = rows().map(|(b, v)| format!("{}: {}", b.label, shown(b, v)));
    let desc = desc.collect::<Vec<_>>().join("; ");
    let mut s = open(title, &desc, 28.0 + ROW * bars.len() as f64);
    for (i, (bar, v)) in rows().enumerate() {
        let w = (v / max).clamp(0.0, 1.0) * BAR_W;
        let (y, width, vx) = (N(24.0 + ROW * i as f64), N(w), N(BAR_X + w + 6.0));
        let tip = super::escape(&format!("{}: {}", bar.label, format.format(v)));
        let label = super::escape(&truncate(&bar.label, 28));
        let (colour, shown) = (PALETTE[0], super::escape(&shown(bar, v)));
        s += &format!(
            r#"<g transform="translate(0 {y})"><text {TEXT} x="0" y="15">{label}</text><rect class="chart-bar" x="{BAR_X}" y="4" width="{width}" height="14" rx="2" fill="{colour}"><title>{tip}</title></rect><text class="chart-value" fill="currentColor" x="{vx}" y="15">{shown}</text></g>"#
        );
    }
    s + "</svg>"
}

/// The y axis's top: the smallest of {1, 2, 2.5, 5} × 10^k that is ≥ `v`
/// (7 → 10, 23 → 25, 0.37 → 0.5); 0, negative or non-finite → 1.
fn nice_max(v: f64) -> f64 {
    if !v.is_finite() || v <= 0.0 {
        return 1.0;
    }
    let e = v.log10().floor() as i32;
    // Dividing for negative exponents keeps e.g. 0.1 × 5 an exact 0.5.
    let p = 10f64.powi(e.abs());
    let nice = [1.0, 2.0, 2.5, 5.0, 10.0].map(|m| if e < 0 { m / p } else { m * p });
    nice.into_iter()
        .find(|&n| n >= v * (1.0 - 1e-9))
        .unwrap_or(nice[4])
}

/// The opening `<svg>` with `<title>`, `<desc>` and a visible heading; the id
/// is an FNV-1a hash of title and description.
fn open(title: &str, desc: &str, height: f64) -> String {
    let fnv = |h: u32, b: u8| (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    let id = format!("{title}\0{desc}").bytes().fold(0x811c_9dc5, fnv);
    let (title, desc, w, h) = (
        super::escape(title),
        super::escape(desc),
        N(WIDTH),
        N(height),
    );
    format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {w} {h}" width="100%" role="img" aria-labelledby="chart-{id:08x}" aria-describedby="chart-{id:08x}-desc" font-family="sans-serif" font-size="11"><title id="chart-{id:08x}">{title}</title><desc id="chart-{id:08x}-desc">{desc}</desc><text {TEXT} x="0" y="14" font-size="12" font-weight="bold">{title}</text>"#
    )
}

/// The small placeholder chart for empty input.
fn empty(title: &str) -> String {
    open(title, "No data yet", 48.0)
        + &format!(r#"<text {TEXT} x="0" y="38" fill-opacity="0.7">No data yet</text></svg>"#)
}

/// Non-finite → 0; clamped to ±1e15 so scales and spans never overflow.
fn finite(v: f64) -> f64 {
    let v = if v.is_finite() { v } else { 0.0 };
    v.clamp(-1e15, 1e15)
}

/// A number for output: at most one decimal, no trailing ".0", never "-0".
struct N(f64);

impl fmt::Display for N {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = finite(self.0);
        let s = format!("{:.1}", if v.abs() < 0.05 { 0.0 } else { v });
        f.write_str(s.strip_suffix(".0").unwrap_or(&s))
    }
}

/// Cuts `s` to at most `n` characters, ending in "…" when cut.
fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        return s.to_owned();
    }
    s.chars().take(n - 1).chain(['…']).collect()
}

#[cfg(test)]
mod tests {
    use super::Format::{Count, Minutes, Percent};
    use super::*;

    fn line(label: &str, points: &[(f64, f64)]) -> Series {
        let (label, points) = (label.to_owned(), points.to_vec());
        Series { label, points }
    }

    fn bar(label: &str, value: f64, note: Option<&str>) -> Bar {
        let (label, note) = (label.to_owned(), note.map(str::to_owned));
        Bar { label, value, note }
    }

    /// A small well-formedness check: tags balance and nest, attribute quotes
    /// pair up, `&` only starts known entities, text holds no raw `>`.
    fn well_formed(svg: &str) {
        assert!(svg.starts_with("<svg ") && svg.ends_with("</svg>"), "{svg}");
        let (mut stack, mut rest) = (Vec::new(), svg);
        while let Some(start) = rest.find('<') {
            let end = start + rest[start..].find('>').expect("unclosed tag");
            let tag = &rest[start + 1..end];
            assert!(!rest[..start].contains('>') && !tag.contains('<'), "{svg}");
            assert!(tag.matches('"').count().is_multiple_of(2), "<{tag}>");
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(stack.pop(), Some(name), "{svg}");
            } else if !tag.ends_with('/') {
                stack.push(tag.split(' ').next().unwrap());
            }
            rest = &rest[end + 1..];
        }
        assert!(stack.is_empty(), "unclosed {stack:?}");
        let known = ["&amp;", "&lt;", "&gt;", "&quot;", "&#39;"];
        for (i, _) in svg.match_indices('&') {
            assert!(known.iter().any(|e| svg[i..].starts_with(e)), "{svg}");
        }
    }

    /// Asserts that `svg` contains every one of `needles`.
    fn has(svg: &str, needles: &[&str]) {
        for n in needles {
            assert!(svg.contains(n), "no {n}: {svg}");
        }
    }

    /// The quoted values that follow each `key` (e.g. `points="`).
    fn values<'a>(svg: &'a str, key: &str) -> Vec<&'a str> {
        let rest = svg.split(key).skip(1);
        rest.map(|v| v.split('"').next().unwrap()).collect()
    }

    #[test]
    fn escapes_all_text() {
        let evil = "<script>&\"'\u{7}";
        let lines = [line(evil, &[(0.0, 1.0)]), line("b", &[])];
        let a = line_chart(evil, &[(0.0, evil.into())], &lines, Count);
        let b = bar_chart(evil, &[bar(evil, 1.0, Some(evil))], None, Count);
        for (svg, times) in [(a, 4), (b, 7)] {
            well_formed(&svg);
            let escaped = svg.matches("&lt;script&gt;&amp;&quot;&#39;").count();
            assert!(!svg.contains("<script") && !svg.contains('\u{7}') && escaped == times);
        }
    }

    #[test]
    fn empty_and_non_finite_inputs() {
        let (nan, inf) = (f64::NAN, f64::INFINITY);
        let none = line_chart("Q", &[], &[line("a", &[]), line("b", &[(nan, 1.0)])], Count);
        let no_series = line_chart("Q", &[], &[], Count);
        let no_bars = bar_chart("R", &[], None, Count);
        for svg in [none, no_series, no_bars] {
            well_formed(&svg);
            has(&svg, &[">No data yet</text>", r#"role="img""#]);
        }
        let odd = [(-inf, 1.0), (0.0, nan), (1.0, inf), (2.0, 3.0)];
        let (odd, nan_y) = ([line("a", &odd)], [line("a", &[(1.0, nan)])]);
        let ticks = [(nan, "x".into()), (inf, "y".into())];
        let bars = [bar("a", nan, None), bar("b", inf, None)];
        for svg in [
            line_chart("Broken", &ticks, &odd, Minutes),
            line_chart("Broken", &[], &nan_y, Percent),
            bar_chart("Broken", &bars, Some(nan), Percent),
            bar_chart("Broken", &[bar("c", -inf, None)], Some(0.0), Minutes),
        ] {
            well_formed(&svg);
            let lower = svg.to_lowercase();
            assert!(!lower.contains("nan") && !lower.contains("inf"), "{svg}");
            assert!(!svg.contains("\"-0") && !svg.contains(">-0"), "{svg}");
            assert!(
                !svg.contains(">x<") && !svg.contains(">y<"),
                "non-finite ticks"
            );
        }
    }

    #[test]
    fn nice_max_and_formats() {
        let inputs = [0.0, -3.0, 1.0, 7.0, 23.0, 0.37, 0.25, 150.0, 1000.0];
        let nice = [1.0, 1.0, 1.0, 10.0, 25.0, 0.5, 0.25, 200.0, 1000.0];
        assert_eq!(inputs.map(nice_max), nice);
        assert_eq!([0.125, 1.0].map(|v| Percent.format(v)), ["12.5%", "100%"]);
        let minutes = [150.0, 4.2, 89.0, f64::INFINITY].map(|v| Minutes.format(v));
        assert_eq!(minutes, ["2.5 h", "4.2 min", "89 min", "0 min"]);
        assert_eq!([12.0, -0.01].map(|v| Count.format(v)), ["12", "0"]);
    }

    #[test]
    fn lines_have_every_point_colour_and_legend() {
        let a = line("a", &[(0.0, 1.0), (1.0, 3.0), (2.0, 2.0)]);
        let b = line("b", &[(0.0, 5.0), (1.0, 4.0), (1.5, 2.0), (2.0, 30.0)]);
        let ticks = [(0.0, "Mon".into()), (9.0, "Out".into())];
        let svg = line_chart("Queue depth", &ticks, &[a, b], Count);
        well_formed(&svg);
        let points = values(&svg, r#"points=""#);
        let counts: Vec<_> = points.iter().map(|p| p.split(' ').count()).collect();
        assert_eq!(counts, [3, 4]);
        assert_eq!(values(&svg, r#"<circle cx=""#), ["588", "588"]);
        has(&svg, &[PALETTE[0], PALETTE[1], ">Mon<", ">30<"]);
        has(&svg, &["a: latest 2, max 3; b: latest 30, max 30"]);
        assert!(svg.contains(r#"<rect x="52" y="24""#) && !svg.contains(">Out<"));
        let (ticks, q) = ([(5.0, "now".into())], [line("q", &[(5.0, 12.0)])]);
        let one = line_chart("One", &ticks, &q, Count);
        well_formed(&one);
        has(&one, &[r#"points="320,"#, r#"<circle cx="320""#, ">now<"]);
        has(&one, &["q: latest 12, max 12"]);
        assert!(!one.contains("<rect"), "a legend only for 2+ series: {one}");
    }

    #[test]
    fn bars_are_proportional_and_labelled() {
        let long = "a-very-long-standard-operating-procedure@12";
        let mut bars = vec![bar("x@2", 0.5, Some("12 of 24"))];
        bars.extend([bar(long, 1.0, None), bar("y", 2.0, None)]);
        let svg = bar_chart("Rate", &bars, Some(1.0), Percent);
        well_formed(&svg);
        assert_eq!(values(&svg, r#"y="4" width=""#), ["130", "260", "260"]);
        has(&svg, &["x@2: 50% (12 of 24); a-very", ">50% (12 of 24)<"]);
        let cut = format!(">{}…<", long.chars().take(27).collect::<String>());
        has(&svg, &[&cut, &format!("<title>{long}: 100%</title>")]);
        let bars = [bar("a", 1.0, None), bar("b", 4.0, None)];
        let auto = bar_chart("Counts", &bars, None, Count);
        assert_eq!(values(&auto, r#"y="4" width=""#), ["65", "260"]);
        has(&auto, &[r#"viewBox="0 0 600 72""#]);
        let zero = bar_chart("Zero", &[bar("z", 0.0, None)], Some(0.0), Count);
        has(&zero, &[r#"width="0""#, r#"x="190" y="15">0<"#]);
    }

    #[test]
    fn deterministic_and_labelled() {
        let make = || line_chart("Queue", &[], &[line("q", &[(0.0, 1.0), (1.0, 2.5)])], Count);
        let svg = make();
        assert_eq!(svg, make());
        let id = values(&svg, r#"aria-labelledby=""#)[0];
        let title = format!(r#"<title id="{id}">Queue</title>"#);
        assert!(id.starts_with("chart-") && svg.contains(&title), "{svg}");
        let other = line_chart("Other", &[], &[line("q", &[(0.0, 1.0)])], Count);
        assert_ne!(values(&other, r#"aria-labelledby=""#)[0], id);
    }
}
