//! `sam bench --plot FILE.svg`: what a run measured, as pictures — committed messages per
//! second over the run, and the latency from send to delivery by percentile.

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

/// The width of one throughput bucket.
pub const BUCKET: Duration = Duration::from_millis(100);

/// What the plot shows.
pub struct Run<'a> {
    /// A line under the title: what was run.
    pub caption: String,
    /// When each message was seen committed, from the start of the run.
    pub commit_times: &'a [Duration],
    /// Every latency measured, in µs, sorted.
    pub latencies_us: &'a [u64],
}

/// Committed messages per second in each [`BUCKET`] of the run: (bucket end in s, rate).
pub fn throughput(commit_times: &[Duration]) -> Vec<(f64, f64)> {
    let Some(last) = commit_times.iter().max() else { return Vec::new() };
    let buckets = (last.as_nanos() / BUCKET.as_nanos()) as usize + 1;
    let mut counts = vec![0u64; buckets];
    for t in commit_times {
        counts[(t.as_nanos() / BUCKET.as_nanos()) as usize] += 1;
    }
    let per_s = 1.0 / BUCKET.as_secs_f64();
    counts.iter().enumerate().map(|(i, n)| ((i + 1) as f64 * BUCKET.as_secs_f64(), *n as f64 * per_s)).collect()
}

/// Latency (ms) at each percentile from 0 to 100, in 0.1 steps.
pub fn percentiles(latencies_us: &[u64]) -> Vec<(f64, f64)> {
    if latencies_us.is_empty() {
        return Vec::new();
    }
    let last = latencies_us.len() - 1;
    (0..=1000)
        .map(|i| {
            let p = f64::from(i) / 10.0;
            let at = ((last as f64) * p / 100.0).round() as usize;
            (p, latencies_us[at] as f64 / 1_000.0)
        })
        .collect()
}

/// Writes the two charts, one above the other, to `path` as SVG.
pub fn write_svg(path: &Path, run: &Run<'_>) -> Result<()> {
    let root = SVGBackend::new(path, (900, 760)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let root = root.titled(&format!("sam bench — {}", run.caption), ("sans-serif", 18)).map_err(plot_error)?;
    let (top, bottom) = root.split_vertically(360);
    let rate = throughput(run.commit_times);
    let max_t = rate.last().map_or(1.0, |(t, _)| *t);
    let max_rate = rate.iter().map(|(_, r)| *r).fold(1.0, f64::max) * 1.1;
    let mut chart = ChartBuilder::on(&top)
        .caption("committed messages per second", ("sans-serif", 15))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(72)
        .build_cartesian_2d(0.0..max_t, 0.0..max_rate)
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc("time since the first send (s)")
        .y_desc("msgs/s")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()
        .map_err(plot_error)?;
    chart.draw_series(LineSeries::new(rate, &BLUE)).map_err(plot_error)?;
    let latency = percentiles(run.latencies_us);
    // The last tenth of a percent would squash the rest: the axis stops at p99.9.
    let top_ms = latency.get(999).map_or(1.0, |(_, ms)| *ms).max(0.001) * 1.1;
    let mut chart = ChartBuilder::on(&bottom)
        .caption("latency from send to delivery, by percentile", ("sans-serif", 15))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(72)
        .build_cartesian_2d(0.0..100.0, 0.0..top_ms)
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("ms")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .draw()
        .map_err(plot_error)?;
    chart.draw_series(LineSeries::new(latency, &RED)).map_err(plot_error)?;
    root.present().map_err(plot_error)?;
    Ok(())
}

fn plot_error<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("drawing the plot: {e}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throughput_counts_commits_per_bucket() {
        let times: Vec<Duration> = [10, 20, 150, 199, 250].iter().map(|ms| Duration::from_millis(*ms)).collect();
        assert_eq!(throughput(&times), vec![(0.1, 20.0), (0.2, 20.0), (0.30000000000000004, 10.0)]);
        assert!(throughput(&[]).is_empty());
    }

    #[test]
    fn percentiles_run_from_the_least_to_the_most() {
        let latencies: Vec<u64> = (1..=1_000).map(|i| i * 1_000).collect();
        let p = percentiles(&latencies);
        assert_eq!(p.len(), 1_001);
        assert_eq!(p[0], (0.0, 1.0));
        assert_eq!(p[500].1, 501.0);
        assert_eq!(p[1_000], (100.0, 1_000.0));
    }

    #[test]
    fn the_svg_has_both_charts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bench.svg");
        let times: Vec<Duration> = (0..1_000).map(Duration::from_millis).collect();
        let latencies: Vec<u64> = (1..=500).collect();
        write_svg(&path, &Run { caption: "test".into(), commit_times: &times, latencies_us: &latencies })
            .expect("written");
        let svg = std::fs::read_to_string(&path).expect("svg");
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("committed messages per second") && svg.contains("by percentile"));
        assert_eq!(svg.matches(r##"stroke="#0000FF""##).count(), 1, "the throughput line");
        assert_eq!(svg.matches(r##"stroke="#FF0000""##).count(), 1, "the latency line");
    }
}
