//! The standard `process_*` metrics (as the Prometheus client libraries of
//! other languages export them), read from `/proc/self` on each scrape.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Reads `/proc/self` when scraped.
#[derive(Debug)]
pub struct ProcessCollector {
    /// Clock ticks per second (for `/proc` CPU times).
    ticks: f64,
    page_size: f64,
    boot_time: f64,
}

impl ProcessCollector {
    /// A collector for this process.
    pub fn new() -> ProcessCollector {
        // SAFETY: sysconf only reads a system constant.
        let (ticks, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        let boot_time = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("btime "))
                    .and_then(|v| v.trim().parse::<f64>().ok())
            })
            .unwrap_or(0.0);
        ProcessCollector {
            ticks: if ticks > 0 { ticks as f64 } else { 100.0 },
            page_size: if page > 0 { page as f64 } else { 4096.0 },
            boot_time,
        }
    }
}

/// What `/proc/self/stat` says (fields after the command name).
struct Stat {
    utime: f64,
    stime: f64,
    start_ticks: f64,
    vsize: f64,
    rss_pages: f64,
    threads: f64,
}

fn stat() -> Option<Stat> {
    let s = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name may hold spaces: the fields start after its ')'.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok());
    // Field numbers of proc(5) minus 3 (pid, comm and state come first).
    Some(Stat {
        utime: num(11)?,
        stime: num(12)?,
        threads: num(17)?,
        start_ticks: num(19)?,
        vsize: num(20)?,
        rss_pages: num(21)?,
    })
}

fn open_fds() -> Option<f64> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count() as f64)
}

fn max_fds() -> Option<f64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, v: f64) -> std::fmt::Result {
    let g = ConstGauge::new(v);
    g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some(st) = stat() {
            let cpu = ConstCounter::new((st.utime + st.stime) / self.ticks);
            cpu.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds.",
                None,
                cpu.metric_type(),
            )?)?;
            gauge(
                &mut encoder,
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                st.rss_pages * self.page_size,
            )?;
            gauge(
                &mut encoder,
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                st.vsize,
            )?;
            gauge(
                &mut encoder,
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                self.boot_time + st.start_ticks / self.ticks,
            )?;
            gauge(
                &mut encoder,
                "process_threads",
                "Number of OS threads in the process.",
                st.threads,
            )?;
        }
        if let Some(n) = open_fds() {
            gauge(
                &mut encoder,
                "process_open_fds",
                "Number of open file descriptors.",
                n,
            )?;
        }
        if let Some(n) = max_fds() {
            gauge(
                &mut encoder,
                "process_max_fds",
                "Maximum number of open file descriptors.",
                n,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let st = stat().expect("/proc/self/stat parses");
        assert!(st.rss_pages > 0.0);
        assert!(st.vsize > 0.0);
        assert!(st.threads >= 1.0);
        assert!(open_fds().unwrap() >= 3.0);
        assert!(max_fds().unwrap() >= 64.0);
    }
}
