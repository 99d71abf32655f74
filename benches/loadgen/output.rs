//! Results as files: `--csv` (one row per run), `--timeline-csv` (one row
//! per interval of each run) and `--plot` (an SVG of throughput and p99
//! latency over time, every run of every round, one colour per server).

use std::fmt::Write as _;
use std::path::Path;

use crate::report::{Report, RunResult};

/// Writes a report file.
pub type Writer = fn(&Path, &[Report]) -> std::io::Result<()>;

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|x| x.to_string()).unwrap_or_default()
}

/// Every run of every round, with its round number (1-based).
fn runs(reports: &[Report]) -> impl Iterator<Item = (usize, &RunResult)> {
    reports
        .iter()
        .enumerate()
        .flat_map(|(i, r)| r.results.iter().map(move |x| (i + 1, x)))
}

/// One row per run.
/// With `--auth-storm`, three more columns: Authenticate calls answered,
/// failed, and per second; with side loads, the watchers' figures and the
/// server's RSS before and after the side loads were set up.
pub fn write_csv(path: &Path, reports: &[Report]) -> std::io::Result<()> {
    if runs(reports).any(|(_, r)| r.k8s.is_some()) {
        return write_k8s_csv(path, reports);
    }
    if runs(reports).any(|(_, r)| r.scale.is_some()) {
        return write_scale_csv(path, reports);
    }
    let storm = runs(reports).any(|(_, r)| r.auth_storm.is_some());
    let side = runs(reports).any(|(_, r)| r.side_rss_kib.is_some());
    let mut out = String::from(
        "round,server,workload,ops,errors,elapsed_s,ops_per_s,p50_us,p99_us,p999_us,max_us,\
         server_cpu_us_per_op,client_cpu_us_per_op,server_rss_kib,ops_per_fsync",
    );
    if storm {
        out += ",auth_ok,auth_errors,auth_per_s";
    }
    if side {
        out += ",idle_conns,watchers,watchers_complete,watch_events,watch_lost,watch_repeated,\
                watch_drain_ms,side_rss_before_kib,side_rss_after_kib";
    }
    out.push('\n');
    for (round, r) in runs(reports) {
        let l = &r.latency_us;
        let _ = write!(
            out,
            "{round},{},{},{},{},{:.3},{:.1},{},{},{},{},{},{},{},{}",
            r.server,
            r.workload,
            r.ops,
            r.errors,
            r.elapsed_s,
            r.ops_per_s,
            l.p50,
            l.p99,
            l.p999,
            l.max,
            opt(r.server_cpu_us_per_op.map(|v| format!("{v:.1}"))),
            opt(r.client_cpu_us_per_op.map(|v| format!("{v:.1}"))),
            opt(r.server_rss_kib),
            opt(r.ops_per_fsync.map(|v| format!("{v:.1}"))),
        );
        if storm {
            let a = r.auth_storm.as_ref();
            let _ = write!(
                out,
                ",{},{},{}",
                opt(a.map(|a| a.ok)),
                opt(a.map(|a| a.errors)),
                opt(a.map(|a| format!("{:.1}", a.per_s)))
            );
        }
        if side {
            let w = r.watch.as_ref();
            let _ = write!(
                out,
                ",{},{},{},{},{},{},{},{},{}",
                r.idle_conns,
                opt(w.map(|w| w.watchers)),
                opt(w.map(|w| w.complete)),
                opt(w.map(|w| w.events)),
                opt(w.map(|w| w.lost)),
                opt(w.map(|w| w.repeated)),
                opt(w.map(|w| w.drain_ms)),
                opt(r.side_rss_kib.map(|x| x.0)),
                opt(r.side_rss_kib.map(|x| x.1)),
            );
        }
        out.push('\n');
    }
    std::fs::write(path, out)
}

/// --workload k8s: one row per kind of each run, then its watch lag
/// (`ops` = events checked against a write) and all kinds together.
fn write_k8s_csv(path: &Path, reports: &[Report]) -> std::io::Result<()> {
    let mut out = String::from(
        "round,server,members,kind,ops,errors,ops_per_s,p50_us,p99_us,max_us,\
         server_cpu_us_per_op,server_rss_kib,violations,pauses,longest_pause_ms\n",
    );
    for (round, r) in runs(reports) {
        let Some(k) = &r.k8s else { continue };
        let members = reports[round - 1].config.members;
        let tail = format!(
            "{},{},{},{},{}",
            opt(r.server_cpu_us_per_op.map(|v| format!("{v:.1}"))),
            opt(r.server_rss_kib),
            k.violations,
            k.pauses.len(),
            k.pauses.iter().map(|p| p.ms).max().unwrap_or(0)
        );
        for x in &k.kinds {
            let _ = writeln!(
                out,
                "{round},{},{members},{},{},{},{:.1},{},{},{},{tail}",
                r.server, x.kind, x.ops, x.errors, x.ops_per_s, x.p50_us, x.p99_us, x.max_us
            );
        }
        let _ = writeln!(
            out,
            "{round},{},{members},watch-lag,{},0,{:.1},{},{},{},{tail}",
            r.server,
            k.watch_verified,
            k.watch_verified as f64 / r.elapsed_s.max(1e-9),
            k.watch_lag_p50_us,
            k.watch_lag_p99_us,
            k.watch_lag_max_us
        );
        let l = &r.latency_us;
        let _ = writeln!(
            out,
            "{round},{},{members},all,{},{},{:.1},{},{},{},{tail}",
            r.server, r.ops, r.errors, r.ops_per_s, l.p50, l.p99, l.max
        );
    }
    std::fs::write(path, out)
}

/// --workload scale: one row per step of each run (a step's figures that
/// do not apply to it are empty). Rounds alternate the order: in odd rounds
/// etcd ran first, in even ones last.
fn write_scale_csv(path: &Path, reports: &[Report]) -> std::io::Result<()> {
    let mut out = String::from(
        "round,server,members,keys,step,ms,keys_returned,bytes,rss_before_kib,rss_peak_kib,\
         rss_after_kib,rss_5s_kib,before_puts,before_p50_us,before_p99_us,before_max_us,\
         during_puts,during_p50_us,during_p99_us,during_max_us,error\n",
    );
    for (round, r) in runs(reports) {
        let Some(x) = &r.scale else { continue };
        for s in &x.steps {
            let w = |w: Option<crate::scale::Window>| match w {
                Some(w) => format!("{},{},{},{}", w.puts, w.p50_us, w.p99_us, w.max_us),
                None => ",,,".to_owned(),
            };
            let _ = writeln!(
                out,
                "{round},{},{},{},{},{:.1},{},{},{},{},{},{},{},{},\"{}\"",
                r.server,
                x.members,
                x.keys,
                s.step,
                s.ms,
                opt(s.keys),
                opt(s.bytes),
                opt(s.rss_before_kib),
                opt(s.rss_peak_kib),
                opt(s.rss_after_kib),
                opt(s.rss_5s_kib),
                w(s.before),
                w(s.during),
                s.error.as_deref().unwrap_or_default().replace('"', "\"\"")
            );
        }
    }
    std::fs::write(path, out)
}

/// One row per interval of each run (--workload scale: per RSS sample).
pub fn write_timeline_csv(path: &Path, reports: &[Report]) -> std::io::Result<()> {
    if runs(reports).any(|(_, r)| r.scale.is_some()) {
        let mut out = String::from("round,server,step,t_s,rss_kib\n");
        for (round, r) in runs(reports) {
            for x in r.scale.iter().flat_map(|x| &x.rss) {
                let _ = writeln!(
                    out,
                    "{round},{},{},{:.3},{}",
                    r.server, x.step, x.t_s, x.rss_kib
                );
            }
        }
        return std::fs::write(path, out);
    }
    let mut out = String::from("round,server,t_s,ops_per_s,p50_us,p99_us,max_us\n");
    for (round, r) in runs(reports) {
        for p in &r.timeline {
            let _ = writeln!(
                out,
                "{round},{},{:.3},{:.1},{},{},{}",
                r.server, p.t_s, p.ops_per_s, p.p50_us, p.p99_us, p.max_us
            );
        }
    }
    std::fs::write(path, out)
}

const COLOURS: [&str; 4] = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd"];

/// A "nice" axis maximum at or above `v`.
fn nice(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if m * p >= v {
            return m * p;
        }
    }
    10.0 * p
}

/// Throughput (top) and p99 latency (bottom) over time.
pub fn write_svg(path: &Path, reports: &[Report], title: &str) -> std::io::Result<()> {
    let all: Vec<(usize, &RunResult)> = runs(reports).collect();
    let mut servers: Vec<&str> = Vec::new();
    for (_, r) in &all {
        if !servers.contains(&r.server.as_str()) {
            servers.push(&r.server);
        }
    }
    let colour =
        |s: &str| COLOURS[servers.iter().position(|x| *x == s).unwrap_or(0) % COLOURS.len()];
    let t_max = nice(
        all.iter()
            .flat_map(|(_, r)| r.timeline.iter().map(|p| p.t_s))
            .fold(0.0, f64::max),
    );
    let (w, left, right, panel, gap, top) = (900.0, 70.0, 20.0, 260.0, 60.0, 50.0);
    let plot_w = w - left - right;
    let h = top + 2.0 * panel + gap + 50.0;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{left}" y="22" font-size="15" font-weight="bold">{}</text>"#,
        escape(title)
    );
    // Legend.
    for (i, s) in servers.iter().enumerate() {
        let x = left + 10.0 + i as f64 * 150.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{x}" y1="38" x2="{}" y2="38" stroke="{}" stroke-width="3"/><text x="{}" y="42">{}</text>"#,
            x + 20.0,
            colour(s),
            x + 26.0,
            escape(s)
        );
    }
    type Pick = fn(&crate::report::TimePoint) -> f64;
    let panels: [(&str, Pick, f64); 2] = [
        ("operations/s", |p| p.ops_per_s, top),
        (
            "p99 latency (ms)",
            |p| p.p99_us as f64 / 1000.0,
            top + panel + gap,
        ),
    ];
    for (label, pick, y0) in panels {
        let v_max = nice(
            all.iter()
                .flat_map(|(_, r)| r.timeline.iter().map(pick))
                .fold(0.0, f64::max),
        );
        let x = |t: f64| left + t / t_max * plot_w;
        let y = |v: f64| y0 + panel - v / v_max * panel;
        let _ = writeln!(
            svg,
            r##"<rect x="{left}" y="{y0}" width="{plot_w}" height="{panel}" fill="none" stroke="#999"/>"##
        );
        for k in 0..=5 {
            let v = v_max * k as f64 / 5.0;
            let _ = writeln!(
                svg,
                r##"<line x1="{left}" y1="{yy}" x2="{}" y2="{yy}" stroke="#eee"/><text x="{}" y="{}" text-anchor="end">{}</text>"##,
                left + plot_w,
                left - 6.0,
                y(v) + 4.0,
                tick(v),
                yy = y(v)
            );
            let t = t_max * k as f64 / 5.0;
            let _ = writeln!(
                svg,
                r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
                x(t),
                y0 + panel + 16.0,
                tick(t)
            );
        }
        let _ = writeln!(
            svg,
            r#"<text x="14" y="{}" transform="rotate(-90 14 {})" text-anchor="middle">{label}</text>"#,
            y0 + panel / 2.0,
            y0 + panel / 2.0
        );
        for (_, r) in &all {
            let points: Vec<String> = r
                .timeline
                .iter()
                .map(|p| format!("{:.1},{:.1}", x(p.t_s), y(pick(p))))
                .collect();
            let _ = writeln!(
                svg,
                r#"<polyline fill="none" stroke="{}" stroke-opacity="0.7" stroke-width="1.5" points="{}"/>"#,
                colour(&r.server),
                points.join(" ")
            );
        }
    }
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">seconds since the measured phase started</text>"#,
        left + plot_w / 2.0,
        h - 12.0
    );
    svg.push_str("</svg>\n");
    std::fs::write(path, svg)
}

fn tick(v: f64) -> String {
    if v >= 1000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v >= 10.0 || v == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
