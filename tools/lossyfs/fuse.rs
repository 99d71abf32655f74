//! The FUSE face of the [`Disk`]: each kernel request becomes one call on
//! the disk under its lock.
//!
//! Every file is opened with `FOPEN_DIRECT_IO`: no page cache above FUSE,
//! so every write reaches the disk when the system call is made and every
//! read is answered from the disk. (Without writeback caching the kernel
//! would send writes through anyway; direct I/O also keeps reads honest.)
//! A remount after a cut starts with a fresh kernel cache in any case.
//!
//! A session belongs to one mount (`epoch`); after a cut any request that
//! still reaches an old session fails with EIO, and so does every request
//! while the disk is frozen (the instant of the power cut has passed).

use std::ffi::OsStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use parking_lot::Mutex;

use crate::disk::{Attr, Disk, Kind, SetAttr, BLOCK};

/// How long the kernel may cache names and attributes: all changes go
/// through this one mount, so the cache cannot go stale within it.
const TTL: Duration = Duration::from_secs(1);

/// The disk and whether the power is on.
#[derive(Debug, Default)]
pub struct Machine {
    /// The simulated disk.
    pub disk: Disk,
    /// The mount that may use the disk (bumped at every cut).
    pub epoch: u64,
    /// The power is off: every request fails.
    pub frozen: bool,
    /// How long a file fsync takes before it makes anything durable (a real
    /// disk's flush: the window in which written pages are not yet synced).
    pub fsync_delay: std::time::Duration,
}

/// One mount's request handler.
pub struct LossyFs {
    machine: Arc<Mutex<Machine>>,
    epoch: u64,
}

impl LossyFs {
    /// A handler for mount `epoch` of `machine`.
    pub fn new(machine: Arc<Mutex<Machine>>, epoch: u64) -> LossyFs {
        LossyFs { machine, epoch }
    }

    /// Runs `f` on the disk unless the power is off or this mount is gone.
    fn with<T>(&self, f: impl FnOnce(&mut Disk) -> Result<T, i32>) -> Result<T, Errno> {
        let mut m = self.machine.lock();
        if m.frozen || m.epoch != self.epoch {
            return Err(Errno::EIO);
        }
        f(&mut m.disk).map_err(Errno::from_i32)
    }
}

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: a.ctime,
        kind: file_type(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        blksize: BLOCK as u32,
        flags: 0,
    }
}

fn file_type(k: Kind) -> FileType {
    match k {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
    }
}

fn time(t: TimeOrNow) -> SystemTime {
    match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    }
}

fn perm(mode: u32, umask: u32) -> u16 {
    ((mode & !umask) & 0o7777) as u16
}

impl Filesystem for LossyFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.with(|d| d.lookup(parent.0, name)) {
            Ok(a) => reply.entry(&TTL, &file_attr(&a), Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.with(|d| d.attr(ino.0)) {
            Ok(a) => reply.attr(&TTL, &file_attr(&a)),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let change = SetAttr {
            perm: mode.map(|m| perm(m, 0)),
            uid,
            gid,
            size,
            atime: atime.map(time),
            mtime: mtime.map(time),
        };
        match self.with(|d| d.set_attr(ino.0, change)) {
            Ok(a) => reply.attr(&TTL, &file_attr(&a)),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        if mode & libc::S_IFMT != libc::S_IFREG {
            return reply.error(Errno::EPERM);
        }
        let (uid, gid) = (req.uid(), req.gid());
        match self.with(|d| d.create(parent.0, name, Kind::File, perm(mode, umask), uid, gid)) {
            Ok(a) => reply.entry(&TTL, &file_attr(&a), Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let (uid, gid) = (req.uid(), req.gid());
        match self.with(|d| d.create(parent.0, name, Kind::Dir, perm(mode, umask), uid, gid)) {
            Ok(a) => reply.entry(&TTL, &file_attr(&a), Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.with(|d| d.unlink(parent.0, name)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.with(|d| d.rmdir(parent.0, name)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        match self.with(|d| d.rename(parent.0, name, newparent.0, newname, flags.bits())) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        match self.with(|d| d.link(ino.0, newparent.0, newname)) {
            Ok(a) => reply.entry(&TTL, &file_attr(&a), Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.with(|d| d.open(ino.0, flags.0)) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        if mode & libc::S_IFMT != libc::S_IFREG {
            return reply.error(Errno::EPERM);
        }
        let (uid, gid) = (req.uid(), req.gid());
        let created = self.with(|d| {
            let a = d.create(parent.0, name, Kind::File, perm(mode, umask), uid, gid)?;
            Ok((a, d.open(a.ino, flags)?))
        });
        match created {
            Ok((a, fh)) => reply.created(
                &TTL,
                &file_attr(&a),
                Generation(0),
                FileHandle(fh),
                FopenFlags::FOPEN_DIRECT_IO,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.with(|d| d.read(ino.0, offset, size as usize)) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.with(|d| d.write(ino.0, fh.0, offset, data, flags.0)) {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(2) makes nothing durable.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let _ = self.with(|d| {
            d.release(fh.0);
            Ok(())
        });
        reply.ok();
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _data: bool, reply: ReplyEmpty) {
        let delay = self.machine.lock().fsync_delay;
        if !delay.is_zero() {
            // Unlocked: a cut may come meanwhile, and then this fsync fails.
            // The FUSE session's own thread, and a disk's flush blocks it.
            #[allow(clippy::disallowed_methods)]
            std::thread::sleep(delay);
        }
        match self.with(|d| d.fsync(ino.0)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let entries = match self.with(|d| d.read_dir(ino.0)) {
            Ok(e) => e,
            Err(e) => return reply.error(e),
        };
        let dots = [
            (ino.0, Kind::Dir, ".".into()),
            (ino.0, Kind::Dir, "..".into()),
        ];
        // An entry's offset is the position of the next one.
        for (i, (child, kind, name)) in dots
            .into_iter()
            .chain(entries)
            .enumerate()
            .skip(offset as usize)
        {
            if reply.add(INodeNo(child), i as u64 + 1, file_type(kind), &name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _data: bool,
        reply: ReplyEmpty,
    ) {
        match self.with(|d| d.fsync(ino.0)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // A 64 GiB disk unless `full` set a capacity; RocksDB only checks
        // there is room, MetaStore's disk check compares the free space with
        // its reserve.
        let (capacity, used) = self
            .with(|d| Ok((d.faults.capacity, d.used())))
            .unwrap_or((None, 0));
        let total = capacity.unwrap_or(64 << 30) / BLOCK;
        let used = used.div_ceil(BLOCK).min(total);
        reply.statfs(
            total,
            total - used,
            total - used,
            1 << 20,
            1 << 20,
            BLOCK as u32,
            255,
            BLOCK as u32,
        );
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        match self.with(|d| d.fallocate(ino.0, offset, length, mode)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}
