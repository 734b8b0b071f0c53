//! The results of one benchmark run and the files they are kept in: the [`Run`] types that
//! every scenario fills in, `run.json` (the machine-readable record, read back by
//! [`read_json`]), `summary.md` (the tables a person reads in BENCHMARKS.md), `latency.svg`
//! (latency by percentile on the usual HdrHistogram scale) and `throughput.svg` (completions
//! per second over the measured window). Plots are drawn with plotters' SVG backend, whose text
//! is left to the viewer's fonts, so no font library is linked; non-finite numbers are left out
//! of plots and written to JSON as `null` (read back as NaN).

use std::fmt::Write as _;
use std::ops::Range;
use std::path::{Path, PathBuf};

use anyhow::Context;
use plotters::backend::{DrawingBackend, SVGBackend};
use plotters::chart::ChartBuilder;
use plotters::coord::Shift;
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint, Ranged};
use plotters::drawing::{DrawingArea, IntoDrawingArea};
use plotters::element::{Circle, DashedPathElement, PathElement, Text};
use plotters::series::{DashedLineSeries, LineSeries};
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{IntoFont, RGBColor, ShapeStyle, TextStyle, WHITE};
use serde::{Deserialize, Deserializer, Serialize};

/// The `format_version` of the JSON this module writes.
pub const FORMAT_VERSION: u32 = 1;

/// One benchmark run: what was measured, where, with which settings, and the results.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Run {
    /// [`FORMAT_VERSION`].
    pub format_version: u32,
    /// RFC 3339.
    pub started_utc: String,
    /// Commit hash, with a "+dirty" suffix for uncommitted changes, or "unknown".
    pub git_commit: String,
    pub command_line: String,
    /// A short run to check that everything works; its numbers are not representative.
    pub smoke: bool,
    pub settings: Settings,
    pub machine: Machine,
    pub results: Vec<ScenarioResult>,
    pub ratios: Vec<Ratio>,
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settings {
    #[serde(deserialize_with = "f64_or_null")]
    pub duration_secs: f64,
    #[serde(deserialize_with = "f64_or_null")]
    pub warmup_secs: f64,
    pub payload_bytes: usize,
    pub clients: u64,
    pub connections: u64,
    pub nodes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    pub cores: usize,
    #[serde(deserialize_with = "f64_or_null")]
    pub memory_gib: f64,
    pub cpu_model: String,
    pub kernel: String,
}

/// One scenario against one system.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScenarioResult {
    /// "log", "hot-path", "relay", "replay", "crypto", "etcd", "nats".
    pub scenario: String,
    /// e.g. "sealpost 0.1.0 (3 nodes)", "etcd 3.4.23 (3 members)".
    pub system: String,
    /// "events/s", "messages/s", "records/s", "writes/s".
    pub unit: String,
    /// One sentence: what an acknowledged write survives.
    pub durability: String,
    pub phases: Vec<Phase>,
    pub processes: Vec<ProcessStats>,
    pub notes: Vec<String>,
}

/// How load was offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LoopKind {
    /// A fixed number of clients, each waiting for its request before sending the next.
    Closed,
    /// Requests arrive at a fixed rate, whether or not earlier ones completed.
    Open,
    /// One sequential worker (e.g. a replay).
    Single,
}

/// One measured stretch of a scenario.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Phase {
    /// "max", "half" or "run".
    pub name: String,
    pub loop_kind: LoopKind,
    /// Closed loop: concurrent clients.
    pub clients: Option<u64>,
    /// Open loop: arrival rate per second.
    pub offered_per_sec: Option<f64>,
    pub completed: u64,
    pub errors: u64,
    /// Measured seconds (after warm-up).
    #[serde(deserialize_with = "f64_or_null")]
    pub secs: f64,
    #[serde(deserialize_with = "f64_or_null")]
    pub throughput_per_sec: f64,
    pub latency: Option<Latency>,
    /// Completions per interval over the measured window.
    pub timeline: Vec<TimelinePoint>,
    /// When the measured window began, milliseconds since the Unix epoch (absent in runs
    /// recorded before it was kept): `t_secs` of the timeline counts from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_unix_ms: Option<u64>,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Latency {
    #[serde(deserialize_with = "f64_or_null")]
    pub p50_ms: f64,
    #[serde(deserialize_with = "f64_or_null")]
    pub p90_ms: f64,
    #[serde(deserialize_with = "f64_or_null")]
    pub p99_ms: f64,
    #[serde(deserialize_with = "f64_or_null")]
    pub p999_ms: f64,
    #[serde(deserialize_with = "f64_or_null")]
    pub max_ms: f64,
    #[serde(deserialize_with = "f64_or_null")]
    pub mean_ms: f64,
    pub count: u64,
    /// Latency by percentile, dense towards the tail, ending with the maximum at 100.
    pub curve: Vec<CurvePoint>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CurvePoint {
    /// 0..=100.
    #[serde(deserialize_with = "f64_or_null")]
    pub percentile: f64,
    #[serde(deserialize_with = "f64_or_null")]
    pub ms: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TimelinePoint {
    /// Seconds since the start of the measured window, at the end of the interval.
    #[serde(deserialize_with = "f64_or_null")]
    pub t_secs: f64,
    #[serde(deserialize_with = "f64_or_null")]
    pub per_sec: f64,
    /// The longest latency among the operations that completed in the interval, ms (absent
    /// in runs recorded before it was measured, and where none completed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ms: Option<f64>,
}

/// Resource use of one process (a server or the load generator) during a scenario.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessStats {
    pub name: String,
    pub pid: u32,
    #[serde(deserialize_with = "f64_or_null")]
    pub cpu_secs: f64,
    #[serde(deserialize_with = "f64_or_null")]
    pub cpu_cores_avg: f64,
    #[serde(deserialize_with = "f64_or_null")]
    pub peak_rss_mib: f64,
}

/// A derived figure, e.g. end-to-end rate over the crypto-only ceiling.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ratio {
    pub name: String,
    #[serde(deserialize_with = "f64_or_null")]
    pub value: f64,
    pub target: Option<f64>,
    pub met: Option<bool>,
    pub explanation: String,
}

/// serde_json writes NaN and infinities as `null`; read that back as NaN instead of failing,
/// so that a run with one undefined figure can still be read.
fn f64_or_null<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(deserializer)?.unwrap_or(f64::NAN))
}

/// Points per halving of the distance to 100% in [`Latency::curve`]: 0, 12.9, 24.2, … 50, …
/// 75, … 87.5, … (the spacing of HdrHistogram's classic percentile distribution).
const CURVE_TICKS_PER_HALF_DISTANCE: u32 = 5;
/// The highest percentile in the curve before its final (100, max) point.
const CURVE_MAX_PERCENTILE: f64 = 99.999;

impl Latency {
    /// Percentiles of a histogram of MICROsecond values, in milliseconds; `None` when the
    /// histogram is empty. The curve runs from 0 towards 100 with
    /// 5 points per halving of the distance to 100 (0, 12.9, … 50, … 75, … 87.5, …), up to
    /// 99.999 or until fewer than one value is left beyond the point, then the maximum at 100:
    /// at most 85 points.
    pub fn from_histogram(h: &hdrhistogram::Histogram<u64>) -> Option<Latency> {
        if h.is_empty() {
            return None;
        }
        let ms = |micros: u64| micros as f64 / 1000.0;
        let at = |percentile: f64| ms(h.value_at_percentile(percentile));
        let count = h.len();
        let max_ms = ms(h.max());

        let mut curve = Vec::new();
        for k in 0..200u32 {
            // Fraction of values above this point.
            let beyond = 0.5f64.powf(f64::from(k) / f64::from(CURVE_TICKS_PER_HALF_DISTANCE));
            let percentile = 100.0 * (1.0 - beyond);
            if percentile > CURVE_MAX_PERCENTILE || beyond * (count as f64) < 1.0 {
                break;
            }
            curve.push(CurvePoint {
                percentile,
                ms: at(percentile),
            });
        }
        curve.push(CurvePoint {
            percentile: 100.0,
            ms: max_ms,
        });

        Some(Latency {
            p50_ms: at(50.0),
            p90_ms: at(90.0),
            p99_ms: at(99.0),
            p999_ms: at(99.9),
            max_ms,
            mean_ms: h.mean() / 1000.0,
            count,
            curve,
        })
    }
}

impl Phase {
    /// Completions counted per interval of `interval_secs` → rates per second, each stamped at
    /// the end of its interval, with the longest latency of each interval from `max_us`
    /// (microseconds; none where nothing completed or it is missing). Empty when
    /// `interval_secs` is not a positive finite number.
    pub fn timeline_from_counts(
        counts: &[u64],
        max_us: &[u64],
        interval_secs: f64,
    ) -> Vec<TimelinePoint> {
        if !(interval_secs.is_finite() && interval_secs > 0.0) {
            return Vec::new();
        }
        counts
            .iter()
            .enumerate()
            .map(|(i, &count)| TimelinePoint {
                t_secs: (i + 1) as f64 * interval_secs,
                per_sec: count as f64 / interval_secs,
                max_ms: max_us
                    .get(i)
                    .filter(|_| count > 0)
                    .map(|&us| us as f64 / 1000.0),
            })
            .collect()
    }

    /// The interval whose longest latency was the longest: `(t_secs, max_ms)` of it.
    pub fn slowest_interval(&self) -> Option<(f64, f64)> {
        self.timeline
            .iter()
            .filter_map(|t| Some((t.t_secs, t.max_ms?)))
            .filter(|(t, ms)| t.is_finite() && ms.is_finite())
            .max_by(|a, b| a.1.total_cmp(&b.1))
    }
}

/// Writes `run` as pretty-printed JSON.
pub fn write_json(run: &Run, path: &Path) -> anyhow::Result<()> {
    let mut json = serde_json::to_string_pretty(run).context("serialising the run")?;
    json.push('\n');
    std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))
}

/// Reads a run written by [`write_json`].
pub fn read_json(path: &Path) -> anyhow::Result<Run> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    anyhow::ensure!(
        len <= RUN_JSON_BYTES_MAX,
        "{} is {len} bytes, more than a run's record may be ({RUN_JSON_BYTES_MAX})",
        path.display()
    );
    let json =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let run: Run =
        serde_json::from_str(&json).with_context(|| format!("parsing {}", path.display()))?;
    anyhow::ensure!(
        run.format_version == FORMAT_VERSION,
        "{} has format version {}; this sealpost-bench reads version {FORMAT_VERSION}",
        path.display(),
        run.format_version
    );
    Ok(run)
}

/// Largest `run.json` [`read_json`] reads (a full run writes well under 1 MB).
pub const RUN_JSON_BYTES_MAX: u64 = 64 * 1024 * 1024;

/// Writes `run.json`, `summary.md`, `latency.svg` and `throughput.svg` into `dir` (created if
/// missing) and returns their paths in that order.
pub fn write_all(run: &Run, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let json = dir.join("run.json");
    write_json(run, &json)?;
    let summary = dir.join("summary.md");
    std::fs::write(&summary, markdown(run))
        .with_context(|| format!("writing {}", summary.display()))?;
    let latency = dir.join("latency.svg");
    plot_latency(run, &latency)?;
    let throughput = dir.join("throughput.svg");
    plot_throughput(run, &throughput)?;
    Ok(vec![json, summary, latency, throughput])
}

// ---------------------------------------------------------------------------------------------
// Markdown

/// The run as markdown for BENCHMARKS.md: header, results, processes, ratios, durability, notes.
pub fn markdown(run: &Run) -> String {
    let mut md = String::new();
    // Writing into a String cannot fail; the results of writeln! are ignored below.
    let date = run.started_utc.get(..10).unwrap_or(&run.started_utc);
    let _ = writeln!(md, "## Benchmark run {date}\n");
    if run.smoke {
        let _ = writeln!(
            md,
            "> **Smoke run**: short and small, to check that every scenario works. \
             Its numbers are not representative.\n"
        );
    }
    let m = &run.machine;
    let s = &run.settings;
    let _ = writeln!(md, "- started: {}", cell(&run.started_utc));
    let _ = writeln!(md, "- commit: {}", code(&run.git_commit));
    let _ = writeln!(
        md,
        "- machine: {} cores, {} GiB memory, {}, kernel {}",
        m.cores,
        fmt_plain(m.memory_gib, 1),
        cell(&m.cpu_model),
        cell(&m.kernel)
    );
    let _ = writeln!(
        md,
        "- settings: {} s measured after {} s warm-up, payload {} bytes, {} clients, \
         {} connections, {} nodes",
        fmt_plain(s.duration_secs, 2),
        fmt_plain(s.warmup_secs, 2),
        group_int(s.payload_bytes as u64),
        group_int(s.clients),
        group_int(s.connections),
        group_int(s.nodes)
    );
    let _ = writeln!(md, "- command: {}", code(&run.command_line));
    let _ = writeln!(
        md,
        "- smoke run: {}\n",
        if run.smoke { "yes" } else { "no" }
    );

    let _ = writeln!(md, "### Results\n");
    if run.results.iter().all(|r| r.phases.is_empty()) {
        let _ = writeln!(md, "_No results._\n");
    } else {
        let _ = writeln!(
            md,
            "Throughput over the measured window (after warm-up); latencies in milliseconds.\n"
        );
        let _ = writeln!(
            md,
            "| scenario | system | phase | loop | clients/rate | throughput (unit) | p50 | p90 \
             | p99 | p99.9 | max (ms) | errors |"
        );
        let _ = writeln!(
            md,
            "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for r in &run.results {
            for p in &r.phases {
                let load = match p.loop_kind {
                    LoopKind::Closed => p
                        .clients
                        .map_or_else(|| "–".to_owned(), |c| format!("{} clients", group_int(c))),
                    LoopKind::Open => p
                        .offered_per_sec
                        .map_or_else(|| "–".to_owned(), |rate| format!("{}/s", fmt_rate(rate))),
                    LoopKind::Single => "–".to_owned(),
                };
                let lat = |f: fn(&Latency) -> f64| {
                    p.latency
                        .as_ref()
                        .map_or_else(|| "–".to_owned(), |l| fmt_ms(f(l)))
                };
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} | {} {} | {} | {} | {} | {} | {} | {} |",
                    cell(&r.scenario),
                    cell(&r.system),
                    cell(&p.name),
                    loop_name(p.loop_kind),
                    load,
                    fmt_rate(p.throughput_per_sec),
                    cell(&r.unit),
                    lat(|l| l.p50_ms),
                    lat(|l| l.p90_ms),
                    lat(|l| l.p99_ms),
                    lat(|l| l.p999_ms),
                    lat(|l| l.max_ms),
                    fmt_errors(p.errors, p.completed),
                );
            }
        }
        md.push('\n');
    }

    let _ = writeln!(md, "### Processes\n");
    if run.results.iter().all(|r| r.processes.is_empty()) {
        let _ = writeln!(md, "_No process statistics recorded._\n");
    } else {
        let _ = writeln!(
            md,
            "| scenario | process | CPU seconds | average cores | peak RSS (MiB) |"
        );
        let _ = writeln!(md, "|---|---|---:|---:|---:|");
        for r in &run.results {
            for p in &r.processes {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} |",
                    cell(&r.scenario),
                    cell(&p.name),
                    fmt_plain(p.cpu_secs, 1),
                    fmt_plain(p.cpu_cores_avg, 2),
                    fmt_plain(p.peak_rss_mib, 1)
                );
            }
        }
        md.push('\n');
    }

    let _ = writeln!(md, "### Ratios\n");
    if run.ratios.is_empty() {
        let _ = writeln!(md, "_No ratios._\n");
    } else {
        for r in &run.ratios {
            let verdict = match (r.target, r.met) {
                (Some(target), Some(true)) => format!(" (target {}: ✓ met)", fmt_ratio(target)),
                (Some(target), Some(false)) => {
                    format!(" (target {}: ✗ missed)", fmt_ratio(target))
                }
                (Some(target), None) => format!(" (target {})", fmt_ratio(target)),
                (None, Some(true)) => " (✓ met)".to_owned(),
                (None, Some(false)) => " (✗ missed)".to_owned(),
                (None, None) => String::new(),
            };
            let _ = writeln!(
                md,
                "- **{}**: {}{} — {}",
                cell(&r.name),
                fmt_ratio(r.value),
                verdict,
                cell(&r.explanation)
            );
        }
        md.push('\n');
    }

    let _ = writeln!(md, "### Durability\n");
    let mut seen: Vec<(&str, &str)> = Vec::new();
    for r in &run.results {
        if seen.contains(&(r.system.as_str(), r.durability.as_str())) {
            continue;
        }
        seen.push((&r.system, &r.durability));
        let scenarios: Vec<&str> = run
            .results
            .iter()
            .filter(|o| o.system == r.system && o.durability == r.durability)
            .map(|o| o.scenario.as_str())
            .collect();
        let _ = writeln!(
            md,
            "- **{}** ({}): {}",
            cell(&r.system),
            cell(&scenarios.join(", ")),
            cell(&r.durability)
        );
    }
    if seen.is_empty() {
        let _ = writeln!(md, "_No systems measured._");
    }
    md.push('\n');

    let scenario_notes: Vec<(&str, &str)> = run
        .results
        .iter()
        .flat_map(|r| {
            r.notes
                .iter()
                .map(move |n| (r.scenario.as_str(), n.as_str()))
        })
        .collect();
    if !run.notes.is_empty() || !scenario_notes.is_empty() {
        let _ = writeln!(md, "### Notes\n");
        for note in &run.notes {
            let _ = writeln!(md, "- {}", cell(note));
        }
        for (scenario, note) in scenario_notes {
            let _ = writeln!(md, "- {}: {}", cell(scenario), cell(note));
        }
        md.push('\n');
    }
    md
}

fn loop_name(kind: LoopKind) -> &'static str {
    match kind {
        LoopKind::Closed => "closed",
        LoopKind::Open => "open",
        LoopKind::Single => "single",
    }
}

/// Text safe inside a table cell or list item: no pipe or line break.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace(['\r', '\n'], " ")
}

/// Inline code, with a longer fence when the text holds a backtick.
fn code(text: &str) -> String {
    let text = text.replace(['\r', '\n'], " ");
    if text.contains('`') {
        format!("`` {text} ``")
    } else {
        format!("`{text}`")
    }
}

/// 1234567 → "1,234,567".
fn group_int(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `decimals` places with a thousands separator in the integer part; "n/a" if not finite.
fn fmt_grouped(v: f64, decimals: usize) -> String {
    if !v.is_finite() {
        return "n/a".to_owned();
    }
    let text = format!("{:.*}", decimals, v.abs());
    let (int, frac) = match text.split_once('.') {
        Some((int, frac)) => (int, Some(frac)),
        None => (text.as_str(), None),
    };
    // A float printed without exponent has only digits before the point.
    let mut out = String::new();
    if v < 0.0 && text.chars().any(|c| c.is_ascii_digit() && c != '0') {
        out.push('-');
    }
    out.push_str(&group_int(int.parse().unwrap_or(0)));
    if let Some(frac) = frac {
        out.push('.');
        out.push_str(frac);
    }
    out
}

/// A rate: whole numbers with separators from 100 up, else 3 significant digits.
fn fmt_rate(v: f64) -> String {
    let a = v.abs();
    if !v.is_finite() {
        "n/a".to_owned()
    } else if a >= 100.0 || a == 0.0 {
        fmt_grouped(v, 0)
    } else if a >= 10.0 {
        fmt_grouped(v, 1)
    } else {
        fmt_grouped(v, 2)
    }
}

/// Milliseconds: 2 decimals, or 2 significant digits below 0.1 ms (crypto runs in µs).
fn fmt_ms(v: f64) -> String {
    let a = v.abs();
    if !v.is_finite() {
        "n/a".to_owned()
    } else if a >= 0.1 || a == 0.0 {
        fmt_grouped(v, 2)
    } else {
        let decimals = (-a.log10()).floor() as usize + 2;
        format!("{v:.decimals$}")
    }
}

fn fmt_ratio(v: f64) -> String {
    if v.is_finite() && v.abs() < 0.01 && v != 0.0 {
        format!("{v:.2e}")
    } else {
        fmt_rate(v)
    }
}

/// At most `decimals` places, trailing zeros dropped: 10.0 → "10", 2.50 → "2.5".
fn fmt_plain(v: f64, decimals: usize) -> String {
    let text = fmt_grouped(v, decimals);
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        text
    }
}

fn fmt_errors(errors: u64, completed: u64) -> String {
    if errors == 0 {
        return "0".to_owned();
    }
    let total = errors.saturating_add(completed) as f64;
    let share = 100.0 * errors as f64 / total;
    let share = if share < 0.01 {
        "<0.01".to_owned()
    } else {
        fmt_plain(share, 2)
    };
    format!("{} ({share}%)", group_int(errors))
}

// ---------------------------------------------------------------------------------------------
// Plots

const PLOT_WIDTH: u32 = 1000;
/// Title and subtitle above the chart.
const HEADER_HEIGHT: u32 = 60;
/// Header and chart, without the legend.
const PLOT_HEIGHT: u32 = 600;
const LEGEND_ROW: u32 = 24;
const LEGEND_COLUMNS: usize = 2;
const FONT: &str = "sans-serif";
/// A y axis becomes logarithmic when its largest value is this many times its smallest
/// positive one.
const LOG_AXIS_RATIO: f64 = 20.0;
/// The percentile axis reaches at least 99% (x = 2).
const MIN_PERCENTILE_X: f64 = 2.0;
/// x of 99.999%, where the curve from [`Latency::from_histogram`] puts its maximum at the latest.
const MAX_POINT_X: f64 = 5.0;

/// Colours of the lines (Tableau 10), one per scenario; phases of a scenario differ by dashes.
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
const GRID: RGBColor = RGBColor(225, 225, 225);
const TEXT_GREY: RGBColor = RGBColor(90, 90, 90);

/// One line of a plot; its points are in plot coordinates once [`place_y`] has run.
struct Line {
    label: String,
    color: RGBColor,
    /// 0 solid, 1 dashed, 2 and more short dashes.
    dash: usize,
    points: Vec<(f64, f64)>,
}

/// An axis in plot coordinates with its ticks and their labels.
#[derive(Clone)]
struct Axis {
    range: Range<f64>,
    ticks: Vec<(f64, String)>,
    /// Values are plotted as log10(value).
    log: bool,
}

impl Axis {
    /// Where a data value goes on this axis; values at or below zero go to the bottom of a
    /// log axis.
    fn place(&self, v: f64) -> f64 {
        if self.log {
            if v > 0.0 {
                v.log10().max(self.range.start)
            } else {
                self.range.start
            }
        } else {
            v
        }
    }

    fn label(&self, v: f64) -> String {
        let span = (self.range.end - self.range.start)
            .abs()
            .max(f64::MIN_POSITIVE);
        self.ticks
            .iter()
            .find(|(t, _)| (t - v).abs() <= span * 1e-9)
            .map_or_else(|| fmt_tick(v, 0.0), |(_, label)| label.clone())
    }
}

/// Linear from `range.start` to `range.end`, with grid lines at the ticks.
impl Ranged for Axis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let span = self.range.end - self.range.start;
        if !(span.is_finite() && span > 0.0 && value.is_finite()) {
            return (limit.0 + limit.1) / 2;
        }
        let share = (value - self.range.start) / span;
        (f64::from(limit.0) + share * f64::from(limit.1 - limit.0)).round() as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, _hint: Hint) -> Vec<f64> {
        self.ticks.iter().map(|t| t.0).collect()
    }

    fn range(&self) -> Range<f64> {
        self.range.clone()
    }
}

/// Latency by percentile, one line per (scenario, phase) that has latency.
pub fn plot_latency(run: &Run, path: &Path) -> anyhow::Result<()> {
    let svg = latency_svg(run)?;
    std::fs::write(path, svg).with_context(|| format!("writing {}", path.display()))
}

/// Throughput over the measured window, one line per (scenario, phase) with a timeline.
pub fn plot_throughput(run: &Run, path: &Path) -> anyhow::Result<()> {
    let svg = throughput_svg(run)?;
    std::fs::write(path, svg).with_context(|| format!("writing {}", path.display()))
}

/// Every phase with its line style: one colour per scenario (in order of appearance), and the
/// phases of a scenario told apart by dashes.
fn styled_phases(run: &Run) -> Vec<(&ScenarioResult, &Phase, RGBColor, usize)> {
    // (scenario, phases seen so far)
    let mut scenarios: Vec<(&str, usize)> = Vec::new();
    let mut out = Vec::new();
    for r in &run.results {
        let index = match scenarios.iter().position(|s| s.0 == r.scenario) {
            Some(i) => i,
            None => {
                scenarios.push((&r.scenario, 0));
                scenarios.len() - 1
            }
        };
        let color = PALETTE[index % PALETTE.len()];
        for p in &r.phases {
            out.push((r, p, color, scenarios[index].1));
            scenarios[index].1 += 1;
        }
    }
    out
}

/// x of a percentile on the HdrHistogram scale: log10(1 / (1 - p/100)); None at 100 and
/// beyond or when not finite.
fn percentile_x(percentile: f64) -> Option<f64> {
    if !(percentile.is_finite() && (0.0..100.0).contains(&percentile)) {
        return None;
    }
    // `+ 0.0` turns the -0.0 of percentile 0 into 0.0.
    let x = -(1.0 - percentile / 100.0).log10() + 0.0;
    x.is_finite().then_some(x.max(0.0))
}

/// The curve of `l` as (x, ms) with non-finite values dropped; the point at 100 (the maximum)
/// placed at x = log10(count), the percentile of a single value, kept within the curve and
/// 99.999%. Falls back to the summary percentiles when the curve is empty.
fn latency_points(l: &Latency) -> Vec<(f64, f64)> {
    let fallback;
    let curve = if l.curve.is_empty() {
        fallback = [
            (50.0, l.p50_ms),
            (90.0, l.p90_ms),
            (99.0, l.p99_ms),
            (99.9, l.p999_ms),
            (100.0, l.max_ms),
        ]
        .map(|(percentile, ms)| CurvePoint { percentile, ms });
        &fallback[..]
    } else {
        &l.curve[..]
    };
    let mut points: Vec<(f64, f64)> = Vec::new();
    let mut max_ms: Option<f64> = None;
    for c in curve {
        if !(c.ms.is_finite() && c.ms >= 0.0) {
            continue;
        }
        if c.percentile.is_finite() && c.percentile >= 100.0 {
            max_ms = Some(max_ms.map_or(c.ms, |m: f64| m.max(c.ms)));
        } else if let Some(x) = percentile_x(c.percentile) {
            points.push((x, c.ms));
        }
    }
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    if let Some(ms) = max_ms {
        let last_x = points.last().map_or(0.0, |p| p.0);
        let count_x = if l.count > 1 {
            (l.count as f64).log10()
        } else {
            0.0
        };
        points.push((count_x.clamp(last_x, last_x.max(MAX_POINT_X)), ms));
    }
    points
}

fn latency_svg(run: &Run) -> anyhow::Result<String> {
    let title = "Latency by percentile";
    let mut lines: Vec<Line> = Vec::new();
    for (r, p, color, dash) in styled_phases(run) {
        let Some(l) = &p.latency else { continue };
        let points = latency_points(l);
        if !points.is_empty() {
            lines.push(Line {
                label: format!("{} / {}", r.scenario, p.name),
                color,
                dash,
                points,
            });
        }
    }
    if lines.is_empty() {
        return empty_svg(title, &subtitle(run));
    }

    let max_x = lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.0))
        .fold(0.0, f64::max);
    let x_end = max_x.ceil().max(MIN_PERCENTILE_X);
    let mut x_ticks = vec![(0.0, "0%".to_owned()), (2f64.log10(), "50%".to_owned())];
    for n in 1..=(x_end as u32) {
        x_ticks.push((f64::from(n), percentile_label(n)));
    }
    let x_axis = Axis {
        range: 0.0..x_end,
        ticks: x_ticks,
        log: false,
    };
    let y_axis = value_axis(lines.iter().flat_map(|l| l.points.iter().map(|p| p.1)));
    place_y(&mut lines, &y_axis);
    let y_desc = if y_axis.log {
        "latency (ms, log scale)"
    } else {
        "latency (ms)"
    };
    render_svg(
        title,
        &subtitle(run),
        &x_axis,
        &y_axis,
        "percentile",
        y_desc,
        &lines,
    )
}

/// Moves the y values of `lines` from data to plot coordinates.
fn place_y(lines: &mut [Line], y_axis: &Axis) {
    for line in lines {
        for point in &mut line.points {
            point.1 = y_axis.place(point.1);
        }
    }
}

/// n nines as a percentile: 1 → "90%", 2 → "99%", 3 → "99.9%".
fn percentile_label(nines: u32) -> String {
    match nines {
        0 => "0%".to_owned(),
        1 => "90%".to_owned(),
        n => format!(
            "99{}{}%",
            if n > 2 { "." } else { "" },
            "9".repeat(n as usize - 2)
        ),
    }
}

fn throughput_svg(run: &Run) -> anyhow::Result<String> {
    let title = "Throughput over time";
    let mut lines: Vec<Line> = Vec::new();
    for (r, p, color, dash) in styled_phases(run) {
        let mut points: Vec<(f64, f64)> = p
            .timeline
            .iter()
            .filter(|t| t.t_secs.is_finite() && t.per_sec.is_finite() && t.per_sec >= 0.0)
            .map(|t| (t.t_secs, t.per_sec))
            .collect();
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        if !points.is_empty() {
            lines.push(Line {
                label: format!("{} / {} ({})", r.scenario, p.name, r.unit),
                color,
                dash,
                points,
            });
        }
    }
    if lines.is_empty() {
        return empty_svg(title, &subtitle(run));
    }
    let (min_t, max_t) = lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.0))
        .fold((0.0f64, 0.0f64), |(lo, hi), t| (lo.min(t), hi.max(t)));
    let x_axis = linear_axis(min_t, max_t, false);
    let y_axis = value_axis(lines.iter().flat_map(|l| l.points.iter().map(|p| p.1)));
    place_y(&mut lines, &y_axis);
    let y_desc = if y_axis.log {
        "completions/s (log scale)"
    } else {
        "completions/s"
    };
    render_svg(
        title,
        &subtitle(run),
        &x_axis,
        &y_axis,
        "seconds since measurement start",
        y_desc,
        &lines,
    )
}

fn subtitle(run: &Run) -> String {
    let mut s = format!("run {}, commit {}", run.started_utc, run.git_commit);
    if run.smoke {
        s.push_str(", SMOKE RUN (not representative)");
    }
    s
}

/// A y axis for non-negative finite values: logarithmic when they span more than
/// [`LOG_AXIS_RATIO`] (from the 1-2-5 step at or below the smallest positive value to the one
/// at or above the largest), else linear from zero.
fn value_axis(values: impl Iterator<Item = f64>) -> Axis {
    let (min_pos, max) = values.fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
        (if v > 0.0 { lo.min(v) } else { lo }, hi.max(v))
    });
    // At most 12 decades below the largest value; smaller ones sit on the bottom of the axis.
    let min_pos = min_pos.max(max * 1e-12);
    if !(max > 0.0 && max < 1e300 && min_pos.is_finite() && max / min_pos > LOG_AXIS_RATIO) {
        return linear_axis(0.0, max, true);
    }
    let steps = |decade: i32| [1.0, 2.0, 5.0].map(|m| m * 10f64.powi(decade));
    let low_decade = min_pos.log10().floor() as i32;
    let high_decade = max.log10().floor() as i32;
    let low = steps(low_decade)
        .into_iter()
        .rev()
        .find(|&v| v <= min_pos * (1.0 + 1e-12))
        .unwrap_or(10f64.powi(low_decade));
    let high = steps(high_decade)
        .into_iter()
        .chain(std::iter::once(10f64.powi(high_decade + 1)))
        .find(|&v| v >= max * (1.0 - 1e-12))
        .unwrap_or(10f64.powi(high_decade + 1));
    // Every 1-2-5 step when the axis spans at most 3 decades, else whole decades only, and
    // then the axis ends on decades too so that both ends are labelled.
    let dense = high_decade - low_decade <= 3;
    let (low, high) = if dense {
        (low, high)
    } else {
        let top = if high > 10f64.powi(high_decade) * (1.0 + 1e-12) {
            high_decade + 1
        } else {
            high_decade
        };
        (10f64.powi(low_decade), 10f64.powi(top))
    };
    let mut ticks = Vec::new();
    for decade in low_decade..=high_decade + 1 {
        let base = 10f64.powi(decade);
        for v in steps(decade) {
            let in_range = v >= low * (1.0 - 1e-12) && v <= high * (1.0 + 1e-12);
            if in_range && (dense || v == base) {
                ticks.push((v.log10(), fmt_tick(v, base)));
            }
        }
    }
    Axis {
        range: low.log10()..high.log10(),
        ticks,
        log: true,
    }
}

/// A linear axis from `min` to `max` (to 1 when empty) with about 8 round ticks; with `pad`,
/// some room above the largest value.
fn linear_axis(min: f64, max: f64, pad: bool) -> Axis {
    // Absurdly large values (beyond 1e300) would overflow the arithmetic below.
    let (min, max) = (min.clamp(-1e300, 1e300), max.min(1e300));
    let max = if max > min { max } else { min + 1.0 };
    let top = if pad { max + (max - min) * 0.05 } else { max };
    let step = nice_step((top - min) / 8.0);
    let start = (min / step).floor() * step;
    let end = if pad { (top / step).ceil() * step } else { top };
    let mut ticks = Vec::new();
    let mut i = 0u32;
    loop {
        let v = start + f64::from(i) * step;
        if v > end + step * 1e-9 || i > 100 {
            break;
        }
        ticks.push((v, fmt_tick(v, step)));
        i += 1;
    }
    Axis {
        range: start..end,
        ticks,
        log: false,
    }
}

/// The round number (1, 2 or 5 × 10^k) at or above `raw`.
fn nice_step(raw: f64) -> f64 {
    if !(raw.is_finite() && raw > 0.0) {
        return 1.0;
    }
    let magnitude = 10f64.powf(raw.log10().floor());
    let norm = raw / magnitude;
    let nice = if norm <= 1.0 {
        1.0
    } else if norm <= 2.0 {
        2.0
    } else if norm <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * magnitude
}

/// A tick label with as many decimals as `step` needs.
fn fmt_tick(v: f64, step: f64) -> String {
    let decimals = if step > 0.0 && step < 1.0 {
        (-step.log10()).ceil().max(0.0) as usize
    } else {
        0
    };
    let text = fmt_grouped(v, decimals.min(9));
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        text
    }
}

fn plot_err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow::anyhow!("drawing an SVG plot: {e}")
}

/// The SVG of a chart: title, subtitle, grid with labelled ticks, the lines, and a legend in
/// columns below the chart.
fn render_svg(
    title: &str,
    subtitle: &str,
    x: &Axis,
    y: &Axis,
    x_desc: &str,
    y_desc: &str,
    lines: &[Line],
) -> anyhow::Result<String> {
    let rows = lines.len().div_ceil(LEGEND_COLUMNS) as u32;
    let height = PLOT_HEIGHT + 16 + rows * LEGEND_ROW;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (PLOT_WIDTH, height)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let (header, rest) = root.split_vertically(HEADER_HEIGHT);
        draw_header(&header, title, subtitle)?;
        let (chart_area, legend_area) = rest.split_vertically(PLOT_HEIGHT - HEADER_HEIGHT);
        let mut chart = ChartBuilder::on(&chart_area)
            .margin(16)
            .margin_top(6)
            .margin_right(40)
            .x_label_area_size(50)
            .y_label_area_size(90)
            .build_cartesian_2d(x.clone(), y.clone())
            .map_err(plot_err)?;
        let x_label = |v: &f64| x.label(*v);
        let y_label = |v: &f64| y.label(*v);
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc(y_desc)
            .x_label_formatter(&x_label)
            .y_label_formatter(&y_label)
            .label_style((FONT, 13))
            .axis_desc_style((FONT, 15))
            .bold_line_style(GRID)
            .light_line_style(GRID)
            .draw()
            .map_err(plot_err)?;

        for line in lines {
            let style = ShapeStyle::from(line.color).stroke_width(2);
            // A line that would be (nearly) invisible, all its points within a pixel or two of
            // each other (one point, or one value), is drawn as a dot.
            let pixels: Vec<(i32, i32)> =
                line.points.iter().map(|p| chart.backend_coord(p)).collect();
            let spread = |f: fn(&(i32, i32)) -> i32| {
                let (lo, hi) = pixels
                    .iter()
                    .map(f)
                    .fold((i32::MAX, i32::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
                hi.saturating_sub(lo)
            };
            if spread(|p| p.0) <= 2 && spread(|p| p.1) <= 2 {
                chart
                    .draw_series(
                        line.points
                            .first()
                            .map(|&p| Circle::new(p, 4, style.filled())),
                    )
                    .map_err(plot_err)?;
            } else if line.dash == 0 {
                chart
                    .draw_series(LineSeries::new(line.points.iter().copied(), style))
                    .map_err(plot_err)?;
            } else {
                let (dash, gap) = dash_pattern(line.dash);
                chart
                    .draw_series(DashedLineSeries::new(
                        line.points.iter().copied(),
                        dash,
                        gap,
                        style,
                    ))
                    .map_err(plot_err)?;
            }
        }

        let column_width = (PLOT_WIDTH as i32 - 110) / LEGEND_COLUMNS as i32;
        for (i, line) in lines.iter().enumerate() {
            let column = (i % LEGEND_COLUMNS) as i32;
            let row = (i / LEGEND_COLUMNS) as i32;
            let x0 = 100 + column * column_width;
            let y0 = 8 + row * LEGEND_ROW as i32;
            let style = ShapeStyle::from(line.color).stroke_width(3);
            let sample = vec![(x0, y0), (x0 + 36, y0)];
            if line.dash == 0 {
                legend_area
                    .draw(&PathElement::new(sample, style))
                    .map_err(plot_err)?;
            } else {
                let (dash, gap) = dash_pattern(line.dash);
                legend_area
                    .draw(&DashedPathElement::new(sample, dash, gap, style))
                    .map_err(plot_err)?;
            }
            legend_area
                .draw(&Text::new(
                    line.label.clone(),
                    (x0 + 46, y0),
                    TextStyle::from((FONT, 14).into_font()).pos(Pos::new(HPos::Left, VPos::Center)),
                ))
                .map_err(plot_err)?;
        }
        root.present().map_err(plot_err)?;
    }
    Ok(svg)
}

fn dash_pattern(dash: usize) -> (u32, u32) {
    if dash == 1 { (10, 6) } else { (3, 4) }
}

/// The title, and below it the subtitle in grey, centred in `area`.
fn draw_header<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    subtitle: &str,
) -> anyhow::Result<()> {
    let center = |size: u32| {
        TextStyle::from((FONT, size).into_font()).pos(Pos::new(HPos::Center, VPos::Center))
    };
    let mid = PLOT_WIDTH as i32 / 2;
    area.draw(&Text::new(title.to_owned(), (mid, 20), center(22)))
        .map_err(plot_err)?;
    area.draw(&Text::new(
        subtitle.to_owned(),
        (mid, 44),
        center(12).color(&TEXT_GREY),
    ))
    .map_err(plot_err)?;
    Ok(())
}

/// A plot with nothing to draw: the title and "no data".
fn empty_svg(title: &str, subtitle: &str) -> anyhow::Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (PLOT_WIDTH, PLOT_HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        draw_header(&root, title, subtitle)?;
        let style = TextStyle::from((FONT, 28).into_font())
            .pos(Pos::new(HPos::Center, VPos::Center))
            .color(&TEXT_GREY);
        root.draw(&Text::new(
            "no data".to_owned(),
            (PLOT_WIDTH as i32 / 2, PLOT_HEIGHT as i32 / 2),
            style,
        ))
        .map_err(plot_err)?;
        root.present().map_err(plot_err)?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram_ms(values_ms: impl Iterator<Item = u64>) -> hdrhistogram::Histogram<u64> {
        let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
            .expect("valid histogram bounds");
        for ms in values_ms {
            h.record(ms * 1000).expect("value within bounds");
        }
        h
    }

    fn phase(name: &str, kind: LoopKind, rate: f64, latency: Option<Latency>) -> Phase {
        Phase {
            name: name.to_owned(),
            loop_kind: kind,
            clients: (kind == LoopKind::Closed).then_some(256),
            offered_per_sec: (kind == LoopKind::Open).then_some(rate / 2.0),
            completed: (rate * 10.0) as u64,
            errors: 0,
            secs: 10.0,
            throughput_per_sec: rate,
            latency,
            timeline: Phase::timeline_from_counts(
                &[
                    rate as u64 / 2,
                    rate as u64 / 2 + 7,
                    rate as u64 / 2 - 3,
                    rate as u64 / 2,
                ],
                &[9_000, 31_000, 0, 12_000],
                0.5,
            ),
            from_unix_ms: None,
        }
    }

    fn scenario(name: &str, system: &str, unit: &str, phases: Vec<Phase>) -> ScenarioResult {
        ScenarioResult {
            scenario: name.to_owned(),
            system: system.to_owned(),
            unit: unit.to_owned(),
            durability: format!("{system}: an acknowledged write is on disk on a majority."),
            phases,
            processes: vec![ProcessStats {
                name: format!("{name}-server-1"),
                pid: 4242,
                cpu_secs: 12.345,
                cpu_cores_avg: 1.2345,
                peak_rss_mib: 456.78,
            }],
            notes: vec![format!("{name} ran over loopback")],
        }
    }

    fn sample_run() -> Run {
        let lat = || Latency::from_histogram(&histogram_ms(1..=1000));
        let fast = Latency::from_histogram(&histogram_ms(std::iter::repeat_n(2, 50)));
        Run {
            format_version: FORMAT_VERSION,
            started_utc: "2026-11-26T10:00:00Z".to_owned(),
            git_commit: "0123456789abcdef+dirty".to_owned(),
            command_line: "sealpost-bench all --duration-secs 10".to_owned(),
            smoke: false,
            settings: Settings {
                duration_secs: 10.0,
                warmup_secs: 2.0,
                payload_bytes: 1024,
                clients: 256,
                connections: 12,
                nodes: 3,
            },
            machine: Machine {
                cores: 2,
                memory_gib: 23.4,
                cpu_model: "Test CPU @ 2.0GHz".to_owned(),
                kernel: "6.1.0".to_owned(),
            },
            results: vec![
                scenario(
                    "log",
                    "sealpost 0.1.0 (3 nodes)",
                    "events/s",
                    vec![
                        phase("max", LoopKind::Closed, 12_345.6, lat()),
                        phase("half", LoopKind::Open, 6_000.0, fast),
                    ],
                ),
                scenario(
                    "etcd",
                    "etcd 3.4.23 (3 members)",
                    "writes/s",
                    vec![phase("max", LoopKind::Closed, 4_321.0, lat())],
                ),
                scenario(
                    "replay",
                    "sealpost 0.1.0 (3 nodes)",
                    "records/s",
                    vec![phase("run", LoopKind::Single, 250_000.0, None)],
                ),
            ],
            ratios: vec![
                Ratio {
                    name: "hot-path / crypto".to_owned(),
                    value: 0.4567,
                    target: Some(0.3),
                    met: Some(true),
                    explanation: "end-to-end over the crypto-only ceiling".to_owned(),
                },
                Ratio {
                    name: "log / etcd".to_owned(),
                    value: 0.8,
                    target: Some(1.0),
                    met: Some(false),
                    explanation: "committed events per etcd write".to_owned(),
                },
            ],
            notes: vec!["run note: fsync on".to_owned()],
        }
    }

    fn assert_close(actual: f64, expected: f64, relative: f64) {
        assert!(
            (actual - expected).abs() <= expected.abs() * relative,
            "{actual} is not within {relative} of {expected}"
        );
    }

    #[test]
    fn latency_from_histogram_of_1_to_1000_ms() {
        let l = Latency::from_histogram(&histogram_ms(1..=1000)).expect("non-empty");
        assert_eq!(l.count, 1000);
        assert_close(l.p50_ms, 500.0, 0.002);
        assert_close(l.p90_ms, 900.0, 0.002);
        assert_close(l.p99_ms, 990.0, 0.002);
        assert_close(l.p999_ms, 999.0, 0.002);
        assert_close(l.max_ms, 1000.0, 0.002);
        assert_close(l.mean_ms, 500.5, 0.002);

        let first = l.curve.first().expect("curve has points");
        assert_eq!(first.percentile, 0.0);
        assert_close(first.ms, 1.0, 0.002);
        let last = l.curve.last().expect("curve has points");
        assert_eq!(last.percentile, 100.0);
        assert_eq!(last.ms, l.max_ms);
        assert!(l.curve.len() <= 200, "{} points", l.curve.len());
        // Dense towards the tail: as many points above 90% as below.
        let below_90 = l.curve.iter().filter(|c| c.percentile < 90.0).count();
        let above_90 = l.curve.iter().filter(|c| c.percentile >= 90.0).count();
        assert!(
            above_90 >= below_90,
            "{below_90} below 90%, {above_90} above"
        );
        assert!(
            l.curve
                .iter()
                .any(|c| c.percentile >= 99.8 && c.percentile < 100.0)
        );
        for pair in l.curve.windows(2) {
            assert!(pair[0].percentile < pair[1].percentile, "{pair:?}");
            assert!(pair[0].ms <= pair[1].ms, "{pair:?}");
        }
        // Each point's value is the histogram's own at that percentile (±1 bucket).
        for c in &l.curve[..l.curve.len() - 1] {
            let expected = (c.percentile * 10.0).ceil().max(1.0);
            assert_close(c.ms, expected, 0.002);
        }
    }

    #[test]
    fn latency_from_histogram_edge_cases() {
        let empty = hdrhistogram::Histogram::<u64>::new(3).expect("valid histogram");
        assert!(Latency::from_histogram(&empty).is_none());

        let one = Latency::from_histogram(&histogram_ms(std::iter::once(7))).expect("one value");
        assert_eq!(one.count, 1);
        assert_close(one.p50_ms, 7.0, 0.002);
        assert_close(one.max_ms, 7.0, 0.002);
        assert_eq!(one.curve.len(), 2, "{:?}", one.curve);

        let mut many = histogram_ms(1..=1000);
        for _ in 0..200 {
            many.add(histogram_ms(1..=1000)).expect("same bounds");
        }
        let l = Latency::from_histogram(&many).expect("non-empty");
        let tail = l.curve[l.curve.len() - 2].percentile;
        assert!(tail <= CURVE_MAX_PERCENTILE && tail > 99.99, "{tail}");
        assert!(l.curve.len() <= 200);
    }

    #[test]
    fn timeline_from_counts() {
        let t = Phase::timeline_from_counts(&[10, 20, 0], &[4_500, 12_250, 0], 0.5);
        let got: Vec<(f64, f64, Option<f64>)> =
            t.iter().map(|p| (p.t_secs, p.per_sec, p.max_ms)).collect();
        assert_eq!(
            got,
            vec![
                (0.5, 20.0, Some(4.5)),
                (1.0, 40.0, Some(12.25)),
                (1.5, 0.0, None)
            ]
        );
        // Maxima missing (a run recorded before they were measured) are none.
        assert!(
            Phase::timeline_from_counts(&[1, 2], &[], 1.0)
                .iter()
                .all(|p| p.max_ms.is_none())
        );
        assert!(Phase::timeline_from_counts(&[1, 2], &[1, 2], 0.0).is_empty());
        assert!(Phase::timeline_from_counts(&[1, 2], &[1, 2], f64::NAN).is_empty());
        assert!(Phase::timeline_from_counts(&[], &[], 1.0).is_empty());
    }

    #[test]
    fn the_slowest_interval_is_the_one_with_the_longest_latency() {
        let mut p = phase("half", LoopKind::Open, 1000.0, None);
        assert_eq!(p.slowest_interval(), Some((1.0, 31.0)));
        p.timeline[0].max_ms = Some(f64::NAN);
        p.timeline[1].max_ms = None;
        assert_eq!(p.slowest_interval(), Some((2.0, 12.0)));
        p.timeline.clear();
        assert_eq!(p.slowest_interval(), None);
    }

    #[test]
    fn a_timeline_without_maxima_still_reads() -> anyhow::Result<()> {
        let old: TimelinePoint = serde_json::from_str(r#"{"t_secs": 0.25, "per_sec": 8.0}"#)?;
        assert_eq!(old.max_ms, None);
        Ok(())
    }

    fn assert_same_json(a: &serde_json::Value, b: &serde_json::Value, at: &str) {
        use serde_json::Value;
        match (a, b) {
            (Value::Number(x), Value::Number(y)) => {
                let (x, y) = (x.as_f64().expect("finite"), y.as_f64().expect("finite"));
                assert!((x - y).abs() <= x.abs() * 1e-12, "{at}: {x} != {y}");
            }
            (Value::Array(x), Value::Array(y)) => {
                assert_eq!(x.len(), y.len(), "{at}: lengths differ");
                for (i, (x, y)) in x.iter().zip(y).enumerate() {
                    assert_same_json(x, y, &format!("{at}[{i}]"));
                }
            }
            (Value::Object(x), Value::Object(y)) => {
                assert_eq!(
                    x.keys().collect::<Vec<_>>(),
                    y.keys().collect::<Vec<_>>(),
                    "{at}: fields differ"
                );
                for (key, x) in x {
                    assert_same_json(x, &y[key], &format!("{at}.{key}"));
                }
            }
            (x, y) => assert_eq!(x, y, "{at}"),
        }
    }

    #[test]
    fn json_round_trip() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("run.json");
        let run = sample_run();
        write_json(&run, &path)?;
        let text = std::fs::read_to_string(&path)?;
        assert!(
            text.contains("\n  \"format_version\": 1,"),
            "not pretty: {text:.200}"
        );
        assert!(text.contains("\"loop_kind\": \"closed\""));
        let back = read_json(&path)?;
        // serde_json's default float parser may be off by one unit in the last place.
        assert_same_json(
            &serde_json::to_value(&run)?,
            &serde_json::to_value(&back)?,
            "$",
        );
        assert_eq!(back.results[0].phases[0].loop_kind, LoopKind::Closed);
        assert_eq!(back.results[2].phases[0].loop_kind, LoopKind::Single);

        // An undefined figure is written as null and read back as NaN.
        let mut odd = run;
        odd.results[0].phases[0].throughput_per_sec = f64::NAN;
        odd.ratios[0].value = f64::INFINITY;
        write_json(&odd, &path)?;
        let back = read_json(&path)?;
        assert!(back.results[0].phases[0].throughput_per_sec.is_nan());
        assert!(back.ratios[0].value.is_nan());

        assert!(read_json(&dir.path().join("missing.json")).is_err());
        std::fs::write(&path, "{\"format_version\": 1}")?;
        assert!(read_json(&path).is_err());
        // A record of another format version is refused by name.
        let mut future = sample_run();
        future.format_version = FORMAT_VERSION + 1;
        write_json(&future, &path)?;
        let e = read_json(&path)
            .expect_err("another format version")
            .to_string();
        assert!(e.contains("format version 2"), "{e}");
        Ok(())
    }

    #[test]
    fn markdown_summary() {
        let run = sample_run();
        let md = markdown(&run);
        for r in &run.results {
            assert!(
                md.contains(&format!("| {} | {} |", r.scenario, r.system)),
                "{md}"
            );
            assert!(md.contains(&r.durability), "{md}");
            assert!(
                md.contains(&format!("{}: {}", r.scenario, r.notes[0])),
                "{md}"
            );
        }
        for r in &run.ratios {
            assert!(md.contains(&r.name) && md.contains(&r.explanation), "{md}");
        }
        assert!(md.contains("## Benchmark run 2026-11-26"));
        assert!(md.contains("`0123456789abcdef+dirty`"));
        assert!(md.contains("2 cores, 23.4 GiB memory, Test CPU @ 2.0GHz, kernel 6.1.0"));
        assert!(md.contains("10 s measured after 2 s warm-up, payload 1,024 bytes"));
        assert!(md.contains("- smoke run: no"));
        assert!(!md.contains("Smoke run"));
        assert!(md.contains("| p50 | p90 | p99 | p99.9 | max (ms) | errors |"));
        // log / max: 12,346 events/s, p50 500.xx ms with 2 decimals.
        assert!(
            md.contains("| max | closed | 256 clients | 12,346 events/s | 500."),
            "{md}"
        );
        assert!(
            md.contains("| half | open | 3,000/s | 6,000 events/s | 2.00 |"),
            "{md}"
        );
        assert!(
            md.contains("| run | single | – | 250,000 records/s | – | – |"),
            "{md}"
        );
        assert!(
            md.contains("| log | log-server-1 | 12.3 | 1.23 | 456.8 |"),
            "{md}"
        );
        assert!(
            md.contains("**hot-path / crypto**: 0.46 (target 0.30: ✓ met)"),
            "{md}"
        );
        assert!(
            md.contains("**log / etcd**: 0.80 (target 1.00: ✗ missed)"),
            "{md}"
        );
        // One durability line per system, naming its scenarios.
        assert!(
            md.contains("- **sealpost 0.1.0 (3 nodes)** (log, replay):"),
            "{md}"
        );
        assert!(md.contains("- run note: fsync on"));

        let mut smoke = run;
        smoke.smoke = true;
        smoke.results.clear();
        smoke.ratios.clear();
        let md = markdown(&smoke);
        assert!(md.contains("**Smoke run**") && md.contains("- smoke run: yes"));
        assert!(md.contains("_No results._"));
    }

    #[test]
    fn number_formats() {
        assert_eq!(group_int(0), "0");
        assert_eq!(group_int(999), "999");
        assert_eq!(group_int(1_000), "1,000");
        assert_eq!(group_int(1_234_567), "1,234,567");
        assert_eq!(fmt_rate(1_234_567.4), "1,234,567");
        assert_eq!(fmt_rate(56.78), "56.8");
        assert_eq!(fmt_rate(f64::NAN), "n/a");
        assert_eq!(fmt_rate(-1234.0), "-1,234");
        assert_eq!(fmt_ms(1234.567), "1,234.57");
        assert_eq!(fmt_ms(0.5), "0.50");
        assert_eq!(fmt_ms(0.0042), "0.0042");
        assert_eq!(fmt_ms(0.0), "0.00");
        assert_eq!(fmt_plain(10.0, 2), "10");
        assert_eq!(fmt_plain(2.5, 2), "2.5");
        assert_eq!(fmt_errors(3, 997), "3 (0.3%)");
        assert_eq!(percentile_label(1), "90%");
        assert_eq!(percentile_label(2), "99%");
        assert_eq!(percentile_label(5), "99.999%");
    }

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).expect("plot written")
    }

    /// The contents of the SVG's text elements, unescaped enough for these tests.
    fn svg_texts(svg: &str) -> Vec<String> {
        svg.split("<text")
            .skip(1)
            .filter_map(|part| {
                let (_, rest) = part.split_once('>')?;
                let (text, _) = rest.split_once("</text>")?;
                Some(text.trim().replace("&amp;", "&"))
            })
            .collect()
    }

    fn assert_svg(svg: &str) {
        let start = svg.trim_start();
        assert!(
            start.starts_with("<svg") || start.starts_with("<?xml"),
            "{svg:.100}"
        );
        assert!(svg.trim_end().ends_with("</svg>"), "unterminated SVG");
        assert!(
            !svg.contains("NaN") && !svg.contains("inf"),
            "non-finite coordinates"
        );
    }

    #[test]
    fn write_all_writes_every_file() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let out = dir.path().join("nested/results");
        let run = sample_run();
        let paths = write_all(&run, &out)?;
        let names: Vec<String> = paths
            .iter()
            .map(|p| p.file_name().expect("file").to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            ["run.json", "summary.md", "latency.svg", "throughput.svg"]
        );
        assert_eq!(read(&paths[1]), markdown(&run));
        read_json(&paths[0])?;

        let latency = read(&paths[2]);
        assert_svg(&latency);
        let texts = svg_texts(&latency);
        for label in [
            "log / max",
            "log / half",
            "etcd / max",
            "50%",
            "90%",
            "99%",
            "99.9%",
            "percentile",
            "latency (ms, log scale)",
            "Latency by percentile",
        ] {
            assert!(texts.iter().any(|t| t == label), "no {label} in {texts:?}");
        }
        assert!(!latency.contains("replay / run"), "replay has no latency");
        assert!(!latency.contains("no data"));
        assert!(latency.matches("<polyline").count() >= 3, "lines missing");

        let throughput = read(&paths[3]);
        assert_svg(&throughput);
        for label in [
            "log / max (events/s)",
            "log / half (events/s)",
            "etcd / max (writes/s)",
            "replay / run (records/s)",
            "completions/s (log scale)",
            "seconds since measurement start",
            "Throughput over time",
        ] {
            let texts = svg_texts(&throughput);
            assert!(texts.iter().any(|t| t == label), "no {label} in {texts:?}");
        }
        assert!(!throughput.contains("no data"));
        Ok(())
    }

    #[test]
    fn plots_without_usable_data_say_so() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let mut run = sample_run();
        run.results.clear();
        let paths = write_all(&run, dir.path())?;
        for path in &paths[2..] {
            let svg = read(path);
            assert_svg(&svg);
            assert!(svg.contains("no data"), "{svg}");
        }

        // Only NaN and infinities: nothing to draw.
        let mut nan = sample_run();
        for r in &mut nan.results {
            for p in &mut r.phases {
                for t in &mut p.timeline {
                    t.per_sec = f64::NAN;
                }
                if let Some(l) = &mut p.latency {
                    for c in &mut l.curve {
                        c.ms = f64::INFINITY;
                    }
                    l.p50_ms = f64::NAN;
                }
            }
        }
        let paths = write_all(&nan, dir.path())?;
        for path in &paths[2..] {
            let svg = read(path);
            assert_svg(&svg);
            assert!(svg.contains("no data"), "{svg}");
        }
        assert!(markdown(&nan).contains("n/a"));
        Ok(())
    }

    #[test]
    fn plots_survive_odd_data() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let mut run = sample_run();
        // A single point, all zeros, a mix with NaN and infinity, an empty curve.
        let log = &mut run.results[0];
        log.phases[0].timeline = vec![TimelinePoint {
            t_secs: 1.0,
            per_sec: 5.0,
            max_ms: Some(f64::NAN),
        }];
        log.phases[1].timeline = Phase::timeline_from_counts(&[0, 0, 0], &[], 1.0);
        if let Some(l) = &mut log.phases[1].latency {
            l.curve = vec![
                CurvePoint {
                    percentile: 0.0,
                    ms: 0.0,
                },
                CurvePoint {
                    percentile: 100.0,
                    ms: 0.0,
                },
            ];
        }
        let etcd = &mut run.results[1].phases[0];
        etcd.timeline[1].per_sec = f64::NAN;
        etcd.timeline[2].t_secs = f64::INFINITY;
        if let Some(l) = &mut etcd.latency {
            l.curve.clear();
            l.p999_ms = f64::NAN;
        }
        let paths = write_all(&run, dir.path())?;
        for path in &paths[2..] {
            let svg = read(path);
            assert_svg(&svg);
            assert!(!svg.contains("no data"));
        }
        let throughput = read(&paths[3]);
        assert_eq!(
            throughput.matches("<circle").count(),
            1,
            "single point not marked"
        );
        assert!(throughput.contains("log / half (events/s)"));
        let latency = read(&paths[2]);
        assert!(latency.contains("etcd / max"), "fallback curve not drawn");
        // log / half: a flat line at 0 ms (the bottom of the log axis), not a dot.
        assert!(latency.contains("log / half"));
        assert_eq!(latency.matches("<circle").count(), 0);

        // One value: the curve's two points (0% and the maximum) fall on one spot.
        let mut one = sample_run();
        one.results.truncate(1);
        one.results[0].phases.truncate(1);
        one.results[0].phases[0].latency =
            Latency::from_histogram(&histogram_ms(std::iter::once(30)));
        let svg = latency_svg(&one)?;
        assert_svg(&svg);
        assert_eq!(svg.matches("<circle").count(), 1, "{svg}");

        // Every value zero: a linear axis from 0, no panic.
        let mut zeros = sample_run();
        for r in &mut zeros.results {
            for p in &mut r.phases {
                p.timeline = Phase::timeline_from_counts(&[0], &[0], 1.0);
                p.latency = None;
            }
        }
        let svg = throughput_svg(&zeros)?;
        assert_svg(&svg);
        assert!(svg.contains("replay / run (records/s)"));
        Ok(())
    }

    #[test]
    fn axes() {
        let log = value_axis([0.01, 0.5, 1000.0].into_iter());
        assert!(log.log);
        assert_eq!(log.range, -2.0..3.0);
        assert_eq!(log.label(3.0), "1,000");
        assert_eq!(log.label(-2.0), "0.01");
        assert_eq!(log.place(0.0), -2.0);
        let labels: Vec<&str> = log.ticks.iter().map(|t| t.1.as_str()).collect();
        assert_eq!(labels, ["0.01", "0.1", "1", "10", "100", "1,000"]);

        // Within 3 decades: 1-2-5 steps, the range ends on the steps around the values.
        let tight = value_axis([3.0, 150.0, 1800.0].into_iter());
        assert!(tight.log);
        assert_close(tight.range.start, 2f64.log10(), 1e-12);
        assert_close(tight.range.end, 2000f64.log10(), 1e-12);
        let labels: Vec<&str> = tight.ticks.iter().map(|t| t.1.as_str()).collect();
        assert_eq!(
            labels,
            [
                "2", "5", "10", "20", "50", "100", "200", "500", "1,000", "2,000"
            ]
        );
        assert_eq!(tight.label(tight.ticks[0].0), "2");

        let lin = value_axis([0.0, 40.0, 95.0].into_iter());
        assert!(!lin.log);
        assert_eq!(lin.range.start, 0.0);
        assert!(lin.range.end >= 95.0);
        assert_eq!(lin.ticks[1].1, "20");

        for extreme in [[1e-300, 1e300], [0.0, f64::MAX], [f64::MIN_POSITIVE, 1.0]] {
            let axis = value_axis(extreme.into_iter());
            assert!(
                axis.range.start.is_finite() && axis.range.end.is_finite(),
                "{extreme:?}"
            );
            assert!(axis.ticks.len() <= 102, "{extreme:?}");
        }

        let empty = value_axis(std::iter::empty());
        assert_eq!(empty.range.start, 0.0);
        assert!(empty.range.end >= 1.0);
        assert_eq!(percentile_x(100.0), None);
        assert_eq!(percentile_x(f64::NAN), None);
        assert_close(percentile_x(99.9).expect("finite"), 3.0, 1e-9);
    }
}
