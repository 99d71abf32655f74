//! The lossyfs test tool (tools/lossyfs): a FUSE filesystem that forgets
//! everything not fsynced when the power is cut. [`LossyDisk`] drives one
//! mount; the tests here check its rules through real system calls, the way
//! MetaStore and RocksDB use them.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

/// One lossyfs mount in a temp dir; unmounted on drop.
pub struct LossyDisk {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    mountpoint: PathBuf,
    _tmp: tempfile::TempDir,
}

/// What a cut threw away (the tool's `cut` answer).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cut {
    /// Files that went back to older contents.
    pub files: u64,
    /// Directories that went back to older entries.
    pub dirs: u64,
    /// Files and directories that vanished.
    pub dropped: u64,
}

impl LossyDisk {
    /// Mounts an empty lossy filesystem.
    pub fn mount() -> LossyDisk {
        let tmp = tempfile::tempdir().expect("temp dir");
        let mountpoint = tmp.path().join("disk");
        fs::create_dir(&mountpoint).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_lossyfs"))
            .arg(&mountpoint)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start lossyfs");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut disk = LossyDisk {
            child,
            stdin,
            stdout,
            mountpoint,
            _tmp: tmp,
        };
        let first = disk.answer();
        assert_eq!(
            first, "ready",
            "lossyfs did not mount (needs /dev/fuse and root or fusermount3)"
        );
        disk
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    fn answer(&mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read lossyfs");
        assert!(!line.is_empty(), "lossyfs exited");
        line.trim().to_owned()
    }

    fn command(&mut self, cmd: &str) -> String {
        let stdin = self.stdin.as_mut().expect("lossyfs running");
        writeln!(stdin, "{cmd}").expect("command lossyfs");
        stdin.flush().unwrap();
        self.answer()
    }

    /// The instant of the power cut: nothing more becomes durable, every
    /// request fails. Kill the processes using the disk next, then [`cut`].
    pub fn freeze(&mut self) {
        assert_eq!(self.command("freeze"), "frozen");
    }

    /// Drops everything not durable, unmounts and mounts the rest again.
    /// The processes using the disk must be dead.
    pub fn cut(&mut self) -> Cut {
        self.cut_with("cut")
    }

    /// A cut where blocks written since their file's last sync survive or
    /// not at random (seeded), and such files keep their synced or current
    /// length: dirty pages written back in any order before the power went.
    pub fn cut_torn(&mut self, seed: u64) -> Cut {
        self.cut_with(&format!("cut torn {seed}"))
    }

    fn cut_with(&mut self, command: &str) -> Cut {
        let answer = self.command(command);
        let field = |name: &str| -> u64 {
            answer
                .split_whitespace()
                .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("lossyfs answered {answer:?}"))
        };
        Cut {
            files: field("files"),
            dirs: field("dirs"),
            dropped: field("dropped"),
        }
    }

    /// (file syncs, directory syncs) so far.
    pub fn syncs(&mut self) -> (u64, u64) {
        let answer = self.command("stats");
        let field = |name: &str| -> u64 {
            answer
                .split_whitespace()
                .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("lossyfs answered {answer:?}"))
        };
        (field("file_syncs"), field("dir_syncs"))
    }
}

impl LossyDisk {
    /// Sets the capacity: `full BYTES`, `full +BYTES` (room for BYTES more
    /// than in use now) or `full off`. Returns the bytes in use.
    pub fn full(&mut self, arg: &str) -> u64 {
        let answer = self.command(&format!("full {arg}"));
        answer
            .split_whitespace()
            .find_map(|f| f.strip_prefix("used="))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("lossyfs answered {answer:?}"))
    }

    /// Makes every file fsync take `delay` before it syncs.
    pub fn fsync_delay(&mut self, delay: Duration) {
        let answer = self.command(&format!("fsync-delay {}", delay.as_micros()));
        assert!(
            answer.starts_with("fsync-delay "),
            "lossyfs answered {answer:?}"
        );
    }

    /// Arms EIO: `fsync`, `fsync once`, `write`, `write once`, or `off`.
    pub fn eio(&mut self, arg: &str) {
        let answer = self.command(&format!("eio {arg}"));
        assert!(
            answer.starts_with("eio fsync="),
            "lossyfs answered {answer:?}"
        );
    }
}

impl Drop for LossyDisk {
    fn drop(&mut self) {
        // End of input: lossyfs unmounts and exits.
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

fn fsync_dir(path: &Path) {
    File::open(path).unwrap().sync_all().unwrap();
}

fn read(path: &Path) -> Option<Vec<u8>> {
    fs::read(path).ok()
}

#[test]
fn a_write_without_fsync_is_lost() {
    let mut disk = LossyDisk::mount();
    let p = disk.path().join("f");
    let mut f = File::create(&p).unwrap();
    fsync_dir(disk.path());
    f.write_all(b"never synced").unwrap();
    drop(f);
    assert_eq!(read(&p).unwrap(), b"never synced", "visible before the cut");
    assert_eq!(
        disk.cut(),
        Cut {
            files: 1,
            dirs: 0,
            dropped: 0
        }
    );
    assert_eq!(
        read(&p).unwrap(),
        b"",
        "the file is back to its synced length"
    );
}

#[test]
fn fsync_and_fdatasync_keep_data_and_size() {
    let mut disk = LossyDisk::mount();
    let (a, b) = (disk.path().join("a"), disk.path().join("b"));
    let mut fa = File::create(&a).unwrap();
    let mut fb = File::create(&b).unwrap();
    fsync_dir(disk.path());
    fa.write_all(b"fsynced").unwrap();
    fa.sync_all().unwrap();
    fb.write_all(b"fdatasynced").unwrap();
    fb.sync_data().unwrap();
    fa.write_all(b" and more").unwrap();
    drop((fa, fb));
    disk.cut();
    assert_eq!(read(&a).unwrap(), b"fsynced");
    assert_eq!(read(&b).unwrap(), b"fdatasynced");
}

#[test]
fn an_overwrite_without_fsync_returns_to_the_old_bytes() {
    let mut disk = LossyDisk::mount();
    let p = disk.path().join("f");
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&p)
        .unwrap();
    f.write_all(&[1u8; 10_000]).unwrap();
    f.sync_all().unwrap();
    fsync_dir(disk.path());
    f.seek(SeekFrom::Start(4000)).unwrap();
    f.write_all(&[2u8; 300]).unwrap();
    // Read through the still-open descriptor: the new bytes are there...
    let mut back = vec![0; 300];
    f.seek(SeekFrom::Start(4000)).unwrap();
    f.read_exact(&mut back).unwrap();
    assert_eq!(back, vec![2u8; 300]);
    drop(f);
    disk.cut();
    // ... and after the cut a fresh open sees the synced bytes, not a cache.
    assert_eq!(read(&p).unwrap(), vec![1u8; 10_000]);
}

#[test]
fn a_new_file_needs_its_directory_fsynced() {
    let mut disk = LossyDisk::mount();
    let p = disk.path().join("f");
    let mut f = File::create(&p).unwrap();
    f.write_all(b"data").unwrap();
    f.sync_all().unwrap();
    drop(f);
    assert_eq!(disk.cut().dropped, 1);
    assert!(!p.exists(), "created and fsynced, but its entry never was");

    let mut f = File::create(&p).unwrap();
    f.write_all(b"data").unwrap();
    f.sync_all().unwrap();
    fsync_dir(disk.path());
    drop(f);
    disk.cut();
    assert_eq!(read(&p).unwrap(), b"data");
}

#[test]
fn rename_is_durable_once_the_directory_is_fsynced() {
    let mut disk = LossyDisk::mount();
    let (cur, tmp) = (disk.path().join("current"), disk.path().join("tmp"));
    let install = |contents: &[u8], sync_dir: bool| {
        let mut f = File::create(&tmp).unwrap();
        f.write_all(contents).unwrap();
        f.sync_all().unwrap();
        fs::rename(&tmp, &cur).unwrap();
        if sync_dir {
            fsync_dir(cur.parent().unwrap());
        }
    };
    install(b"one", true);
    install(b"two", false);
    assert_eq!(read(&cur).unwrap(), b"two");
    disk.cut();
    assert_eq!(read(&cur).unwrap(), b"one", "the rename was not durable");
    assert!(!tmp.exists());
    install(b"three", true);
    disk.cut();
    assert_eq!(read(&cur).unwrap(), b"three");
}

#[test]
fn unlink_and_mkdir_follow_their_directory() {
    let mut disk = LossyDisk::mount();
    let dir = disk.path().join("sub");
    fs::create_dir(&dir).unwrap();
    fsync_dir(disk.path());
    let p = dir.join("f");
    let mut f = File::create(&p).unwrap();
    f.write_all(b"x").unwrap();
    f.sync_all().unwrap();
    drop(f);
    fsync_dir(&dir);
    fs::remove_file(&p).unwrap();
    fs::create_dir(disk.path().join("unsynced")).unwrap();
    disk.cut();
    assert_eq!(read(&p).unwrap(), b"x", "the unlink was not durable");
    assert!(!disk.path().join("unsynced").exists());
    fs::remove_file(&p).unwrap();
    fsync_dir(&dir);
    disk.cut();
    assert!(!p.exists());
}

#[test]
fn truncate_is_durable_only_with_fsync() {
    let mut disk = LossyDisk::mount();
    let p = disk.path().join("f");
    let mut f = File::create(&p).unwrap();
    f.write_all(b"0123456789").unwrap();
    f.sync_all().unwrap();
    fsync_dir(disk.path());
    f.set_len(4).unwrap();
    drop(f);
    disk.cut();
    assert_eq!(read(&p).unwrap(), b"0123456789", "unsynced truncate undone");
    let f = OpenOptions::new().write(true).open(&p).unwrap();
    f.set_len(4).unwrap();
    f.sync_all().unwrap();
    f.set_len(20).unwrap();
    drop(f);
    disk.cut();
    assert_eq!(read(&p).unwrap(), b"0123");
    // Extending again reads zeros, not the bytes cut off.
    let f = OpenOptions::new().write(true).open(&p).unwrap();
    f.set_len(10).unwrap();
    assert_eq!(read(&p).unwrap(), b"0123\0\0\0\0\0\0");
}

#[test]
fn o_dsync_writes_count_as_synced() {
    let mut disk = LossyDisk::mount();
    let p = disk.path().join("f");
    File::create(&p).unwrap().sync_all().unwrap();
    fsync_dir(disk.path());
    let mut f = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DSYNC)
        .open(&p)
        .unwrap();
    f.write_all(b"dsync").unwrap();
    drop(f);
    disk.cut();
    assert_eq!(read(&p).unwrap(), b"dsync");
}

#[test]
fn a_frozen_disk_fails_every_request() {
    let mut disk = LossyDisk::mount();
    let p = disk.path().join("f");
    let mut f = File::create(&p).unwrap();
    fsync_dir(disk.path());
    disk.freeze();
    assert!(f.write_all(b"after the cut").is_err());
    assert!(f.sync_all().is_err());
    drop(f);
    disk.cut();
    assert_eq!(read(&p).unwrap(), b"");
    let (files, dirs) = disk.syncs();
    assert_eq!((files, dirs), (0, 1));
}

#[test]
fn a_torn_cut_keeps_some_unsynced_blocks() {
    let mut disk = LossyDisk::mount();
    let p = disk.path().join("f");
    let (old, new) = (vec![1u8; 4096], vec![2u8; 4096]);
    let (mut kept, mut lost) = (0, 0);
    for seed in 1..=8 {
        fs::write(&p, old.repeat(8)).unwrap();
        File::open(&p).unwrap().sync_all().unwrap();
        fsync_dir(disk.path());
        let mut f = OpenOptions::new().write(true).open(&p).unwrap();
        f.write_all(&new.repeat(8)).unwrap();
        drop(f);
        disk.cut_torn(seed);
        let after = read(&p).unwrap();
        assert_eq!(after.len(), 8 * 4096);
        for block in after.chunks(4096) {
            if block == new.as_slice() {
                kept += 1;
            } else {
                assert_eq!(block, old.as_slice(), "a block is either old or new");
                lost += 1;
            }
        }
    }
    assert!(kept > 0 && lost > 0, "kept {kept}, lost {lost}");
}

/// A full disk refuses whatever grows its contents with ENOSPC (writes,
/// truncate up), keeps what fitted, reports the room left to statvfs
/// (what MetaStore's disk check reads), and takes writes again once a
/// file is removed or the limit is lifted.
#[test]
fn a_full_disk_refuses_growth_with_enospc_until_space_returns() {
    let mut disk = LossyDisk::mount();
    let a = disk.path().join("a");
    fs::write(&a, vec![7u8; 8192]).unwrap();
    let used = disk.full("+16384");
    assert_eq!(used, 8192);
    let free = metastore::storage::dirs::free_space(disk.path()).unwrap();
    assert_eq!(free, 16384, "statvfs reports the room left");
    let b = disk.path().join("b");
    let mut f = File::create(&b).unwrap();
    f.write_all(&[1u8; 16384]).unwrap();
    let err = f.write_all(&[1u8]).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    let err = f.set_len(16385).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    // An overwrite in place needs no room.
    f.seek(SeekFrom::Start(0)).unwrap();
    f.write_all(&[2u8; 4096]).unwrap();
    assert_eq!(
        metastore::storage::dirs::free_space(disk.path()).unwrap(),
        0
    );
    drop(f);
    assert_eq!(read(&b).unwrap().len(), 16384, "what fitted is kept");
    // Removing a file frees its space.
    fs::remove_file(&a).unwrap();
    fs::OpenOptions::new()
        .append(true)
        .open(&b)
        .unwrap()
        .write_all(&[3u8; 8192])
        .unwrap();
    assert_eq!(disk.full("off"), 16384 + 8192);
    fs::write(disk.path().join("c"), vec![0u8; 100_000]).unwrap();
}

/// EIO on fsync: the call fails and makes nothing durable (a cut loses the
/// data), once or until disarmed; EIO on write fails the write.
#[test]
fn eio_fails_fsync_and_write_and_keeps_nothing_durable() {
    let mut disk = LossyDisk::mount();
    let p = disk.path().join("f");
    let mut f = File::create(&p).unwrap();
    fsync_dir(disk.path());
    f.write_all(b"acked? no").unwrap();
    disk.eio("fsync once");
    let err = f.sync_all().unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    drop(f);
    disk.cut();
    assert_eq!(
        read(&p).unwrap(),
        b"",
        "a failed fsync made nothing durable"
    );
    // `once`: the next fsync works.
    let mut f = OpenOptions::new().write(true).open(&p).unwrap();
    f.write_all(b"synced").unwrap();
    f.sync_all().unwrap();
    disk.eio("fsync");
    for _ in 0..2 {
        let err = f.sync_data().unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    }
    disk.eio("write");
    let err = f.write_all(b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    disk.eio("off");
    f.write_all(b" again").unwrap();
    f.sync_all().unwrap();
    drop(f);
    disk.cut();
    assert_eq!(read(&p).unwrap(), b"synced again");
}
