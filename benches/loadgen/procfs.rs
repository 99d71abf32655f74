//! Reads process figures from /proc (Linux).

use std::fs;

/// utime + stime of `pid` (all its threads) in microseconds.
pub fn cpu_micros(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces), from field 3 on.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) * 1_000_000 / clock_ticks())
}

/// Machine-wide (busy, total) CPU time in microseconds from /proc/stat.
pub fn host_cpu_micros() -> Option<(u64, u64)> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let t: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    let total: u64 = t.iter().sum();
    let idle = t.get(3)? + t.get(4)?;
    let us = |ticks: u64| ticks * 1_000_000 / clock_ticks();
    Some((us(total - idle), us(total)))
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|&t| t > 0).unwrap_or(100)
}

/// Resident memory of several processes (the members), summed; None if
/// any cannot be read.
pub fn rss_sum(pids: &[u32]) -> Option<u64> {
    crate::bench::sum(pids.iter().map(|&p| rss_kib(p)))
}

/// `VmRSS` of `pid` in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The process listening on TCP `port`, if it can be seen.
pub fn listener_pid(port: u16) -> Option<u32> {
    let inode = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| fs::read_to_string(table).ok())
        .find_map(|text| text.lines().skip(1).find_map(|l| listening_inode(l, port)))?;
    let target = format!("socket:[{inode}]");
    let holds_socket = |pid_dir: &std::path::Path| {
        fs::read_dir(pid_dir.join("fd")).is_ok_and(|fds| {
            fds.flatten()
                .any(|fd| fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == target.as_str()))
        })
    };
    fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter(|e| holds_socket(&e.path()))
        .find_map(|e| e.file_name().to_str()?.parse().ok())
}

/// The socket inode of a /proc/net/tcp line that listens on `port`.
fn listening_inode(line: &str, port: u16) -> Option<String> {
    let f: Vec<&str> = line.split_whitespace().collect();
    let local_port = u16::from_str_radix(f.get(1)?.rsplit(':').next()?, 16).ok()?;
    let listening = *f.get(3)? == "0A";
    (listening && local_port == port).then(|| f.get(9).map(|s| s.to_string()))?
}

/// Restricts the calling thread (and the threads and processes it starts
/// from then on) to `cpus`. Async-signal-safe: also usable between fork
/// and exec.
pub fn pin_to(cpus: &[usize]) -> std::io::Result<()> {
    // SAFETY: `set` is a plain bit set filled here; 0 names the caller.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus {
            libc::CPU_SET(c, &mut set);
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
