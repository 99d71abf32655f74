//! The gRPC codec of every service, generated or written by hand: prost's
//! messages, encoded into a buffer sized for the whole message first.
//!
//! tonic's own prost codec lets the encode grow its buffer as it writes: a
//! 600 KB LIST page reallocated and copied its bytes about ten times on the
//! way, and a 29 MiB range held the old and the new buffer at once while it
//! doubled. Here one reservation of the encoded length comes first, so
//! each response is written once, into memory of its own size.

use std::marker::PhantomData;

use bytes::BufMut;
use prost::Message;
use tonic::codec::{BufferSettings, Codec, EncodeBuf, Encoder};
use tonic::Status;
use tonic_prost::ProstDecoder;

/// A [`Codec`] for prost messages whose encoder reserves the message's
/// encoded length before it writes.
#[derive(Debug, Clone, Copy)]
pub struct PresizedCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for PresizedCodec<T, U> {
    fn default() -> Self {
        PresizedCodec(PhantomData)
    }
}

impl<T, U> Codec for PresizedCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = PresizedEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        PresizedEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(BufferSettings::default())
    }
}

/// Encodes `T` into room reserved for all of it.
#[derive(Debug, Clone, Copy)]
pub struct PresizedEncoder<T>(PhantomData<T>);

impl<T: Message> Encoder for PresizedEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        encode_presized(&item, buf);
        Ok(())
    }
}

/// A buffer that can make room ahead of the writes.
pub trait Room: BufMut {
    /// Reserves room for at least `additional` more bytes.
    fn make_room(&mut self, additional: usize);
}

impl Room for EncodeBuf<'_> {
    fn make_room(&mut self, additional: usize) {
        self.reserve(additional);
    }
}

impl Room for bytes::BytesMut {
    fn make_room(&mut self, additional: usize) {
        self.reserve(additional);
    }
}

/// Encodes `item` into `buf` after one reservation of its encoded length.
pub fn encode_presized<T: Message, B: Room>(item: &T, buf: &mut B) {
    buf.make_room(item.encoded_len());
    // The room is there: `encode_raw` is `encode` without its length check,
    // which would compute the whole length a second time.
    item.encode_raw(buf);
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;

    use super::*;
    use crate::proto::etcdserverpb::{RangeResponse, ResponseHeader};
    use crate::proto::mvccpb::KeyValue;

    #[test]
    fn a_response_is_encoded_as_prost_does_into_one_allocation() {
        let resp = RangeResponse {
            header: Some(ResponseHeader {
                revision: 7,
                ..Default::default()
            }),
            kvs: (0..2000)
                .map(|i| KeyValue {
                    key: format!("/registry/pods/ns/p{i}").into_bytes(),
                    value: vec![i as u8; 300 + i % 700].into(),
                    mod_revision: i as i64,
                    ..Default::default()
                })
                .collect(),
            count: 2000,
            more: false,
        };
        let want = resp.encode_to_vec();
        let mut buf = BytesMut::new();
        encode_presized(&resp, &mut buf);
        assert_eq!(&buf[..], &want[..]);
        // Reserved once, for exactly the message: no doubling on the way.
        assert_eq!(buf.capacity(), want.len());
    }
}
