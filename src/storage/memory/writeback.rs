//! Paced write-back of files written in bulk off the hot threads (snapshot
//! files, WAL spares), so the WAL's own fdatasyncs on the same disk never
//! queue behind hundreds of MiB of dirty pages. Only a pace: durability
//! still comes from the fsync that follows.

use std::fs::File;
use std::io;

/// Asks the kernel to start writing `len` bytes of `file` from `offset` to
/// the disk, without waiting. A `len` of 0 does nothing.
pub fn start(file: &File, offset: u64, len: u64) -> io::Result<()> {
    sync_range(file, offset, len, false)
}

/// Writes `len` bytes of `file` from `offset` to the disk and waits for
/// them: data pages only, not the inode, and no journal commit (which every
/// fdatasync on the filesystem would wait for). A `len` of 0 does nothing.
pub fn wait(file: &File, offset: u64, len: u64) -> io::Result<()> {
    sync_range(file, offset, len, true)
}

#[cfg(target_os = "linux")]
fn sync_range(file: &File, offset: u64, len: u64, wait: bool) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // A length of 0 would mean "to the end of the file".
    if len == 0 {
        return Ok(());
    }
    let (Ok(offset), Ok(len)) = (
        libc::off64_t::try_from(offset),
        libc::off64_t::try_from(len),
    ) else {
        return Ok(());
    };
    let flags = if wait {
        libc::SYNC_FILE_RANGE_WAIT_BEFORE
            | libc::SYNC_FILE_RANGE_WRITE
            | libc::SYNC_FILE_RANGE_WAIT_AFTER
    } else {
        libc::SYNC_FILE_RANGE_WRITE
    };
    // SAFETY: sync_file_range only reads its integer arguments; the
    // descriptor belongs to `file`, open for the whole call.
    let rc = unsafe { libc::sync_file_range(file.as_raw_fd(), offset, len, flags) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn sync_range(file: &File, _offset: u64, len: u64, wait: bool) -> io::Result<()> {
    if wait && len > 0 {
        file.sync_data()?;
    }
    Ok(())
}
