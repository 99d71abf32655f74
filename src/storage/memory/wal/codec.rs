//! Byte layout of a segment: the 8-byte magic and the record frame.
//!
//! Pure functions over byte slices, no I/O, so every path that touches file
//! content can be exercised with arbitrary bytes in unit tests. Decoding never
//! panics and never trusts a length field before checking it against the
//! buffer it came from.
//!
//! Frame layout (all integers little-endian):
//!
//! ```text
//! +-----------+-----------+----------------+------+---------------+
//! | len: u32  | crc: u32  | index_hint:u64 | kind | payload ...   |
//! +-----------+-----------+----------------+------+---------------+
//!   len = 1 + payload.len()    (the kind byte plus the payload)
//!   crc = crc32c(index_hint ++ kind ++ payload), i.e. every byte after the crc
//! ```

use std::fmt;

/// Format version written into (and demanded from) byte 7 of the magic.
pub(super) const FORMAT_VERSION: u8 = 1;

/// First bytes of every segment; the last byte is the format version.
pub(super) const MAGIC: [u8; 8] = [b'M', b'S', b'W', b'A', b'L', 0, 0, FORMAT_VERSION];

/// Bytes in the magic.
pub(super) const MAGIC_LEN: usize = MAGIC.len();

/// Bytes before the kind byte: len + crc + index_hint.
pub(super) const FRAME_HEADER_LEN: usize = 16;

/// Largest accepted `len` field (kind + payload). Bounds what a damaged length
/// field can make us believe, and what one record may cost in memory on replay.
pub(super) const MAX_BODY_LEN: u32 = 256 << 20;

/// A record decoded in place from a segment buffer.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Frame<'a> {
    pub kind: u8,
    pub payload: &'a [u8],
    pub index_hint: u64,
    /// Bytes the whole frame occupies (header + body).
    pub frame_len: usize,
}

/// Why the bytes at some position are not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum FrameError {
    /// Fewer than [`FRAME_HEADER_LEN`] bytes remain.
    ShortHeader { available: usize },
    /// `len` is 0; a real frame always carries at least the kind byte.
    EmptyBody,
    /// `len` exceeds [`MAX_BODY_LEN`].
    TooLong { body_len: u32 },
    /// The header is complete but the body runs past the end of the buffer.
    ShortBody { frame_len: u64, available: usize },
    /// The frame is complete but its checksum does not match.
    CrcMismatch {
        stored: u32,
        computed: u32,
        frame_len: usize,
    },
}

impl FrameError {
    /// Whether the bytes this frame claims (or the part of the header that
    /// could be read) extend to or past the end of `available` bytes. That is
    /// the signature of a write cut short by a crash, as opposed to damage to
    /// a record that was fully written and then followed by more data.
    /// Bytes the broken frame claims to span, when its header says.
    pub(super) fn extent(&self) -> Option<usize> {
        match *self {
            FrameError::ShortHeader { .. } | FrameError::ShortBody { .. } => None,
            FrameError::EmptyBody => Some(FRAME_HEADER_LEN),
            FrameError::TooLong { body_len } => usize::try_from(body_len)
                .ok()
                .map(|b| b.saturating_add(FRAME_HEADER_LEN)),
            FrameError::CrcMismatch { frame_len, .. } => Some(frame_len),
        }
    }

    pub(super) fn reaches_end(&self, available: usize) -> bool {
        let available = available as u64;
        match *self {
            FrameError::ShortHeader { .. } | FrameError::ShortBody { .. } => true,
            FrameError::EmptyBody => FRAME_HEADER_LEN as u64 >= available,
            FrameError::TooLong { body_len } => {
                FRAME_HEADER_LEN as u64 + u64::from(body_len) >= available
            }
            FrameError::CrcMismatch { frame_len, .. } => frame_len as u64 >= available,
        }
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            FrameError::ShortHeader { available } => write!(
                f,
                "record header truncated ({available} of {FRAME_HEADER_LEN} bytes present)"
            ),
            FrameError::EmptyBody => f.write_str("record length is 0 (no kind byte)"),
            FrameError::TooLong { body_len } => write!(
                f,
                "record length {body_len} exceeds the maximum of {MAX_BODY_LEN}"
            ),
            FrameError::ShortBody {
                frame_len,
                available,
            } => write!(
                f,
                "record truncated (frame needs {frame_len} bytes, {available} present)"
            ),
            FrameError::CrcMismatch {
                stored, computed, ..
            } => write!(
                f,
                "crc mismatch (stored {stored:#010x}, computed {computed:#010x})"
            ),
        }
    }
}

/// Appends one frame to `buf`. Only extends the buffer (one reservation), so a
/// reused buffer makes the hot path allocation-free once warmed up.
///
/// The caller must have checked `payload.len() < MAX_BODY_LEN`; a longer
/// payload would be written with a length the decoder rejects.
pub(super) fn encode(buf: &mut Vec<u8>, kind: u8, payload: &[u8], index_hint: u64) {
    debug_assert!(fits(payload.len()));
    let body_len = (payload.len() + 1) as u32;
    let hint = index_hint.to_le_bytes();
    let crc = crc32c::crc32c_append(
        crc32c::crc32c_append(crc32c::crc32c(&hint), &[kind]),
        payload,
    );
    buf.reserve(FRAME_HEADER_LEN + payload.len() + 1);
    buf.extend_from_slice(&body_len.to_le_bytes());
    buf.extend_from_slice(&crc.to_le_bytes());
    buf.extend_from_slice(&hint);
    buf.push(kind);
    buf.extend_from_slice(payload);
}

/// Whether a payload of `payload_len` bytes can be framed.
pub(super) fn fits(payload_len: usize) -> bool {
    payload_len < MAX_BODY_LEN as usize
}

/// Bytes a frame for `payload_len` bytes of payload occupies.
#[cfg(test)]
pub(super) fn frame_len(payload_len: usize) -> usize {
    FRAME_HEADER_LEN + 1 + payload_len
}

/// Decodes the frame at the start of `buf` (which may hold more frames after it).
pub(super) fn decode(buf: &[u8]) -> Result<Frame<'_>, FrameError> {
    let Some((header, rest)) = buf.split_first_chunk::<FRAME_HEADER_LEN>() else {
        return Err(FrameError::ShortHeader {
            available: buf.len(),
        });
    };
    let body_len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let stored = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    let hint_bytes = [
        header[8], header[9], header[10], header[11], header[12], header[13], header[14],
        header[15],
    ];
    if body_len == 0 {
        return Err(FrameError::EmptyBody);
    }
    if body_len > MAX_BODY_LEN {
        return Err(FrameError::TooLong { body_len });
    }
    let Some(body) = rest.get(..body_len as usize) else {
        return Err(FrameError::ShortBody {
            frame_len: FRAME_HEADER_LEN as u64 + u64::from(body_len),
            available: buf.len(),
        });
    };
    let frame_len = FRAME_HEADER_LEN + body.len();
    let computed = crc32c::crc32c_append(crc32c::crc32c(&hint_bytes), body);
    if computed != stored {
        return Err(FrameError::CrcMismatch {
            stored,
            computed,
            frame_len,
        });
    }
    let Some((&kind, payload)) = body.split_first() else {
        // Unreachable given body_len >= 1, but kept total rather than indexed.
        return Err(FrameError::EmptyBody);
    };
    Ok(Frame {
        kind,
        payload,
        index_hint: u64::from_le_bytes(hint_bytes),
        frame_len,
    })
}

/// Result of comparing the start of a file with [`MAGIC`].
#[derive(Debug, PartialEq, Eq)]
pub(super) enum MagicCheck {
    /// Full, current magic present.
    Valid,
    /// The file is shorter than the magic and what is there matches it
    /// (including the empty file): a segment whose creation was cut short.
    Incomplete,
    /// Our magic with another format version.
    WrongVersion(u8),
    /// Not a segment of ours.
    Foreign,
}

/// Classifies the first bytes of a segment file.
pub(super) fn check_magic(data: &[u8]) -> MagicCheck {
    match data.first_chunk::<MAGIC_LEN>() {
        Some(head) if *head == MAGIC => MagicCheck::Valid,
        Some(head) if head[..MAGIC_LEN - 1] == MAGIC[..MAGIC_LEN - 1] => {
            MagicCheck::WrongVersion(head[MAGIC_LEN - 1])
        }
        Some(_) => MagicCheck::Foreign,
        None if MAGIC.starts_with(data) => MagicCheck::Incomplete,
        None => MagicCheck::Foreign,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, payload: &[u8], hint: u64) -> Vec<u8> {
        let mut buf = Vec::new();
        encode(&mut buf, kind, payload, hint);
        buf
    }

    #[test]
    fn roundtrip_and_layout() {
        let buf = frame(7, b"hello", 42);
        assert_eq!(buf.len(), frame_len(5));
        assert_eq!(&buf[..4], &6u32.to_le_bytes());
        assert_eq!(&buf[8..16], &42u64.to_le_bytes());
        assert_eq!(buf[16], 7);
        let f = decode(&buf).unwrap();
        assert_eq!(
            f,
            Frame {
                kind: 7,
                payload: b"hello",
                index_hint: 42,
                frame_len: buf.len()
            }
        );
    }

    #[test]
    fn empty_payload_and_concatenation() {
        let mut buf = frame(1, b"", 0);
        encode(&mut buf, 2, b"xy", u64::MAX);
        let a = decode(&buf).unwrap();
        assert_eq!((a.kind, a.payload, a.frame_len), (1, &b""[..], 17));
        let b = decode(&buf[a.frame_len..]).unwrap();
        assert_eq!((b.kind, b.payload, b.index_hint), (2, &b"xy"[..], u64::MAX));
    }

    #[test]
    fn crc_covers_hint_kind_and_payload() {
        let good = frame(3, b"payload", 9);
        for i in 8..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x40;
            match decode(&bad) {
                Err(e @ FrameError::CrcMismatch { .. }) => assert!(e.reaches_end(bad.len())),
                other => panic!("byte {i}: {other:?}"),
            }
        }
    }

    #[test]
    fn truncation_is_reported_as_short() {
        let good = frame(3, b"payload", 9);
        for cut in 0..good.len() {
            let err = decode(&good[..cut]).unwrap_err();
            assert!(
                matches!(
                    err,
                    FrameError::ShortHeader { .. } | FrameError::ShortBody { .. }
                ),
                "cut {cut}: {err:?}"
            );
            assert!(err.reaches_end(cut));
        }
    }

    #[test]
    fn bad_lengths() {
        let mut zero = frame(1, b"abc", 0);
        zero[..4].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(decode(&zero), Err(FrameError::EmptyBody));
        assert!(!FrameError::EmptyBody.reaches_end(zero.len()));

        let mut huge = frame(1, b"abc", 0);
        huge[..4].copy_from_slice(&(MAX_BODY_LEN + 1).to_le_bytes());
        let err = decode(&huge).unwrap_err();
        assert_eq!(
            err,
            FrameError::TooLong {
                body_len: MAX_BODY_LEN + 1
            }
        );
        assert!(err.to_string().contains("exceeds the maximum"));
    }

    #[test]
    fn crc_mismatch_with_bytes_after_does_not_reach_end() {
        let mut buf = frame(1, b"abc", 0);
        buf[17] ^= 1;
        let len = buf.len();
        buf.extend(frame(2, b"def", 0));
        let err = decode(&buf).unwrap_err();
        assert!(!err.reaches_end(buf.len()));
        assert!(err.reaches_end(len));
        assert!(err.to_string().starts_with("crc mismatch"));
    }

    #[test]
    fn fits_limit() {
        assert!(fits(0));
        assert!(fits(MAX_BODY_LEN as usize - 1));
        assert!(!fits(MAX_BODY_LEN as usize));
    }

    #[test]
    fn magic_classification() {
        assert_eq!(check_magic(&MAGIC), MagicCheck::Valid);
        let mut with_data = MAGIC.to_vec();
        with_data.extend_from_slice(b"records");
        assert_eq!(check_magic(&with_data), MagicCheck::Valid);
        assert_eq!(check_magic(b""), MagicCheck::Incomplete);
        assert_eq!(check_magic(&MAGIC[..5]), MagicCheck::Incomplete);
        assert_eq!(check_magic(b"MSX"), MagicCheck::Foreign);
        assert_eq!(
            check_magic(b"\x7fELF\x02\x01\x01\x00rest"),
            MagicCheck::Foreign
        );
        let mut v2 = MAGIC;
        v2[7] = 2;
        assert_eq!(check_magic(&v2), MagicCheck::WrongVersion(2));
    }

    /// Arbitrary bytes must never panic the decoder or make it claim a frame
    /// larger than the buffer.
    #[test]
    fn decode_never_panics_on_garbage() {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let len = (next() % 64) as usize;
            let mut buf: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            // Make small plausible lengths common so the crc path is reached.
            if len >= 4 && next() % 2 == 0 {
                let l = (next() % 48) as u32;
                buf[..4].copy_from_slice(&l.to_le_bytes());
            }
            if let Ok(f) = decode(&buf) {
                assert!(f.frame_len <= buf.len());
            }
        }
    }
}
