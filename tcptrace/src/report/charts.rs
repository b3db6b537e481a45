//! The report's charts, drawn by plotters into SVG strings (inline in the
//! page). No font files: the SVG backend writes `<text>` elements, which
//! the browser draws with its own fonts.
use plotters::{
    coord::ranged1d::SegmentValue,
    prelude::{
        ChartBuilder, Color, IntoDrawingArea, IntoSegmentedCoord, LineSeries, PathElement,
        Rectangle, SVGBackend, Text, BLACK, WHITE,
    },
    style::{IntoFont, RGBColor, TextStyle},
};

use crate::{printer::human::duration_text, snapshot::Histogram};

/// Points drawn per series at most: longer captures are averaged over
/// groups of seconds.
pub const MAX_POINTS: usize = 1200;

const WIDTH: u32 = 1100;
const HEIGHT: u32 = 380;

/// Series colours (Tableau 10), then grey for "other".
const COLORS: [RGBColor; 11] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
    RGBColor(31, 60, 120),
    RGBColor(127, 127, 127),
];

pub fn color(i: usize) -> RGBColor {
    COLORS[i % (COLORS.len() - 1)]
}

pub const OTHER_COLOR: RGBColor = COLORS[10];

/// One line of a time chart.
pub struct Series {
    pub name: String,
    /// One value per point (see `group_seconds`).
    pub values: Vec<f64>,
    pub color: RGBColor,
}

/// Where a time chart puts each point of its series.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Points {
    /// A rate: at the middle of the seconds it stands for.
    Middle,
    /// A level at the end of its seconds, after `start` at 0 (one start
    /// value per series).
    End,
}

/// How many seconds each point stands for, so that `seconds` fit in
/// `MAX_POINTS` points.
pub fn group_seconds(seconds: usize) -> usize {
    seconds.div_ceil(MAX_POINTS).max(1)
}

/// Per point, the mean of its `group` seconds (a rate stays a rate).
pub fn mean_per_group<T: Copy + Into<f64>>(values: &[T], group: usize) -> Vec<f64> {
    values
        .chunks(group.max(1))
        .map(|c| c.iter().map(|&v| v.into()).sum::<f64>() / c.len() as f64)
        .collect()
}

/// Per point, the last value of its group (a population at its end).
pub fn last_per_group(values: &[i64], group: usize) -> Vec<f64> {
    values
        .chunks(group.max(1))
        .map(|c| *c.last().unwrap() as f64)
        .collect()
}

/// An axis label: whole numbers without decimals (`50000`, `12`), others
/// with what they need (`0.5`, `2.25`).
pub fn axis_number(v: f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("{}", v.round() as i64)
    } else {
        let text = format!("{v:.3}");
        text.trim_end_matches('0').to_string()
    }
}

fn failed(e: impl std::fmt::Display) -> String {
    format!("drawing a chart: {e}")
}

fn label_style(size: u32) -> TextStyle<'static> {
    ("sans-serif", size).into_font().color(&BLACK)
}

/// Lines over time: x in seconds since the start, one point per `group`
/// seconds; the legend to the right of the plot, never over it. With
/// `Points::End`, `starts` holds each series' value at 0.
pub fn time_chart(
    y_desc: &str,
    group: usize,
    points: Points,
    series: &[Series],
    starts: &[f64],
) -> Result<String, String> {
    const LEGEND: u32 = 250;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(failed)?;
        let (plot, legend) = root.split_horizontally(WIDTH - LEGEND);
        let n = series.iter().map(|s| s.values.len()).max().unwrap_or(0);
        let x_max = (n.max(1) * group) as f64;
        let (y_min, y_max) = series
            .iter()
            .flat_map(|s| s.values.iter().copied())
            .chain(starts.iter().copied())
            .fold((0f64, 0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
        let y_max = if y_max <= 0.0 { 1.0 } else { y_max * 1.08 };
        let y_min = if y_min < 0.0 { y_min * 1.08 } else { 0.0 };
        let mut chart = ChartBuilder::on(&plot)
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..x_max, y_min..y_max)
            .map_err(failed)?;
        chart
            .configure_mesh()
            .x_desc("seconds since the start")
            .y_desc(y_desc)
            .x_label_formatter(&|v| axis_number(*v))
            .y_label_formatter(&|v| axis_number(*v))
            .label_style(label_style(13))
            .axis_desc_style(label_style(14))
            .light_line_style(RGBColor(235, 235, 235))
            .bold_line_style(RGBColor(205, 205, 205))
            .draw()
            .map_err(failed)?;
        let g = group as f64;
        for (k, s) in series.iter().enumerate() {
            let line: Vec<(f64, f64)> = match points {
                Points::Middle => s
                    .values
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| (i as f64 * g + g / 2.0, v))
                    .collect(),
                Points::End => std::iter::once((0.0, starts.get(k).copied().unwrap_or(0.0)))
                    .chain(
                        s.values
                            .iter()
                            .enumerate()
                            .map(|(i, &v)| (((i + 1) as f64 * g).min(x_max), v)),
                    )
                    .collect(),
            };
            chart
                .draw_series(LineSeries::new(line, s.color.stroke_width(2)))
                .map_err(failed)?;
        }
        for (i, s) in series.iter().enumerate() {
            let y = 24 + 20 * i as i32;
            legend
                .draw(&PathElement::new(
                    vec![(8, y), (30, y)],
                    s.color.stroke_width(3),
                ))
                .map_err(failed)?;
            legend
                .draw(&Text::new(s.name.clone(), (38, y - 7), label_style(13)))
                .map_err(failed)?;
        }
        root.present().map_err(failed)?;
    }
    Ok(svg)
}

/// A histogram's log2 buckets as bars, from its first non-empty bucket to
/// its last; each labelled with its lower bound.
pub fn buckets_chart(h: &Histogram) -> Result<String, String> {
    let used: Vec<usize> = (0..h.buckets.len()).filter(|&i| h.buckets[i] > 0).collect();
    let (lo, hi) = match (used.first(), used.last()) {
        (Some(&lo), Some(&hi)) => (lo as u32, hi as u32),
        _ => (0, 0),
    };
    // A bucket either side, and at least 8 buckets: a lone bar is not
    // drawn across the whole chart.
    let lo = lo.saturating_sub(1);
    let hi = (hi + 1).max(lo + 7).min(h.buckets.len() as u32 - 1);
    let y_max = h.buckets.iter().copied().max().unwrap_or(0).max(1);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH / 2, 300)).into_drawing_area();
        root.fill(&WHITE).map_err(failed)?;
        let mut chart = ChartBuilder::on(&root)
            .margin(10)
            .x_label_area_size(45)
            .y_label_area_size(60)
            // Integer ranges are inclusive here: one segment per bucket.
            .build_cartesian_2d((lo..hi).into_segmented(), 0u64..y_max + y_max / 10 + 1)
            .map_err(failed)?;
        // Every bucket labelled while they fit, every second or third one
        // otherwise.
        let every = (hi - lo) / 12 + 1;
        let label = |v: &SegmentValue<u32>| match v {
            SegmentValue::CenterOf(i) | SegmentValue::Exact(i) if (i - lo) % every == 0 => {
                duration_text(Histogram::bucket_range(*i as usize).0)
            }
            _ => String::new(),
        };
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels((hi - lo + 1) as usize)
            .x_label_formatter(&label)
            .x_desc("time in the state (bucket's lower bound, log2)")
            .y_desc("count")
            .label_style(label_style(11))
            .axis_desc_style(label_style(13))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(failed)?;
        // Rectangles in bucket order (plotters' Histogram series orders
        // its bars by a hash map: the same page would differ run to run).
        chart
            .draw_series((lo..=hi).map(|i| {
                let mut bar = Rectangle::new(
                    [
                        (SegmentValue::Exact(i), 0),
                        (segment_after(i, hi), h.buckets[i as usize]),
                    ],
                    COLORS[0].filled(),
                );
                bar.set_margin(0, 0, 2, 2);
                bar
            }))
            .map_err(failed)?;
        root.present().map_err(failed)?;
    }
    Ok(svg)
}

/// Where segment `i` of a segmented range ending at `last` ends.
fn segment_after(i: u32, last: u32) -> SegmentValue<u32> {
    if i < last {
        SegmentValue::Exact(i + 1)
    } else {
        SegmentValue::Last
    }
}

/// Horizontal bars, one per label, largest first (top to bottom).
pub fn bars_chart(x_desc: &str, rows: &[(String, u64)]) -> Result<String, String> {
    // At least three rows high: one bar is not drawn as a block.
    let n = rows.len().max(3) as u32;
    let height = 70 + 26 * n;
    let x_max = rows.iter().map(|r| r.1).max().unwrap_or(0).max(1);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH / 2, height)).into_drawing_area();
        root.fill(&WHITE).map_err(failed)?;
        let mut chart = ChartBuilder::on(&root)
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(190)
            .build_cartesian_2d(0u64..x_max + x_max / 10 + 1, (0..n - 1).into_segmented())
            .map_err(failed)?;
        // Row 0 at the top.
        let label = |v: &SegmentValue<u32>| match v {
            SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => rows
                .get((n - 1 - (*i).min(n - 1)) as usize)
                .map(|r| r.0.clone())
                .unwrap_or_default(),
            SegmentValue::Last => String::new(),
        };
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(n as usize)
            .y_label_formatter(&label)
            .x_desc(x_desc)
            .label_style(label_style(12))
            .axis_desc_style(label_style(13))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(failed)?;
        chart
            .draw_series(rows.iter().enumerate().map(|(i, r)| {
                let row = n - 1 - i as u32;
                let mut bar = Rectangle::new(
                    [
                        (0, SegmentValue::Exact(row)),
                        (r.1, segment_after(row, n - 1)),
                    ],
                    COLORS[1].filled(),
                );
                bar.set_margin(3, 3, 0, 0);
                bar
            }))
            .map_err(failed)?;
        root.present().map_err(failed)?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_captures_are_grouped() {
        assert_eq!(group_seconds(10), 1);
        assert_eq!(group_seconds(MAX_POINTS), 1);
        assert_eq!(group_seconds(MAX_POINTS + 1), 2);
        assert_eq!(mean_per_group(&[1u32, 3, 5], 2), vec![2.0, 5.0]);
        assert_eq!(last_per_group(&[1, 3, 5], 2), vec![3.0, 5.0]);
    }

    #[test]
    fn axis_labels_are_plain_numbers() {
        assert_eq!(axis_number(50000.0), "50000");
        assert_eq!(axis_number(0.0), "0");
        assert_eq!(axis_number(0.5), "0.5");
        assert_eq!(axis_number(2.25), "2.25");
        assert_eq!(axis_number(-3.0), "-3");
    }

    #[test]
    fn charts_are_svg() {
        let series = [Series {
            name: "FIN_WAIT2->TIME_WAIT".into(),
            values: vec![1.0, 4.0, 2.0],
            color: color(0),
        }];
        let svg = time_chart("per second", 1, Points::Middle, &series, &[]).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("FIN_WAIT2-&gt;TIME_WAIT"));
        let mut h = Histogram::empty();
        h.buckets[20] = 3;
        h.count = 3;
        let svg = buckets_chart(&h).unwrap();
        assert!(svg.contains("<rect") && svg.contains("1.05ms"), "{svg}");
        let svg = bars_chart("entries", &[("nginx[12]".into(), 5)]).unwrap();
        assert!(svg.contains("nginx[12]"));
        // The same chart twice is the same SVG.
        let mut h = Histogram::empty();
        for i in [3, 5, 9, 12, 20] {
            h.buckets[i] = i as u64;
        }
        assert_eq!(buckets_chart(&h).unwrap(), buckets_chart(&h).unwrap());
    }
}
