//! The overview's chart: clicks (bars) and conversions (a line with a point per day),
//! one mark of each for every day of the range, as plain SVG shapes the template draws.
//!
//! Only numbers and dates reach the SVG; the template escapes them anyway.

/// Drawing area, in SVG user units (the SVG scales to its box).
pub(crate) const WIDTH: u32 = 960;
pub(crate) const HEIGHT: u32 = 260;
const LEFT: f64 = 56.0;
const RIGHT: f64 = 48.0;
const TOP: f64 = 16.0;
const BOTTOM: f64 = 32.0;

/// One day's figures.
pub(crate) struct Day {
    pub(crate) date: String,
    pub(crate) clicks: u64,
    pub(crate) conversions: u64,
}

pub(crate) struct Bar {
    pub(crate) x: String,
    pub(crate) y: String,
    pub(crate) w: String,
    pub(crate) h: String,
    pub(crate) cx: String,
    pub(crate) cy: String,
    pub(crate) date: String,
    pub(crate) clicks: u64,
    pub(crate) conversions: u64,
}

pub(crate) struct Tick {
    pub(crate) y: String,
    pub(crate) left: String,
    pub(crate) right: String,
}

pub(crate) struct Label {
    pub(crate) x: String,
    pub(crate) text: String,
}

/// Everything the template needs to draw the chart.
pub(crate) struct Chart {
    pub(crate) width: u32,
    pub(crate) height: u32,
    pub(crate) bars: Vec<Bar>,
    pub(crate) ticks: Vec<Tick>,
    pub(crate) labels: Vec<Label>,
    /// The conversions line, as `points` of a polyline.
    pub(crate) line: String,
    pub(crate) axis_y: String,
    pub(crate) plot_left: String,
    pub(crate) plot_right: String,
    /// Where the left (clicks) and right (conversions) axis labels stand.
    pub(crate) left_x: String,
    pub(crate) right_x: String,
    pub(crate) label_y: String,
}

fn n(v: f64) -> String {
    format!("{v:.1}")
}

/// A round top for an axis with four even steps: 1, 2 or 5 times a power of ten, at
/// least `max`, rounded up to a multiple of 4.
fn nice(max: u64) -> u64 {
    let mut step = 1u64;
    loop {
        for m in [1, 2, 5] {
            let top = step.saturating_mul(m);
            if top >= max {
                return top.div_ceil(4).saturating_mul(4);
            }
        }
        step = step.saturating_mul(10);
    }
}

/// Lays out `days` (in order, one per day of the range).
pub(crate) fn draw(days: &[Day]) -> Chart {
    let plot_w = WIDTH as f64 - LEFT - RIGHT;
    let plot_h = HEIGHT as f64 - TOP - BOTTOM;
    let base = TOP + plot_h;
    let click_top = nice(days.iter().map(|d| d.clicks).max().unwrap_or(0).max(4));
    let conv_top = nice(days.iter().map(|d| d.conversions).max().unwrap_or(0).max(4));
    let slot = plot_w / days.len().max(1) as f64;
    let bar_w = (slot * 0.7).max(1.0);
    let mut bars = Vec::with_capacity(days.len());
    let mut line = String::new();
    for (i, d) in days.iter().enumerate() {
        let h = d.clicks as f64 / click_top as f64 * plot_h;
        let x = LEFT + slot * i as f64 + (slot - bar_w) / 2.0;
        let cx = LEFT + slot * (i as f64 + 0.5);
        let cy = base - d.conversions as f64 / conv_top as f64 * plot_h;
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(&format!("{},{}", n(cx), n(cy)));
        bars.push(Bar {
            x: n(x),
            y: n(base - h),
            w: n(bar_w),
            h: n(h),
            cx: n(cx),
            cy: n(cy),
            date: d.date.clone(),
            clicks: d.clicks,
            conversions: d.conversions,
        });
    }
    let ticks = (0..=4)
        .map(|i| Tick {
            y: n(base - plot_h * i as f64 / 4.0),
            left: (click_top * i / 4).to_string(),
            right: (conv_top * i / 4).to_string(),
        })
        .collect();
    // A date under every day while they fit, then under every k-th day.
    let every = days.len().div_ceil(12).max(1);
    let labels = days
        .iter()
        .enumerate()
        .filter(|(i, _)| i % every == 0)
        .map(|(i, d)| Label {
            x: n(LEFT + slot * (i as f64 + 0.5)),
            text: d.date.get(5..).unwrap_or(&d.date).to_owned(),
        })
        .collect();
    Chart {
        width: WIDTH,
        height: HEIGHT,
        bars,
        ticks,
        labels,
        line,
        axis_y: n(base),
        plot_left: n(LEFT),
        plot_right: n(WIDTH as f64 - RIGHT),
        left_x: n(LEFT - 8.0),
        right_x: n(WIDTH as f64 - RIGHT + 8.0),
        label_y: n(base + 20.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_bar_per_day_within_the_plot() {
        let days: Vec<Day> = (0..30)
            .map(|i| Day { date: format!("2026-01-{:02}", i + 1), clicks: i * 10, conversions: i % 3 })
            .collect();
        let chart = draw(&days);
        assert_eq!(chart.bars.len(), 30);
        assert_eq!(chart.line.split(' ').count(), 30);
        for b in &chart.bars {
            let (y, h): (f64, f64) = (b.y.parse().unwrap(), b.h.parse().unwrap());
            assert!(y >= TOP - 0.1 && (y + h - (HEIGHT as f64 - BOTTOM)).abs() < 0.2, "{} {}", b.y, b.h);
        }
        assert!(chart.labels.len() <= 15);
        assert_eq!(nice(0), 4);
        assert_eq!(nice(290), 500);
        assert_eq!(nice(7), 12);
        assert_eq!(draw(&[]).bars.len(), 0);
    }
}
