//! SVG and HTML primitives both reports draw with (`netsim yard`'s and `netsim fleet`'s
//! pages): text escaped for HTML, axes with round ticks, line charts with shaded spans and
//! marked instants, and grids of small charts.
//!
//! Every SVG carries its own presentation attributes (no stylesheet), so the `.svg` files read
//! the same opened alone as inside a report.

use std::fmt::Write as _;

pub(crate) fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Colours of the series, in turn.
pub const PALETTE: [&str; 10] = [
    "#3b6fb6", "#4caf6e", "#d9822b", "#b3261e", "#7b52ab", "#2a9d8f", "#8d6e63", "#e76f51",
    "#c2185b", "#607d8b",
];

/// Text attributes of tick labels and legends.
pub(crate) const SMALL_TEXT: &str =
    "font-family=\"system-ui, sans-serif\" font-size=\"11\" fill=\"#444\"";
/// Text attributes of a marked instant's label.
pub(crate) const MARK_TEXT: &str =
    "font-family=\"system-ui, sans-serif\" font-size=\"11\" fill=\"#111\"";
/// Text attributes of a shaded span's label.
const BAND_TEXT: &str = "font-family=\"system-ui, sans-serif\" font-size=\"10.5\" fill=\"#8a1c14\"";
/// Text attributes of names that line up (VINs).
pub(crate) const MONO_TEXT: &str = "font-family=\"monospace\" font-size=\"11\" fill=\"#222\"";
/// Text attributes of a chart's title.
pub(crate) const TITLE_TEXT: &str =
    "font-family=\"system-ui, sans-serif\" font-size=\"13\" font-weight=\"600\" fill=\"#222\"";
/// Text attributes of a small chart's title (one of a grid).
const PANEL_TITLE_TEXT: &str =
    "font-family=\"system-ui, sans-serif\" font-size=\"11.5\" font-weight=\"600\" fill=\"#222\"";
/// Text attributes of a grid's title.
const GRID_TITLE_TEXT: &str =
    "font-family=\"system-ui, sans-serif\" font-size=\"14\" font-weight=\"600\" fill=\"#222\"";

/// An axis: its limits and round ticks `step` apart (every multiple of `step` between the
/// limits).
#[derive(Clone, Debug, PartialEq)]
pub struct Axis {
    /// Lower limit.
    pub lo: f64,
    /// Upper limit.
    pub hi: f64,
    /// Distance between ticks: 1, 2, 2.5 or 5 × a power of ten.
    pub step: f64,
}

impl Axis {
    /// An axis over `lo..hi` with about `intervals` intervals between ticks (one more at
    /// most), `step` the smallest of 1, 2, 2.5, 5 × 10^k that gives no more (`integer`: a
    /// whole step, for counts). The upper
    /// limit is rounded up to a tick; the lower one is kept (a chart that starts before 0 on
    /// its time axis starts where its data does), or rounded down to a tick when `round_lo`.
    pub fn nice(lo: f64, hi: f64, intervals: usize, integer: bool, round_lo: bool) -> Self {
        let hi = if hi > lo { hi } else { lo + 1.0 };
        let intervals = f64::from(u32::try_from(intervals.max(1)).unwrap_or(u32::MAX));
        let raw = (hi - lo) / (intervals + 1.0);
        let magnitude = 10f64.powf(raw.log10().floor());
        let step = [1.0, 2.0, 2.5, 5.0, 10.0]
            .into_iter()
            .map(|m| m * magnitude)
            // Counts go in whole steps: 2.5 only from 25 up.
            .filter(|&s| !integer || (s >= 1.0 && (s - s.round()).abs() < 1e-9))
            .find(|&s| s >= raw * (1.0 - 1e-9))
            .unwrap_or_else(|| if integer { raw.ceil().max(1.0) } else { raw });
        let up = |v: f64| (v / step - 1e-9).ceil() * step;
        let down = |v: f64| (v / step + 1e-9).floor() * step;
        Self {
            lo: if round_lo { down(lo) } else { lo },
            hi: up(hi),
            step,
        }
    }

    /// Every tick: the multiples of `step` from `lo` to `hi`.
    pub fn ticks(&self) -> Vec<f64> {
        let first = (self.lo / self.step - 1e-9).ceil();
        let last = (self.hi / self.step + 1e-9).floor();
        let mut ticks = Vec::new();
        let mut k = first;
        while k <= last && ticks.len() < 1000 {
            // -0 reads badly.
            ticks.push(k * self.step + 0.0);
            k += 1.0;
        }
        ticks
    }

    /// A tick's label: as many decimals as the step needs (none for whole steps), thousands
    /// as `k` once ticks reach 10,000.
    pub fn label(&self, v: f64) -> String {
        let (v, step, suffix) = if self.step >= 1000.0 && self.hi.abs().max(self.lo.abs()) >= 1e4 {
            (v / 1000.0, self.step / 1000.0, "k")
        } else {
            (v, self.step, "")
        };
        let decimals = (0..6)
            .find(|&d| {
                let scaled = step * 10f64.powi(d);
                (scaled - scaled.round()).abs() < 1e-6 * scaled.max(1.0)
            })
            .unwrap_or(6);
        format!(
            "{v:.prec$}{suffix}",
            prec = usize::try_from(decimals).unwrap_or(0)
        )
    }

    /// `v`'s position between `from` (at `lo`) and `to` (at `hi`).
    fn place(&self, v: f64, from: f64, to: f64) -> f64 {
        from + (to - from) * (v - self.lo) / (self.hi - self.lo).max(1e-12)
    }
}

/// How a series is drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    /// A coloured line from the palette.
    Normal,
    /// The line that matters most: thick, dark, dashed, drawn over the others.
    Emphasis,
    /// Context: a thin grey line under the others.
    Reference,
}

/// One line of a chart: a value for each `x` of the chart.
#[derive(Clone, Debug)]
pub struct Series {
    /// Its name in the legend.
    pub name: String,
    /// Its values.
    pub values: Vec<f64>,
    /// How it is drawn.
    pub style: Style,
    /// Its colour, in place of the palette's (a [`Style::Normal`] line).
    pub colour: Option<&'static str>,
}

impl Series {
    /// A line drawn in the palette's next colour.
    pub fn new(name: impl Into<String>, values: Vec<f64>) -> Self {
        Self {
            name: name.into(),
            values,
            style: Style::Normal,
            colour: None,
        }
    }

    /// The same series in `colour`.
    #[must_use]
    pub fn coloured(mut self, colour: &'static str) -> Self {
        self.colour = Some(colour);
        self
    }

    /// The same series drawn as `style`.
    #[must_use]
    pub fn styled(mut self, style: Style) -> Self {
        self.style = style;
        self
    }
}

/// A span of the x axis to shade (a depot outage), with what it was.
#[derive(Clone, Debug)]
pub struct Band {
    /// Where it starts.
    pub from: f64,
    /// Where it ends.
    pub to: f64,
    /// What it was, written in it.
    pub label: String,
}

/// An instant of the x axis to mark with a vertical line (the campaign completed).
#[derive(Clone, Debug)]
pub struct Marker {
    /// Where.
    pub at: f64,
    /// What happened, written beside the line.
    pub label: String,
}

/// A line chart: `x` shared by every series.
#[derive(Clone, Debug)]
pub struct LineChart {
    /// Above the plot.
    pub title: String,
    /// Under the x axis.
    pub x_label: String,
    /// Beside the y axis.
    pub y_label: String,
    /// The x of every point.
    pub x: Vec<f64>,
    /// The lines.
    pub series: Vec<Series>,
    /// The x axis' limits (`None`: the data's); points outside are not drawn.
    pub x_range: Option<(f64, f64)>,
    /// The y axis' top (`None`: a round number at or above the largest value).
    pub y_max: Option<f64>,
    /// The y axis counts whole things: whole ticks.
    pub y_integer: bool,
    /// Shaded spans.
    pub bands: Vec<Band>,
    /// Shade the spans as strips along the top of the plot (they concern a part of what the
    /// chart shows), not its whole height.
    pub band_strips: bool,
    /// Marked instants.
    pub markers: Vec<Marker>,
    /// Width and height, pixels.
    pub size: (f64, f64),
    /// A legend right of the plot (else none: the title names the one line).
    pub legend: bool,
}

impl LineChart {
    /// A chart of nothing yet over `x`, 760 × 300 pixels with a legend.
    pub fn new(title: impl Into<String>, x_label: &str, y_label: &str, x: Vec<f64>) -> Self {
        Self {
            title: title.into(),
            x_label: x_label.into(),
            y_label: y_label.into(),
            x,
            series: Vec::new(),
            x_range: None,
            y_max: None,
            y_integer: false,
            bands: Vec::new(),
            band_strips: false,
            markers: Vec::new(),
            size: (760.0, 300.0),
            legend: true,
        }
    }

    /// The x axis the chart draws.
    pub fn x_axis(&self) -> Axis {
        let (lo, hi) = self.x_range.unwrap_or_else(|| {
            (
                self.x.first().copied().unwrap_or(0.0),
                self.x.last().copied().unwrap_or(1.0),
            )
        });
        let (w, ..) = self.frame();
        // About one tick per 80 pixels.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let intervals = ((w / 80.0).floor() as usize).max(2);
        let mut axis = Axis::nice(lo, hi, intervals, false, false);
        if self.x_range.is_some() {
            // A range given is kept as given: its ticks fall inside it.
            axis.hi = hi;
        }
        axis
    }

    /// The y axis the chart draws.
    pub fn y_axis(&self) -> Axis {
        let top = self.y_max.unwrap_or_else(|| {
            self.series
                .iter()
                .flat_map(|s| s.values.iter().copied())
                .fold(0.0, f64::max)
        });
        let (_, h, ..) = self.frame();
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let intervals = ((h / 45.0).floor() as usize).clamp(2, 5);
        let mut axis = Axis::nice(0.0, top.max(1e-9), intervals, self.y_integer, true);
        if let Some(top) = self.y_max {
            axis.hi = top;
        }
        axis
    }

    /// Plot width and height, and the margins left and top.
    fn frame(&self) -> (f64, f64, f64, f64) {
        let (w, h) = self.size;
        let (left, right, top, bottom) = (56.0, if self.legend { 150.0 } else { 14.0 }, 28.0, 38.0);
        (
            (w - left - right).max(10.0),
            (h - top - bottom).max(10.0),
            left,
            top,
        )
    }

    /// The chart as a standalone SVG document.
    pub fn svg(&self) -> String {
        self.svg_at(None)
    }

    /// The chart as an SVG element; placed at `at` inside another SVG when given.
    fn svg_at(&self, at: Option<(f64, f64)>) -> String {
        let (w, h) = self.size;
        let (pw, ph, left, top) = self.frame();
        let (xa, ya) = (self.x_axis(), self.y_axis());
        let px = |v: f64| xa.place(v, left, left + pw);
        let py = |v: f64| ya.place(v, top + ph, top);
        let mut svg = match at {
            None => format!(
                "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\">"
            ),
            Some((x, y)) => format!("<svg x=\"{x}\" y=\"{y}\" width=\"{w}\" height=\"{h}\">"),
        };
        let _ = write!(
            svg,
            "<text x=\"{}\" y=\"16\" {}>{}</text>",
            if self.legend { left } else { 8.0 },
            if self.legend {
                TITLE_TEXT
            } else {
                PANEL_TITLE_TEXT
            },
            escape(&self.title)
        );
        // Shaded spans under everything: the plot's height (what the chart shows was cut off
        // by them), or a strip along its top (one part of what it shows was), labelled at its
        // top and stacked when they overlap; a small chart without a legend leaves the label
        // to the tooltip.
        for (i, band) in self.bands.iter().enumerate() {
            let (a, b) = (band.from.max(xa.lo), band.to.min(xa.hi));
            if b <= a {
                continue;
            }
            let row = f64::from(u32::try_from(i % 3).unwrap_or(0));
            let (y, height, opacity) = match self.band_strips {
                true => (top + 14.0 * row, 13.0, 0.9),
                false => (top, ph, 0.55),
            };
            let _ = write!(
                svg,
                "<rect x=\"{:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{height:.1}\" \
                 fill=\"#f4c7c3\" fill-opacity=\"{opacity}\"><title>{}</title></rect>",
                px(a),
                (px(b) - px(a)).max(1.0),
                escape(&band.label),
            );
            if self.legend || self.band_strips {
                let _ = write!(
                    svg,
                    "<text x=\"{:.1}\" y=\"{:.1}\" {BAND_TEXT}>{}</text>",
                    px(a) + 2.0,
                    y + 10.5,
                    escape(&band.label),
                );
            }
        }
        // Grid and ticks.
        for v in ya.ticks() {
            let _ = write!(
                svg,
                "<line x1=\"{left}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#e6e6e6\"/>\
                 <text x=\"{:.1}\" y=\"{:.1}\" {SMALL_TEXT} text-anchor=\"end\">{}</text>",
                left + pw,
                left - 6.0,
                py(v) + 4.0,
                ya.label(v),
                y = py(v),
            );
        }
        for v in xa.ticks() {
            let _ = write!(
                svg,
                "<line x1=\"{x:.1}\" y1=\"{:.1}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#444\"/>\
                 <text x=\"{x:.1}\" y=\"{:.1}\" {SMALL_TEXT} text-anchor=\"middle\">{}</text>",
                top + ph,
                top + ph + 4.0,
                top + ph + 16.0,
                xa.label(v),
                x = px(v),
            );
        }
        let _ = write!(
            svg,
            "<line x1=\"{left}\" y1=\"{bottom:.1}\" x2=\"{:.1}\" y2=\"{bottom:.1}\" stroke=\"#444\"/>\
             <line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{bottom:.1}\" stroke=\"#444\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" {SMALL_TEXT} text-anchor=\"middle\">{}</text>\
             <text x=\"12\" y=\"{:.1}\" {SMALL_TEXT} transform=\"rotate(-90 12 {:.1})\" \
             text-anchor=\"middle\">{}</text>",
            left + pw,
            left + pw / 2.0,
            h - 6.0,
            escape(&self.x_label),
            top + ph / 2.0,
            top + ph / 2.0,
            escape(&self.y_label),
            bottom = top + ph,
        );
        // Reference lines first, emphasised ones last: on top.
        let mut order: Vec<usize> = (0..self.series.len()).collect();
        order.sort_by_key(|&i| match self.series[i].style {
            Style::Reference => 0,
            Style::Normal => 1,
            Style::Emphasis => 2,
        });
        let colour = |i: usize| match self.series[i].style {
            Style::Normal => self.series[i].colour.unwrap_or(PALETTE[i % PALETTE.len()]),
            Style::Emphasis => "#111",
            Style::Reference => "#b0b0b0",
        };
        for &i in &order {
            let series = &self.series[i];
            let mut points = String::new();
            for (&xv, &yv) in self.x.iter().zip(&series.values) {
                if xv >= xa.lo - 1e-9 && xv <= xa.hi + 1e-9 {
                    let _ = write!(points, "{:.1},{:.1} ", px(xv), py(yv.min(ya.hi)));
                }
            }
            let stroke = match series.style {
                Style::Normal => "stroke-width=\"1.8\"",
                Style::Emphasis => "stroke-width=\"3\" stroke-dasharray=\"7 3\"",
                Style::Reference => "stroke-width=\"1.5\"",
            };
            let _ = write!(
                svg,
                "<polyline fill=\"none\" stroke=\"{}\" {stroke} points=\"{points}\"><title>{}</title></polyline>",
                colour(i),
                escape(&series.name)
            );
        }
        for (i, marker) in self.markers.iter().enumerate() {
            if marker.at < xa.lo || marker.at > xa.hi {
                continue;
            }
            let x = px(marker.at);
            let row = f64::from(u32::try_from(i).unwrap_or(0));
            let _ = write!(
                svg,
                "<line x1=\"{x:.1}\" y1=\"{top}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#111\" \
                 stroke-dasharray=\"2 3\"/>\
                 <text x=\"{:.1}\" y=\"{:.1}\" {MARK_TEXT}>{}</text>",
                top + ph,
                x + 3.0,
                top + ph - 6.0 - 13.0 * row,
                escape(&marker.label),
            );
        }
        if self.legend {
            for (row, i) in (0..self.series.len()).enumerate() {
                let series = &self.series[i];
                let y = top + 15.0 * f64::from(u32::try_from(row).unwrap_or(0));
                let swatch = match series.style {
                    Style::Emphasis => format!(
                        "<line x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"#111\" \
                         stroke-width=\"3\" stroke-dasharray=\"5 2\"/>",
                        left + pw + 10.0,
                        y + 5.0,
                        left + pw + 24.0,
                        y + 5.0
                    ),
                    _ => format!(
                        "<rect x=\"{:.1}\" y=\"{y:.1}\" width=\"12\" height=\"10\" fill=\"{}\"/>",
                        left + pw + 10.0,
                        colour(i)
                    ),
                };
                let _ = write!(
                    svg,
                    "{swatch}<text x=\"{:.1}\" y=\"{:.1}\" {SMALL_TEXT}>{}</text>",
                    left + pw + 30.0,
                    y + 9.0,
                    escape(&series.name)
                );
            }
        }
        svg.push_str("</svg>");
        svg
    }
}

/// Charts side by side, `columns` to a row, under one title, as one SVG document; every chart
/// takes the size of the first.
pub fn grid(title: &str, note: &str, charts: &[LineChart], columns: usize) -> String {
    let (cw, ch) = charts.first().map_or((200.0, 100.0), |c| c.size);
    let columns = columns.max(1).min(charts.len().max(1));
    let rows = charts.len().div_ceil(columns);
    let head = if note.is_empty() { 26.0 } else { 42.0 };
    #[allow(clippy::cast_precision_loss)]
    let (w, h) = (cw * columns as f64, head + ch * rows as f64);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\">\
         <text x=\"8\" y=\"16\" {GRID_TITLE_TEXT}>{}</text>",
        escape(title)
    );
    if !note.is_empty() {
        let _ = write!(
            svg,
            "<text x=\"8\" y=\"33\" {SMALL_TEXT}>{}</text>",
            escape(note)
        );
    }
    for (i, chart) in charts.iter().enumerate() {
        #[allow(clippy::cast_precision_loss)]
        let (x, y) = (cw * (i % columns) as f64, head + ch * (i / columns) as f64);
        svg.push_str(&chart.svg_at(Some((x, y))));
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn steps(lo: f64, hi: f64, intervals: usize, integer: bool) -> (f64, Vec<f64>) {
        let axis = Axis::nice(lo, hi, intervals, integer, true);
        (axis.step, axis.ticks())
    }

    #[test]
    fn ticks_are_round_whatever_the_span() {
        // The fleet report's old axis ran to 328 h in quarters: 82, 164, 246.
        assert_eq!(
            steps(0.0, 328.0, 6, false),
            (
                50.0,
                vec![0.0, 50.0, 100.0, 150.0, 200.0, 250.0, 300.0, 350.0]
            )
        );
        assert_eq!(
            steps(0.0, 54.3, 6, false),
            (10.0, vec![0.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0])
        );
        assert_eq!(
            steps(0.0, 6.26, 6, false),
            (1.0, vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])
        );
        assert_eq!(steps(0.0, 1.0, 4, false).0, 0.2);
        assert_eq!(steps(0.0, 12.5, 4, false).0, 2.5);
        assert_eq!(steps(0.0, 0.07, 5, false).0, 0.02);
        assert_eq!(steps(0.0, 27_000.0, 5, false).0, 5_000.0);
        assert_eq!(
            steps(0.0, 100.0, 4, false).1,
            vec![0.0, 20.0, 40.0, 60.0, 80.0, 100.0]
        );
    }

    #[test]
    fn a_time_axis_keeps_its_start_and_ticks_inside() {
        // Hours since approval, from 8 h before it: ticks at round hours, none before the data.
        let axis = Axis::nice(-8.0, 54.3, 6, false, false);
        assert_eq!((axis.lo, axis.hi, axis.step), (-8.0, 60.0, 10.0));
        assert_eq!(axis.ticks(), vec![0.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0]);
    }

    #[test]
    fn counts_have_whole_ticks() {
        // "8.00 vehicles" was a tick: counts take whole steps, and 2.5 is not one.
        let (step, ticks) = steps(0.0, 8.0, 5, true);
        assert_eq!(step, 2.0);
        assert_eq!(ticks, vec![0.0, 2.0, 4.0, 6.0, 8.0]);
        assert_eq!(steps(0.0, 3.0, 5, true).0, 1.0);
        assert_eq!(steps(0.0, 1.0, 5, true), (1.0, vec![0.0, 1.0]));
        assert_eq!(steps(0.0, 10.0, 4, true).0, 2.0);
        assert_eq!(steps(0.0, 120.0, 4, true).0, 25.0);
        assert_eq!(steps(0.0, 13.0, 4, true).0, 5.0);
        let axis = Axis::nice(0.0, 8.0, 5, true, true);
        let labels: Vec<String> = axis.ticks().iter().map(|&v| axis.label(v)).collect();
        assert_eq!(labels, ["0", "2", "4", "6", "8"]);
    }

    #[test]
    fn labels_have_the_decimals_their_step_needs() {
        let axis = Axis::nice(0.0, 1.0, 4, false, true);
        assert_eq!(axis.label(0.2), "0.2");
        assert_eq!(axis.label(1.0), "1.0");
        let axis = Axis::nice(0.0, 12.5, 4, false, true);
        assert_eq!((axis.step, axis.label(5.0)), (2.5, "5.0".to_string()));
        let axis = Axis::nice(0.0, 0.07, 5, false, true);
        assert_eq!(axis.label(0.04), "0.04");
        let axis = Axis::nice(0.0, 12.0, 6, false, true);
        assert_eq!(axis.label(4.0), "4");
        let axis = Axis::nice(0.0, 27_000.0, 5, false, true);
        assert_eq!(axis.label(20_000.0), "20k");
        assert_eq!(axis.label(5_000.0), "5k");
        let axis = Axis::nice(-8.0, 60.0, 6, false, false);
        assert_eq!(axis.label(0.0), "0");
    }

    /// No element names an attribute twice: an SVG file with one is not well-formed XML and
    /// does not open alone.
    pub(crate) fn assert_no_attribute_twice(svg: &str) {
        for tag in svg.split('<').skip(1) {
            let tag = tag.split('>').next().unwrap_or("");
            let mut names = std::collections::BTreeSet::new();
            for part in tag.split('"').step_by(2) {
                if let Some(name) = part
                    .trim()
                    .rsplit(' ')
                    .next()
                    .and_then(|p| p.strip_suffix('='))
                {
                    assert!(names.insert(name.to_string()), "{name} twice in <{tag}>");
                }
            }
        }
    }

    #[test]
    fn charts_and_grids_name_each_attribute_once() {
        let mut chart = LineChart::new("t", "x", "y", vec![0.0, 1.0]);
        chart.series = vec![Series::new("a", vec![0.0, 1.0])];
        chart.bands = vec![Band {
            from: 0.2,
            to: 0.4,
            label: "down".into(),
        }];
        chart.markers = vec![Marker {
            at: 0.5,
            label: "done".into(),
        }];
        assert_no_attribute_twice(&chart.svg());
        chart.legend = false;
        assert_no_attribute_twice(&grid("g", "note", &[chart.clone(), chart], 2));
    }

    #[test]
    fn the_emphasised_line_is_drawn_last_and_references_first() {
        let mut chart = LineChart::new("t", "x", "y", vec![0.0, 1.0]);
        chart.series = vec![
            Series::new("whole fleet", vec![0.0, 1.0]).styled(Style::Emphasis),
            Series::new("wave 1", vec![0.0, 1.0]),
            Series::new("fleet", vec![0.0, 1.0]).styled(Style::Reference),
        ];
        let svg = chart.svg();
        let at = |name: &str| {
            svg.find(&format!("<title>{name}</title></polyline>"))
                .unwrap()
        };
        assert!(
            at("fleet") < at("wave 1") && at("wave 1") < at("whole fleet"),
            "{svg}"
        );
    }

    #[test]
    fn bands_and_markers_inside_the_axis_are_drawn_and_the_rest_left_out() {
        let mut chart = LineChart::new("t", "h", "%", vec![0.0, 10.0, 20.0]);
        chart.series = vec![Series::new("a", vec![0.0, 50.0, 100.0])];
        chart.x_range = Some((0.0, 10.0));
        chart.bands = vec![
            Band {
                from: 2.0,
                to: 4.0,
                label: "depot 17 down".into(),
            },
            Band {
                from: 12.0,
                to: 14.0,
                label: "depot 250 down".into(),
            },
        ];
        chart.markers = vec![Marker {
            at: 8.0,
            label: "completed".into(),
        }];
        let svg = chart.svg();
        assert!(svg.contains(">depot 17 down<"), "{svg}");
        assert!(!svg.contains("depot 250"), "{svg}");
        assert!(svg.contains(">completed<"), "{svg}");
        // The point at 20 h is past the axis: two points drawn.
        let points = svg.split("points=\"").nth(1).unwrap();
        assert_eq!(
            points.split('"').next().unwrap().split_whitespace().count(),
            2
        );
    }
}
