//! lossyfs: a FUSE filesystem for power-loss tests. It keeps its whole
//! contents in memory, twice: as the processes using it see them and as
//! their fsyncs made them durable (see `disk.rs` for the rules), and on
//! command it cuts the power: everything not made durable is gone.
//!
//! ```text
//! lossyfs MOUNTPOINT
//! ```
//! mounts an empty filesystem at MOUNTPOINT, prints `ready`, then reads
//! commands on stdin, one a line, and answers each with one line on stdout:
//! - `freeze`: the instant of the power cut. Every request from now on fails
//!   with EIO, so nothing more becomes durable. Answers `frozen`.
//! - `cut`: freezes (if not yet), unmounts (lazily: the kernel drops the
//!   connection once no process uses it; kill them first), throws away
//!   everything unsynced and mounts the durable state again at the same
//!   place. Answers `cut files=F dirs=D dropped=N` (files and directories
//!   that went back to an older state, nodes that vanished).
//! - `cut torn SEED`: a cut where each 4 KiB block written since its
//!   file's last sync survives or not by a (seeded) coin toss, and each such
//!   file keeps its synced or its current length: dirty pages written back
//!   in any order before the power went. Directories as for `cut`.
//! - `stats`: `stats writes=W file_syncs=F dir_syncs=D cuts=C`.
//! - `fsync-delay MICROSECONDS`: every file fsync waits that long before
//!   it makes anything durable (and fails if the power is cut meanwhile),
//!   as a real disk's flush takes time: written data then stays unsynced
//!   long enough for a cut to find a whole batch of it. Answers
//!   `fsync-delay N`.
//! - `full BYTES`: the disk holds BYTES of contents at most; a write,
//!   truncate or fallocate that would grow past that fails with ENOSPC, and
//!   statfs reports that size. `full +BYTES`: room for BYTES more than now.
//!   `full off`: no limit. Answers `full capacity=C used=U` (or
//!   `full off used=U`).
//! - `eio fsync|write [once]`: every fsync (of files and directories) or
//!   every write fails with EIO, or only the next one; nothing a failed
//!   fsync covered becomes durable. `eio off` disarms both. Answers
//!   `eio fsync=F write=W` (each `off`, `once` or `always`).
//!
//! End of input unmounts and exits. Mounting needs root (the mount
//! syscall) or fusermount3 (Debian's `fuse3`).
//!
//! This is a test tool, built beside the `metastore` binary only so that
//! tests find it; the daemon neither links nor starts it.

mod disk;
mod fuse;

use std::ffi::CString;
use std::io::{self, BufRead, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fuser::{BackgroundSession, Config, MountOption};
use parking_lot::Mutex;

use crate::fuse::{LossyFs, Machine};

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(mountpoint), None) = (args.next(), args.next()) else {
        eprintln!("usage: lossyfs MOUNTPOINT");
        return ExitCode::from(2);
    };
    let mountpoint = PathBuf::from(mountpoint);
    match run(&mountpoint) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lossyfs: {}: {e}", mountpoint.display());
            ExitCode::FAILURE
        }
    }
}

fn run(mountpoint: &Path) -> io::Result<()> {
    let machine = Arc::new(Mutex::new(Machine::default()));
    let mut session = Some(mount(&machine, mountpoint)?);
    let mut out = io::stdout().lock();
    writeln!(out, "ready")?;
    out.flush()?;
    for line in io::stdin().lock().lines() {
        let line = line?;
        let words: Vec<&str> = line.split_whitespace().collect();
        let answer = match words.first().copied().unwrap_or("") {
            "freeze" => {
                machine.lock().frozen = true;
                "frozen".to_owned()
            }
            "cut" => {
                let torn = match words.get(1..) {
                    Some(["torn", seed]) => match seed.parse::<u64>() {
                        Ok(seed) => Some(seed),
                        Err(_) => {
                            writeln!(out, "error bad seed {seed:?}")?;
                            out.flush()?;
                            continue;
                        }
                    },
                    _ => None,
                };
                machine.lock().frozen = true;
                if let Some(s) = session.take() {
                    unmount(s, mountpoint);
                }
                let report = {
                    let mut m = machine.lock();
                    let report = m.disk.cut(torn);
                    m.epoch += 1;
                    m.frozen = false;
                    report
                };
                session = Some(mount(&machine, mountpoint)?);
                format!(
                    "cut files={} dirs={} dropped={}",
                    report.files_reverted, report.dirs_reverted, report.nodes_dropped
                )
            }
            "fsync-delay" => match words.get(1).and_then(|w| w.parse::<u64>().ok()) {
                Some(us) => {
                    machine.lock().fsync_delay = std::time::Duration::from_micros(us);
                    format!("fsync-delay {us}")
                }
                None => "error usage: fsync-delay MICROSECONDS".to_owned(),
            },
            "stats" => {
                let s = machine.lock().disk.stats;
                format!(
                    "stats writes={} file_syncs={} dir_syncs={} cuts={}",
                    s.writes, s.file_syncs, s.dir_syncs, s.cuts
                )
            }
            "full" => match full(&mut machine.lock().disk, &words[1..]) {
                Ok(answer) => answer,
                Err(e) => format!("error {e}"),
            },
            "eio" => match eio(&mut machine.lock().disk, &words[1..]) {
                Ok(answer) => answer,
                Err(e) => format!("error {e}"),
            },
            "" => continue,
            _ => format!("error unknown command {line:?}"),
        };
        writeln!(out, "{answer}")?;
        out.flush()?;
    }
    if let Some(s) = session.take() {
        unmount(s, mountpoint);
    }
    Ok(())
}

/// The `full` command.
fn full(disk: &mut disk::Disk, args: &[&str]) -> Result<String, String> {
    let used = disk.used();
    disk.faults.capacity = match args {
        ["off"] => None,
        [n] => {
            let (more, digits) = match n.strip_prefix('+') {
                Some(d) => (true, d),
                None => (false, *n),
            };
            let n: u64 = digits.parse().map_err(|_| format!("bad size {n:?}"))?;
            Some(if more { used.saturating_add(n) } else { n })
        }
        _ => return Err("usage: full BYTES|+BYTES|off".into()),
    };
    Ok(match disk.faults.capacity {
        Some(c) => format!("full capacity={c} used={used}"),
        None => format!("full off used={used}"),
    })
}

/// The `eio` command.
fn eio(disk: &mut disk::Disk, args: &[&str]) -> Result<String, String> {
    use disk::Eio;
    let f = &mut disk.faults;
    match args {
        ["off"] => (f.fsync, f.write) = (Eio::Off, Eio::Off),
        [op, rest @ ..] => {
            let how = match rest {
                [] => Eio::Always,
                ["once"] => Eio::Once,
                _ => return Err("usage: eio fsync|write [once]".into()),
            };
            match *op {
                "fsync" => f.fsync = how,
                "write" => f.write = how,
                _ => return Err(format!("unknown operation {op:?}")),
            }
        }
        [] => return Err("usage: eio fsync|write [once] | eio off".into()),
    }
    let name = |e: Eio| match e {
        Eio::Off => "off",
        Eio::Once => "once",
        Eio::Always => "always",
    };
    Ok(format!(
        "eio fsync={} write={}",
        name(f.fsync),
        name(f.write)
    ))
}

fn mount(machine: &Arc<Mutex<Machine>>, mountpoint: &Path) -> io::Result<BackgroundSession> {
    let epoch = machine.lock().epoch;
    let mut config = Config::default();
    config.mount_options = vec![MountOption::FSName("lossyfs".into()), MountOption::NoAtime];
    fuser::spawn_mount(LossyFs::new(machine.clone(), epoch), mountpoint, &config)
}

/// Detaches the mount; the kernel ends the session once no process uses
/// the filesystem any more.
fn unmount(session: BackgroundSession, mountpoint: &Path) {
    let path = CString::new(mountpoint.as_os_str().as_bytes()).expect("a path has no NUL byte");
    // SAFETY: umount2 reads a NUL-terminated path that outlives the call.
    let rc = unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
    if rc != 0 {
        let err = io::Error::last_os_error();
        // Not root: the setuid helper may unmount what its user mounted.
        let helped = std::process::Command::new("fusermount3")
            .arg("-u")
            .arg("-z")
            .arg(mountpoint)
            .status()
            .is_ok_and(|s| s.success());
        if !helped {
            eprintln!("lossyfs: cannot unmount {}: {err}", mountpoint.display());
        }
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while !session.guard.is_finished() && Instant::now() < deadline {
        // The main thread of a tool without async code: only commands wait.
        #[allow(clippy::disallowed_methods)]
        std::thread::sleep(Duration::from_millis(5));
    }
    if session.guard.is_finished() {
        if let Err(e) = session.join() {
            eprintln!("lossyfs: the old session ended with {e}");
        }
    } else {
        // A process still uses the old mount: leave its session running
        // (its requests fail: wrong epoch) and never unmount by path again,
        // which would hit the new mount.
        eprintln!("lossyfs: the old mount is still in use; its session is left behind");
        std::mem::forget(session);
    }
}
