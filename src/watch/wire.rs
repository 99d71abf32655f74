//! [`WatchOut`]: a WatchResponse as the hub hands it to a stream.
//!
//! Every watcher of a group gets the same events of an applied batch. They
//! are framed once per group and batch (each event as the bytes of a
//! `repeated Event events = 11` entry: tag, length, encoded event) into one
//! shared buffer; each watcher's response is its own small head (header,
//! watch id, flags) followed by such buffers (a watcher catching up gets
//! those of several batches), which is exactly how a `WatchResponse` with
//! those events encodes. Per watcher that is one reference count per batch,
//! not one per event, and one copy into the stream.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::encoding::{DecodeContext, WireType};
use prost::{DecodeError, Message};

use crate::proto::metastorepb::WatchResponseWire;

/// The tag of `WatchResponse.events` (field 11, length-delimited).
const EVENTS_TAG: u8 = (11 << 3) | 2;

/// One WatchResponse on its way out.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WatchOut {
    /// Every field but the framed events (its own `events` go first).
    pub resp: WatchResponseWire,
    /// More events, already framed as field 11 entries (see [`frame`]).
    pub framed: Vec<Bytes>,
}

impl From<WatchResponseWire> for WatchOut {
    fn from(resp: WatchResponseWire) -> WatchOut {
        WatchOut {
            resp,
            framed: Vec::new(),
        }
    }
}

impl WatchOut {
    /// Whether it carries any event.
    pub fn has_events(&self) -> bool {
        !self.resp.events.is_empty() || !self.framed.is_empty()
    }

    /// The encoded events, in order (zero-copy slices of the shared frame).
    pub fn events(&self) -> impl Iterator<Item = Bytes> + '_ {
        let framed = self.framed.iter().flat_map(|f| {
            let mut rest = f.clone();
            std::iter::from_fn(move || unframe_one(&mut rest))
        });
        self.resp.events.iter().cloned().chain(framed)
    }
}

/// Frames encoded events as the `events` entries of a WatchResponse.
pub fn frame<'a>(events: impl IntoIterator<Item = &'a Bytes>) -> Bytes {
    let events: Vec<&Bytes> = events.into_iter().collect();
    let len: usize = events
        .iter()
        .map(|e| 1 + prost::encoding::encoded_len_varint(e.len() as u64) + e.len())
        .sum();
    let mut buf = BytesMut::with_capacity(len);
    for e in events {
        buf.put_u8(EVENTS_TAG);
        prost::encoding::encode_varint(e.len() as u64, &mut buf);
        buf.put_slice(e);
    }
    buf.freeze()
}

/// Takes the next framed event off `rest` (None at the end; a frame this
/// module did not write ends it too).
fn unframe_one(rest: &mut Bytes) -> Option<Bytes> {
    if rest.is_empty() || rest[0] != EVENTS_TAG {
        return None;
    }
    rest.advance(1);
    let len = prost::encoding::decode_varint(rest).ok()? as usize;
    if len > rest.len() {
        return None;
    }
    Some(rest.split_to(len))
}

impl Message for WatchOut {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        self.resp.encode_raw(buf);
        for f in &self.framed {
            buf.put_slice(f);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        self.resp.merge_field(tag, wire_type, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.resp.encoded_len() + self.framed.iter().map(Bytes::len).sum::<usize>()
    }

    fn clear(&mut self) {
        self.resp.clear();
        self.framed.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::etcdserverpb::{ResponseHeader, WatchResponse};
    use crate::proto::mvccpb::{Event, KeyValue};

    fn event(key: &str, rev: i64, value_len: usize) -> Bytes {
        Bytes::from(
            Event {
                r#type: 0,
                kv: Some(KeyValue {
                    key: key.as_bytes().to_vec(),
                    mod_revision: rev,
                    create_revision: rev,
                    version: 1,
                    value: vec![b'v'; value_len].into(),
                    lease: 0,
                }),
                prev_kv: None,
            }
            .encode_to_vec(),
        )
    }

    #[test]
    fn a_framed_response_encodes_as_a_watch_response_with_those_events() {
        // Lengths around the one-byte varint limit, and an empty event.
        let evs = [
            event("a", 5, 3),
            event("b", 6, 200),
            Bytes::new(),
            event("c", 7, 20_000),
        ];
        let head = WatchResponseWire {
            header: Some(ResponseHeader {
                cluster_id: 1,
                member_id: 2,
                revision: 7,
                raft_term: 3,
            }),
            watch_id: 42,
            fragment: true,
            events: vec![event("z", 4, 1)],
            ..Default::default()
        };
        // Two frames, as a watcher catching up over two batches gets them.
        let out = WatchOut {
            resp: head.clone(),
            framed: vec![frame(&evs[..2]), frame(&evs[2..])],
        };
        let bytes = out.encode_to_vec();
        assert_eq!(bytes.len(), out.encoded_len());
        let mut all = head.clone();
        all.events.extend(evs.iter().cloned());
        assert_eq!(bytes, all.encode_to_vec(), "the same bytes as one message");
        let decoded = WatchResponse::decode(bytes.as_slice()).unwrap();
        assert_eq!(decoded.watch_id, 42);
        assert_eq!(decoded.events.len(), 5);
        assert_eq!(decoded.events[4].kv.as_ref().unwrap().value.len(), 20_000);
        let listed: Vec<Bytes> = out.events().collect();
        assert_eq!(listed, all.events);
        // Decoding a WatchOut gets every event back as its own.
        let back = WatchOut::decode(bytes.as_slice()).unwrap();
        assert_eq!(back.resp, all);
    }
}
