//! The simulated disk: every file's contents and every directory's entries
//! kept twice, as the running system sees them (`cur`) and as a power cut
//! would leave them (`dur`, what has been made durable).
//!
//! The durability rules are the ones POSIX and Linux give applications, and
//! nothing more generous:
//! - `fsync`/`fdatasync` of a file makes its contents and its size durable
//!   (fdatasync must flush the size too, since the data cannot be read back
//!   without it), and nothing else: not its name;
//! - a directory's entries (create, mkdir, link, rename in or out, unlink,
//!   rmdir) become durable when that directory is fsynced; a new file whose
//!   parent was never fsynced is gone after a cut, however often the file
//!   itself was fsynced;
//! - a write through a descriptor opened with `O_SYNC`/`O_DSYNC` counts as
//!   written and fsynced (`O_DIRECT` alone promises nothing durable).
//!
//! [`Disk::cut`] is the power cut: every file returns to its last synced
//! contents and length, every directory to its last synced entries, and
//! whatever is no longer reachable from the root is gone.
//!
//! Failures on command ([`Faults`]): a capacity past which a write, a
//! truncate up or an allocating fallocate that grows the contents fails
//! with ENOSPC (all or nothing: no short writes), and EIO from fsync or
//! write, once or until disarmed. A failed fsync makes nothing durable.
//! Space in use is the length of every file that still has a name
//! (an unlinked file is freed at once, even if still open).
//!
//! Contents live in 4 KiB blocks shared (reference-counted) between `cur`
//! and `dur`: an fsync copies a list of block pointers, a write copies only
//! the blocks it touches that the durable side still shares.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::sync::Arc;
use std::time::SystemTime;

/// Block size of file contents (and of what `stat` reports).
pub const BLOCK: u64 = 4096;
/// Inode number of the root directory (FUSE's).
pub const ROOT: u64 = 1;

/// A failed operation: the errno to answer with.
pub type Errno = i32;

/// The contents of a file: its length and its blocks (`None`: a hole,
/// zeros). Invariant: every byte at or past `len` in a stored block is zero,
/// so growing a file (truncate up, a write past the end) reads zeros.
#[derive(Clone, Debug, Default)]
pub struct Data {
    len: u64,
    blocks: Vec<Option<Arc<Vec<u8>>>>,
}

impl Data {
    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Up to `size` bytes from `off` (fewer at the end of the file).
    pub fn read(&self, off: u64, size: usize) -> Vec<u8> {
        if off >= self.len {
            return Vec::new();
        }
        let end = self.len.min(off.saturating_add(size as u64));
        let mut out = Vec::with_capacity((end - off) as usize);
        let mut pos = off;
        while pos < end {
            let (b, o) = ((pos / BLOCK) as usize, (pos % BLOCK) as usize);
            let n = (BLOCK as usize - o).min((end - pos) as usize);
            match self.blocks.get(b).and_then(Option::as_ref) {
                Some(block) => out.extend_from_slice(&block[o..o + n]),
                None => out.resize(out.len() + n, 0),
            }
            pos += n as u64;
        }
        out
    }

    /// Writes `data` at `off`, growing the file if it ends past the end.
    pub fn write(&mut self, off: u64, data: &[u8]) {
        let end = off + data.len() as u64;
        let needed = end.div_ceil(BLOCK) as usize;
        if self.blocks.len() < needed {
            self.blocks.resize(needed, None);
        }
        let (mut pos, mut src) = (off, data);
        while !src.is_empty() {
            let (b, o) = ((pos / BLOCK) as usize, (pos % BLOCK) as usize);
            let n = (BLOCK as usize - o).min(src.len());
            let block = self.blocks[b].get_or_insert_with(|| Arc::new(vec![0; BLOCK as usize]));
            // Copies the block only if the durable side still shares it.
            Arc::make_mut(block)[o..o + n].copy_from_slice(&src[..n]);
            src = &src[n..];
            pos += n as u64;
        }
        self.len = self.len.max(end);
    }

    /// Truncates or extends (with zeros) to `len`.
    pub fn set_len(&mut self, len: u64) {
        if len < self.len {
            self.blocks.truncate(len.div_ceil(BLOCK) as usize);
            let tail = (len % BLOCK) as usize;
            if tail != 0 {
                if let Some(Some(block)) = self.blocks.last_mut() {
                    Arc::make_mut(block)[tail..].fill(0);
                }
            }
        }
        self.len = len;
    }

    /// Zeros `[off, off + len)` within the current length.
    pub fn zero(&mut self, off: u64, len: u64) {
        let end = self.len.min(off.saturating_add(len));
        if off < end {
            self.write(off, &vec![0; (end - off) as usize]);
        }
    }

    /// Whether both are the same contents without comparing bytes: the same
    /// length and the same shared blocks (what an fsync leaves behind).
    fn same_as(&self, other: &Data) -> bool {
        self.len == other.len
            && self.blocks.len() == other.blocks.len()
            && self
                .blocks
                .iter()
                .zip(&other.blocks)
                .all(|(a, b)| match (a, b) {
                    (None, None) => true,
                    (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                    _ => false,
                })
    }
}

/// File or directory (nothing else is supported).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
}

/// What `stat` shows of a node.
#[derive(Clone, Copy, Debug)]
pub struct Attr {
    /// Inode number.
    pub ino: u64,
    /// File or directory.
    pub kind: Kind,
    /// Length (directories: 0).
    pub size: u64,
    /// Permission bits.
    pub perm: u16,
    /// Links to it (directories: 2).
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Last access (never updated on reads: noatime).
    pub atime: SystemTime,
    /// Last change of contents.
    pub mtime: SystemTime,
    /// Last change of contents or attributes.
    pub ctime: SystemTime,
}

/// The attributes a setattr request changes (None: unchanged).
#[derive(Clone, Copy, Debug, Default)]
pub struct SetAttr {
    /// Permission bits.
    pub perm: Option<u16>,
    /// Owner.
    pub uid: Option<u32>,
    /// Group.
    pub gid: Option<u32>,
    /// Length: truncate or extend with zeros.
    pub size: Option<u64>,
    /// Access time.
    pub atime: Option<SystemTime>,
    /// Modification time.
    pub mtime: Option<SystemTime>,
}

#[derive(Clone, Debug)]
struct Node {
    attr: Attr,
    /// File contents now.
    data: Data,
    /// File contents as of the last fsync.
    synced_data: Data,
    /// Directory entries now.
    entries: BTreeMap<OsString, u64>,
    /// Directory entries as of the last fsync of the directory.
    synced_entries: BTreeMap<OsString, u64>,
}

/// What a power cut threw away.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CutReport {
    /// Files whose contents or length went back to an older state.
    pub files_reverted: usize,
    /// Directories whose entries went back to an older state.
    pub dirs_reverted: usize,
    /// Files and directories no longer reachable (created and never made
    /// durable, or unlinked and now gone for good).
    pub nodes_dropped: usize,
}

/// Counters since start.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    /// write calls.
    pub writes: u64,
    /// fsync/fdatasync of files (and O_SYNC writes).
    pub file_syncs: u64,
    /// fsync of directories.
    pub dir_syncs: u64,
    /// Power cuts.
    pub cuts: u64,
}

/// Whether an injected I/O error is armed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Eio {
    /// No error.
    #[default]
    Off,
    /// The next call fails, later ones succeed.
    Once,
    /// Every call fails until disarmed.
    Always,
}

impl Eio {
    /// Whether this call fails (disarming a one-shot error).
    fn trip(&mut self) -> bool {
        match *self {
            Eio::Off => false,
            Eio::Once => {
                *self = Eio::Off;
                true
            }
            Eio::Always => true,
        }
    }
}

/// Failures the disk injects.
#[derive(Clone, Copy, Debug, Default)]
pub struct Faults {
    /// Bytes of contents the disk holds at most (`None`: no limit here).
    pub capacity: Option<u64>,
    /// fsync of files and directories fails with EIO.
    pub fsync: Eio,
    /// write fails with EIO.
    pub write: Eio,
}

#[derive(Clone, Copy, Debug)]
struct Handle {
    /// Opened with O_SYNC or O_DSYNC: every write is synced.
    sync: bool,
}

/// The whole simulated disk.
#[derive(Debug)]
pub struct Disk {
    nodes: HashMap<u64, Node>,
    next_ino: u64,
    handles: HashMap<u64, Handle>,
    next_fh: u64,
    /// Counters.
    pub stats: Stats,
    /// Injected failures.
    pub faults: Faults,
}

impl Default for Disk {
    fn default() -> Self {
        Disk::new()
    }
}

impl Disk {
    /// An empty disk: the root directory only (durable: it is the fs).
    pub fn new() -> Disk {
        let now = SystemTime::now();
        let root = Node::new(ROOT, Kind::Dir, 0o755, 0, 0, now);
        Disk {
            nodes: HashMap::from([(ROOT, root)]),
            next_ino: ROOT + 1,
            handles: HashMap::new(),
            next_fh: 1,
            stats: Stats::default(),
            faults: Faults::default(),
        }
    }

    fn node(&self, ino: u64) -> Result<&Node, Errno> {
        self.nodes.get(&ino).ok_or(libc::ENOENT)
    }

    fn node_mut(&mut self, ino: u64) -> Result<&mut Node, Errno> {
        self.nodes.get_mut(&ino).ok_or(libc::ENOENT)
    }

    fn dir(&self, ino: u64) -> Result<&Node, Errno> {
        let n = self.node(ino)?;
        if n.attr.kind == Kind::Dir {
            Ok(n)
        } else {
            Err(libc::ENOTDIR)
        }
    }

    fn file_mut(&mut self, ino: u64) -> Result<&mut Node, Errno> {
        let n = self.node_mut(ino)?;
        if n.attr.kind == Kind::File {
            Ok(n)
        } else {
            Err(libc::EISDIR)
        }
    }

    /// The attributes of `ino`.
    pub fn attr(&self, ino: u64) -> Result<Attr, Errno> {
        Ok(self.node(ino)?.attr())
    }

    /// The entry `name` of directory `parent`.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<Attr, Errno> {
        let ino = *self.dir(parent)?.entries.get(name).ok_or(libc::ENOENT)?;
        self.attr(ino)
    }

    /// Creates `name` in `parent` (not durable until `parent` is fsynced).
    pub fn create(
        &mut self,
        parent: u64,
        name: &OsStr,
        kind: Kind,
        perm: u16,
        uid: u32,
        gid: u32,
    ) -> Result<Attr, Errno> {
        if self.dir(parent)?.entries.contains_key(name) {
            return Err(libc::EEXIST);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        let now = SystemTime::now();
        let node = Node::new(ino, kind, perm, uid, gid, now);
        let attr = node.attr();
        self.nodes.insert(ino, node);
        let dir = self.node_mut(parent)?;
        dir.entries.insert(name.to_owned(), ino);
        dir.touch(now);
        Ok(attr)
    }

    /// A new name for file `ino` (a hard link).
    pub fn link(&mut self, ino: u64, parent: u64, name: &OsStr) -> Result<Attr, Errno> {
        if self.node(ino)?.attr.kind == Kind::Dir {
            return Err(libc::EPERM);
        }
        if self.dir(parent)?.entries.contains_key(name) {
            return Err(libc::EEXIST);
        }
        let now = SystemTime::now();
        let dir = self.node_mut(parent)?;
        dir.entries.insert(name.to_owned(), ino);
        dir.touch(now);
        let node = self.node_mut(ino)?;
        node.attr.nlink += 1;
        node.attr.ctime = now;
        Ok(node.attr())
    }

    /// Removes file entry `name` from `parent`.
    pub fn unlink(&mut self, parent: u64, name: &OsStr) -> Result<(), Errno> {
        let ino = *self.dir(parent)?.entries.get(name).ok_or(libc::ENOENT)?;
        if self.node(ino)?.attr.kind == Kind::Dir {
            return Err(libc::EISDIR);
        }
        self.remove_entry(parent, name, ino)
    }

    /// Removes empty directory `name` from `parent`.
    pub fn rmdir(&mut self, parent: u64, name: &OsStr) -> Result<(), Errno> {
        let ino = *self.dir(parent)?.entries.get(name).ok_or(libc::ENOENT)?;
        if !self.dir(ino)?.entries.is_empty() {
            return Err(libc::ENOTEMPTY);
        }
        self.remove_entry(parent, name, ino)
    }

    fn remove_entry(&mut self, parent: u64, name: &OsStr, ino: u64) -> Result<(), Errno> {
        let now = SystemTime::now();
        let dir = self.node_mut(parent)?;
        dir.entries.remove(name);
        dir.touch(now);
        let node = self.node_mut(ino)?;
        node.attr.nlink = match node.attr.kind {
            Kind::Dir => 0,
            Kind::File => node.attr.nlink.saturating_sub(1),
        };
        node.attr.ctime = now;
        Ok(())
    }

    /// rename(2), with RENAME_NOREPLACE and RENAME_EXCHANGE.
    pub fn rename(
        &mut self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        flags: u32,
    ) -> Result<(), Errno> {
        let src = *self.dir(parent)?.entries.get(name).ok_or(libc::ENOENT)?;
        let dst = self.dir(new_parent)?.entries.get(new_name).copied();
        if flags & libc::RENAME_EXCHANGE != 0 {
            let dst = dst.ok_or(libc::ENOENT)?;
            let now = SystemTime::now();
            self.node_mut(parent)?.entries.insert(name.to_owned(), dst);
            self.node_mut(new_parent)?
                .entries
                .insert(new_name.to_owned(), src);
            self.node_mut(parent)?.touch(now);
            self.node_mut(new_parent)?.touch(now);
            return Ok(());
        }
        if flags & !libc::RENAME_NOREPLACE != 0 {
            return Err(libc::EINVAL);
        }
        let src_kind = self.node(src)?.attr.kind;
        if let Some(dst) = dst {
            if flags & libc::RENAME_NOREPLACE != 0 {
                return Err(libc::EEXIST);
            }
            if dst == src {
                return Ok(());
            }
            match (src_kind, self.node(dst)?.attr.kind) {
                (Kind::Dir, Kind::File) => return Err(libc::ENOTDIR),
                (Kind::File, Kind::Dir) => return Err(libc::EISDIR),
                (Kind::Dir, Kind::Dir) if !self.dir(dst)?.entries.is_empty() => {
                    return Err(libc::ENOTEMPTY)
                }
                _ => {}
            }
            self.remove_entry(new_parent, new_name, dst)?;
        }
        let now = SystemTime::now();
        let from = self.node_mut(parent)?;
        from.entries.remove(name);
        from.touch(now);
        let to = self.node_mut(new_parent)?;
        to.entries.insert(new_name.to_owned(), src);
        to.touch(now);
        self.node_mut(src)?.attr.ctime = now;
        Ok(())
    }

    /// Changes attributes; a new size truncates or extends a file.
    pub fn set_attr(&mut self, ino: u64, change: SetAttr) -> Result<Attr, Errno> {
        let SetAttr {
            perm,
            uid,
            gid,
            size,
            atime,
            mtime,
        } = change;
        let now = SystemTime::now();
        if let Some(size) = size {
            let old = self.file_mut(ino)?.data.len();
            self.reserve(size.saturating_sub(old))?;
            let node = self.file_mut(ino)?;
            node.data.set_len(size);
            node.attr.mtime = now;
        }
        let node = self.node_mut(ino)?;
        if let Some(p) = perm {
            node.attr.perm = p;
        }
        if let Some(u) = uid {
            node.attr.uid = u;
        }
        if let Some(g) = gid {
            node.attr.gid = g;
        }
        if let Some(t) = atime {
            node.attr.atime = t;
        }
        if let Some(t) = mtime {
            node.attr.mtime = t;
        }
        node.attr.ctime = now;
        Ok(node.attr())
    }

    /// Opens `ino`; `flags` are open(2)'s.
    pub fn open(&mut self, ino: u64, flags: i32) -> Result<u64, Errno> {
        self.node(ino)?;
        let fh = self.next_fh;
        self.next_fh += 1;
        let sync = flags & libc::O_DSYNC != 0; // O_SYNC includes O_DSYNC's bit
        self.handles.insert(fh, Handle { sync });
        Ok(fh)
    }

    /// Closes a handle.
    pub fn release(&mut self, fh: u64) {
        self.handles.remove(&fh);
    }

    /// Reads from file `ino`.
    pub fn read(&self, ino: u64, off: u64, size: usize) -> Result<Vec<u8>, Errno> {
        let node = self.node(ino)?;
        if node.attr.kind != Kind::File {
            return Err(libc::EISDIR);
        }
        Ok(node.data.read(off, size))
    }

    /// Writes to file `ino` through handle `fh`; `flags` are the
    /// descriptor's open flags as the kernel passes them with the write.
    pub fn write(
        &mut self,
        ino: u64,
        fh: u64,
        off: u64,
        data: &[u8],
        flags: i32,
    ) -> Result<usize, Errno> {
        let sync = flags & libc::O_DSYNC != 0 || self.handles.get(&fh).is_some_and(|h| h.sync);
        if self.faults.write.trip() {
            return Err(libc::EIO);
        }
        let old = self.file_mut(ino)?.data.len();
        self.reserve((off + data.len() as u64).saturating_sub(old))?;
        let now = SystemTime::now();
        let node = self.file_mut(ino)?;
        node.data.write(off, data);
        node.attr.mtime = now;
        node.attr.ctime = now;
        self.stats.writes += 1;
        if sync {
            self.fsync(ino)?;
        }
        Ok(data.len())
    }

    /// fallocate(2): mode 0 (allocate, growing the file), KEEP_SIZE
    /// (nothing to do here), PUNCH_HOLE and ZERO_RANGE.
    pub fn fallocate(&mut self, ino: u64, off: u64, len: u64, mode: i32) -> Result<(), Errno> {
        let keep = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        let end = off.saturating_add(len);
        if !keep {
            let old = self.file_mut(ino)?.data.len();
            self.reserve(end.saturating_sub(old))?;
        }
        let node = self.file_mut(ino)?;
        match mode & !libc::FALLOC_FL_KEEP_SIZE {
            0 => {}
            libc::FALLOC_FL_PUNCH_HOLE if keep => node.data.zero(off, len),
            libc::FALLOC_FL_ZERO_RANGE => node.data.zero(off, len),
            _ => return Err(libc::EOPNOTSUPP),
        }
        if !keep && end > node.data.len() {
            node.data.set_len(end);
        }
        Ok(())
    }

    /// fsync/fdatasync of a file, or fsync of a directory.
    pub fn fsync(&mut self, ino: u64) -> Result<(), Errno> {
        self.node(ino)?;
        if self.faults.fsync.trip() {
            return Err(libc::EIO);
        }
        let node = self.node_mut(ino)?;
        match node.attr.kind {
            Kind::File => {
                node.synced_data = node.data.clone();
                self.stats.file_syncs += 1;
            }
            Kind::Dir => {
                node.synced_entries = node.entries.clone();
                self.stats.dir_syncs += 1;
            }
        }
        Ok(())
    }

    /// The entries of directory `ino` (without `.` and `..`).
    pub fn read_dir(&self, ino: u64) -> Result<Vec<(u64, Kind, OsString)>, Errno> {
        let dir = self.dir(ino)?;
        Ok(dir
            .entries
            .iter()
            .filter_map(|(name, &i)| Some((i, self.nodes.get(&i)?.attr.kind, name.clone())))
            .collect())
    }

    /// Space in use (bytes of contents of the files that have a name, as
    /// they are now).
    pub fn used(&self) -> u64 {
        self.nodes
            .values()
            .filter(|n| n.attr.nlink > 0)
            .map(|n| n.data.len())
            .sum()
    }

    /// Refuses `more` bytes of contents past the capacity (ENOSPC).
    fn reserve(&self, more: u64) -> Result<(), Errno> {
        match self.faults.capacity {
            Some(cap) if more > 0 && self.used().saturating_add(more) > cap => Err(libc::ENOSPC),
            _ => Ok(()),
        }
    }

    /// The power cut: everything not made durable is gone. Open handles die
    /// with the processes that held them.
    ///
    /// With `torn` (a seed), a file does not simply return to its synced
    /// state: each 4 KiB block written since its last sync survives or not
    /// by a coin toss, and its length is the synced or the current one (the
    /// kernel may have written back any dirty pages, in any order, and the
    /// disk may have completed any of them). Directories still return to
    /// their synced entries.
    pub fn cut(&mut self, torn: Option<u64>) -> CutReport {
        let mut report = CutReport::default();
        let mut rng = torn.map(Coin::new);
        for node in self.nodes.values_mut() {
            if !node.data.same_as(&node.synced_data) {
                report.files_reverted += 1;
                node.data = match rng.as_mut() {
                    None => node.synced_data.clone(),
                    Some(coin) => torn_data(&node.data, &node.synced_data, coin),
                };
                node.synced_data = node.data.clone();
            }
            if node.entries != node.synced_entries {
                report.dirs_reverted += 1;
                node.entries = node.synced_entries.clone();
            }
        }
        // What the durable directories reach is what a reboot finds; links
        // are counted again from the entries that survived.
        let mut links: HashMap<u64, u32> = HashMap::new();
        let mut seen = HashSet::from([ROOT]);
        let mut queue = vec![ROOT];
        while let Some(ino) = queue.pop() {
            for &child in self.nodes[&ino].entries.values() {
                *links.entry(child).or_default() += 1;
                if seen.insert(child) {
                    queue.push(child);
                }
            }
        }
        let before = self.nodes.len();
        self.nodes.retain(|ino, _| seen.contains(ino));
        report.nodes_dropped = before - self.nodes.len();
        for (ino, node) in &mut self.nodes {
            node.attr.nlink = match node.attr.kind {
                Kind::Dir => 2,
                Kind::File => links.get(ino).copied().unwrap_or(1),
            };
        }
        self.handles.clear();
        self.stats.cuts += 1;
        report
    }
}

/// What a torn cut leaves of a file written since its last sync: some of
/// the new blocks, some of the old, at the old or the new length.
fn torn_data(now: &Data, synced: &Data, coin: &mut Coin) -> Data {
    let mut out = synced.clone();
    let len = if coin.toss() { now.len } else { synced.len };
    out.set_len(len);
    for b in 0..len.div_ceil(BLOCK) {
        let differs = match (now.blocks.get(b as usize), synced.blocks.get(b as usize)) {
            (Some(Some(x)), Some(Some(y))) => !Arc::ptr_eq(x, y),
            (None | Some(None), None | Some(None)) => false,
            _ => true,
        };
        if differs && coin.toss() {
            let start = b * BLOCK;
            let n = BLOCK.min(len - start) as usize;
            out.write(start, &now.read(start, n));
        }
    }
    out
}

/// A seeded coin (xorshift64*): reproducible cuts.
struct Coin(u64);

impl Coin {
    fn new(seed: u64) -> Coin {
        Coin(seed | 1)
    }

    fn toss(&mut self) -> bool {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 63 == 1
    }
}

impl Node {
    fn new(ino: u64, kind: Kind, perm: u16, uid: u32, gid: u32, now: SystemTime) -> Node {
        Node {
            attr: Attr {
                ino,
                kind,
                size: 0,
                perm,
                nlink: if kind == Kind::Dir { 2 } else { 1 },
                uid,
                gid,
                atime: now,
                mtime: now,
                ctime: now,
            },
            data: Data::default(),
            synced_data: Data::default(),
            entries: BTreeMap::new(),
            synced_entries: BTreeMap::new(),
        }
    }

    fn attr(&self) -> Attr {
        Attr {
            size: self.data.len(),
            ..self.attr
        }
    }

    fn touch(&mut self, now: SystemTime) {
        self.attr.mtime = now;
        self.attr.ctime = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> &OsStr {
        OsStr::new(s)
    }

    fn new_file(d: &mut Disk, parent: u64, n: &str) -> u64 {
        d.create(parent, name(n), Kind::File, 0o644, 0, 0)
            .unwrap()
            .ino
    }

    fn size(n: u64) -> SetAttr {
        SetAttr {
            size: Some(n),
            ..SetAttr::default()
        }
    }

    fn contents(d: &Disk, ino: u64) -> Vec<u8> {
        d.read(ino, 0, usize::MAX).unwrap()
    }

    #[test]
    fn blocks_read_back_across_boundaries_and_holes() {
        let mut data = Data::default();
        data.write(4090, b"0123456789");
        data.write(3 * BLOCK + 1, b"x");
        assert_eq!(data.len(), 3 * BLOCK + 2);
        assert_eq!(data.read(4090, 10), b"0123456789");
        assert_eq!(data.read(BLOCK * 2, 4), vec![0; 4], "a hole reads zeros");
        assert_eq!(data.read(3 * BLOCK, 10), b"\0x", "short read at the end");
        assert!(data.read(3 * BLOCK + 2, 1).is_empty());
    }

    #[test]
    fn truncate_then_extend_reads_zeros_not_old_bytes() {
        let mut data = Data::default();
        data.write(0, &[7; 6000]);
        data.set_len(10);
        data.set_len(6000);
        assert_eq!(data.read(0, 10), vec![7; 10]);
        assert_eq!(data.read(10, 5990), vec![0; 5990]);
    }

    #[test]
    fn unsynced_write_is_lost_and_synced_write_kept() {
        let mut d = Disk::new();
        let f = new_file(&mut d, ROOT, "f");
        d.fsync(ROOT).unwrap();
        d.write(f, 0, 0, b"kept", 0).unwrap();
        d.fsync(f).unwrap();
        d.write(f, 0, 4, b"+lost", 0).unwrap();
        d.write(f, 0, 0, b"K", 0).unwrap();
        let report = d.cut(None);
        assert_eq!(report.files_reverted, 1);
        assert_eq!(contents(&d, f), b"kept");
    }

    #[test]
    fn a_torn_cut_keeps_some_unsynced_blocks_and_nothing_else() {
        let mut kept_some = false;
        let mut lost_some = false;
        for seed in 1..40 {
            let mut d = Disk::new();
            let f = new_file(&mut d, ROOT, "f");
            d.fsync(ROOT).unwrap();
            d.write(f, 0, 0, &[1; 4 * BLOCK as usize], 0).unwrap();
            d.fsync(f).unwrap();
            d.write(f, 0, 0, &[2; 6 * BLOCK as usize], 0).unwrap();
            d.cut(Some(seed));
            let after = contents(&d, f);
            assert!(after.len() == 4 * BLOCK as usize || after.len() == 6 * BLOCK as usize);
            for (i, block) in after.chunks(BLOCK as usize).enumerate() {
                // Past the synced length, a block not written back is a hole.
                let hole = i >= 4 && block == [0; BLOCK as usize];
                assert!(block == [1; BLOCK as usize] || block == [2; BLOCK as usize] || hole);
                kept_some |= block[0] == 2;
                lost_some |= block[0] == 1;
            }
        }
        assert!(kept_some && lost_some);
    }

    #[test]
    fn o_dsync_writes_are_durable() {
        let mut d = Disk::new();
        let f = new_file(&mut d, ROOT, "f");
        d.fsync(ROOT).unwrap();
        let fh = d.open(f, libc::O_WRONLY | libc::O_DSYNC).unwrap();
        d.write(f, fh, 0, b"synced", 0).unwrap();
        d.cut(None);
        assert_eq!(contents(&d, f), b"synced");
    }

    #[test]
    fn a_file_fsynced_in_an_unsynced_directory_is_gone() {
        let mut d = Disk::new();
        let f = new_file(&mut d, ROOT, "f");
        d.write(f, 0, 0, b"data", 0).unwrap();
        d.fsync(f).unwrap();
        assert_eq!(d.cut(None).nodes_dropped, 1);
        assert_eq!(d.lookup(ROOT, name("f")).unwrap_err(), libc::ENOENT);
    }

    #[test]
    fn rename_is_durable_only_with_its_directory() {
        let mut d = Disk::new();
        let old = new_file(&mut d, ROOT, "current");
        d.write(old, 0, 0, b"old", 0).unwrap();
        d.fsync(old).unwrap();
        d.fsync(ROOT).unwrap();
        let tmp = new_file(&mut d, ROOT, "tmp");
        d.write(tmp, 0, 0, b"new", 0).unwrap();
        d.fsync(tmp).unwrap();
        d.rename(ROOT, name("tmp"), ROOT, name("current"), 0)
            .unwrap();
        d.cut(None);
        let a = d.lookup(ROOT, name("current")).unwrap();
        assert_eq!(contents(&d, a.ino), b"old", "the unsynced rename undone");
        assert!(
            d.lookup(ROOT, name("tmp")).is_err(),
            "tmp was never durable"
        );

        let tmp = new_file(&mut d, ROOT, "tmp");
        d.write(tmp, 0, 0, b"new", 0).unwrap();
        d.fsync(tmp).unwrap();
        d.rename(ROOT, name("tmp"), ROOT, name("current"), 0)
            .unwrap();
        d.fsync(ROOT).unwrap();
        d.cut(None);
        let a = d.lookup(ROOT, name("current")).unwrap();
        assert_eq!(contents(&d, a.ino), b"new");
        assert_eq!(a.nlink, 1);
    }

    #[test]
    fn unlink_without_directory_fsync_comes_back() {
        let mut d = Disk::new();
        let f = new_file(&mut d, ROOT, "f");
        d.write(f, 0, 0, b"x", 0).unwrap();
        d.fsync(f).unwrap();
        d.fsync(ROOT).unwrap();
        d.unlink(ROOT, name("f")).unwrap();
        d.cut(None);
        assert_eq!(contents(&d, d.lookup(ROOT, name("f")).unwrap().ino), b"x");
        d.unlink(ROOT, name("f")).unwrap();
        d.fsync(ROOT).unwrap();
        assert_eq!(d.cut(None).nodes_dropped, 1);
    }

    #[test]
    fn truncate_is_undone_without_fsync_and_kept_with_it() {
        let mut d = Disk::new();
        let f = new_file(&mut d, ROOT, "f");
        d.fsync(ROOT).unwrap();
        d.write(f, 0, 0, b"0123456789", 0).unwrap();
        d.fsync(f).unwrap();
        d.set_attr(f, size(3)).unwrap();
        d.cut(None);
        assert_eq!(contents(&d, f), b"0123456789");
        d.set_attr(f, size(3)).unwrap();
        d.fsync(f).unwrap();
        d.set_attr(f, size(8)).unwrap();
        d.cut(None);
        assert_eq!(contents(&d, f), b"012");
    }

    #[test]
    fn new_directory_needs_its_parent_synced_and_its_own_entries_too() {
        let mut d = Disk::new();
        let sub = d
            .create(ROOT, name("sub"), Kind::Dir, 0o755, 0, 0)
            .unwrap()
            .ino;
        d.fsync(ROOT).unwrap();
        let f = new_file(&mut d, sub, "f");
        d.fsync(f).unwrap();
        d.cut(None);
        assert!(d.lookup(ROOT, name("sub")).is_ok());
        assert!(d.lookup(sub, name("f")).is_err());
    }

    #[test]
    fn rename_rules() {
        let mut d = Disk::new();
        new_file(&mut d, ROOT, "a");
        new_file(&mut d, ROOT, "b");
        d.create(ROOT, name("dir"), Kind::Dir, 0o755, 0, 0).unwrap();
        let r =
            |d: &mut Disk, a: &str, b: &str, flags| d.rename(ROOT, name(a), ROOT, name(b), flags);
        assert_eq!(
            r(&mut d, "a", "b", libc::RENAME_NOREPLACE),
            Err(libc::EEXIST)
        );
        assert_eq!(r(&mut d, "a", "dir", 0), Err(libc::EISDIR));
        assert_eq!(r(&mut d, "dir", "a", 0), Err(libc::ENOTDIR));
        assert_eq!(r(&mut d, "x", "a", 0), Err(libc::ENOENT));
        let b = d.lookup(ROOT, name("b")).unwrap().ino;
        r(&mut d, "a", "b", 0).unwrap();
        assert_eq!(
            d.attr(b).unwrap().nlink,
            0,
            "the replaced file lost its name"
        );
        assert!(d.lookup(ROOT, name("a")).is_err());
    }
}
