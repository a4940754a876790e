//! The curve of one bench at several sizes (`N=1000,10000,30000,100000`): how the operator's
//! time to all Ready, the floor's, and the operator's peak RSS grow with N, as a Markdown
//! table and an SVG drawn with plotters (issue #23: "the curve plotted, drawn by the bench").

use std::path::Path;
use std::time::Duration;

use plotters::prelude::*;

/// One size of one series: what the bench measured at N accounts.
#[derive(Clone, Copy, Debug)]
pub struct Point {
    /// Accounts onboarded.
    pub n: usize,
    /// The operator's time from the first create to the last account Ready.
    pub operator: Duration,
    /// The floor's, when the dialect has one (the Partner API).
    pub floor: Option<Duration>,
    /// The operator's peak RSS (`VmHWM`), in MiB.
    pub peak_rss_mib: f64,
    /// The operator's CPU time for the rollout and both resyncs, in seconds.
    pub cpu_seconds: f64,
}

/// The points of one dialect at one partner limit, e.g. `Partner 1000/s`, in order of N.
#[derive(Clone, Debug)]
pub struct Series {
    pub label: String,
    pub points: Vec<Point>,
}

/// The curve as a Markdown table: a row per series and size.
pub fn table(series: &[Series]) -> String {
    let mut out = String::from(
        "| run | N | operator all Ready | floor | operator/floor | µs per account (operator) | peak RSS | KiB per account | CPU |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for s in series {
        for p in &s.points {
            let (floor, ratio) = match p.floor {
                Some(f) => (
                    format!("{:.1} s", f.as_secs_f64()),
                    format!("{:.2}×", p.operator.as_secs_f64() / f.as_secs_f64().max(1e-9)),
                ),
                None => ("—".to_owned(), "—".to_owned()),
            };
            out += &format!(
                "| {} | {} | {:.1} s | {floor} | {ratio} | {:.0} | {:.1} MiB | {:.1} | {:.1} s |\n",
                s.label,
                p.n,
                p.operator.as_secs_f64(),
                p.operator.as_secs_f64() * 1e6 / p.n.max(1) as f64,
                p.peak_rss_mib,
                p.peak_rss_mib * 1024.0 / p.n.max(1) as f64,
                p.cpu_seconds,
            );
        }
    }
    out
}

/// Draws the curve into `path` (SVG, 1000 × 420): on the left the time to all Ready against N
/// (operator solid, floor dashed; both axes logarithmic, so a straight line of slope 1 is cost
/// proportional to N), on the right the operator's peak RSS against N with `goal_mib` as a
/// line. Errors: the file cannot be written.
pub fn draw(series: &[Series], goal_mib: f64, path: &Path) -> anyhow::Result<()> {
    let points = || series.iter().flat_map(|s| &s.points);
    let n_range = {
        let (lo, hi) = points().fold((f64::MAX, 0f64), |(lo, hi), p| (lo.min(p.n as f64), hi.max(p.n as f64)));
        lo * 0.8..hi * 1.25
    };
    let t_range = {
        let secs = points()
            .flat_map(|p| [Some(p.operator), p.floor])
            .flatten()
            .map(|d| d.as_secs_f64());
        let (lo, hi) = secs.fold((f64::MAX, 0f64), |(lo, hi), s| (lo.min(s), hi.max(s)));
        (lo * 0.7).max(0.01)..hi * 1.5
    };
    let rss_max = points().map(|p| p.peak_rss_mib).fold(goal_mib, f64::max) * 1.15;

    let root = SVGBackend::new(path, (1000, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(500);

    let mut time = ChartBuilder::on(&left)
        .caption("time to all Ready", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(52)
        .build_cartesian_2d(n_range.clone().log_scale(), t_range.log_scale())?;
    time.configure_mesh().x_desc("accounts (N)").y_desc("seconds").draw()?;
    for (i, s) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let operator: Vec<_> = s
            .points
            .iter()
            .map(|p| (p.n as f64, p.operator.as_secs_f64()))
            .collect();
        time.draw_series(LineSeries::new(operator.clone(), color.stroke_width(2)))?
            .label(format!("{} operator", s.label))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        time.draw_series(operator.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
        let floor: Vec<_> = s
            .points
            .iter()
            .filter_map(|p| Some((p.n as f64, p.floor?.as_secs_f64())))
            .collect();
        if !floor.is_empty() {
            time.draw_series(DashedLineSeries::new(floor, 6, 4, color.stroke_width(1)))?
                .label(format!("{} floor", s.label))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
    }
    time.configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;

    let mut memory = ChartBuilder::on(&right)
        .caption("operator peak RSS", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(52)
        .build_cartesian_2d(n_range.clone().log_scale(), 0f64..rss_max)?;
    memory.configure_mesh().x_desc("accounts (N)").y_desc("MiB").draw()?;
    memory
        .draw_series(DashedLineSeries::new(
            [(n_range.start, goal_mib), (n_range.end, goal_mib)],
            6,
            4,
            RED.stroke_width(1),
        ))?
        .label(format!("goal {goal_mib:.0} MiB"))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    for (i, s) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let rss: Vec<_> = s.points.iter().map(|p| (p.n as f64, p.peak_rss_mib)).collect();
        memory
            .draw_series(LineSeries::new(rss.clone(), color.stroke_width(2)))?
            .label(s.label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        memory.draw_series(rss.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
    }
    memory
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series() -> Vec<Series> {
        let point = |n: usize, secs: f64, mib: f64| Point {
            n,
            operator: Duration::from_secs_f64(secs),
            floor: Some(Duration::from_secs_f64(secs * 0.9)),
            peak_rss_mib: mib,
            cpu_seconds: secs / 4.0,
        };
        vec![Series {
            label: "Partner 1000/s".into(),
            points: vec![point(1000, 8.0, 20.0), point(10_000, 100.0, 58.0)],
        }]
    }

    #[test]
    fn the_table_has_a_row_per_size_with_the_ratio_and_the_cost_per_account() {
        let table = table(&series());
        let rows: Vec<&str> = table.lines().skip(2).collect();
        assert_eq!(rows.len(), 2);
        assert!(
            rows[0].starts_with("| Partner 1000/s | 1000 | 8.0 s | 7.2 s | 1.11× | 8000 | 20.0 MiB | 20.5 |"),
            "{}",
            rows[0]
        );
        assert!(rows[1].contains("| 10000 | 100.0 s |"), "{}", rows[1]);
    }

    #[test]
    fn draws_an_svg_with_every_series_and_the_goal() {
        let path = std::env::temp_dir().join(format!("cyclr-bench-curve-{}.svg", std::process::id()));
        draw(&series(), 256.0, &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(80)]);
        for label in [
            "Partner 1000/s operator",
            "Partner 1000/s floor",
            "goal 256 MiB",
            "operator peak RSS",
        ] {
            assert!(svg.contains(label), "no {label:?} in the SVG");
        }
    }
}
