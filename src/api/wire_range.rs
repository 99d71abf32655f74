//! `KV.Range` over gRPC, answered with the bytes the store's slices were
//! encoded into, without tonic's codec.
//!
//! tonic encodes a unary answer into one buffer: a 29 MiB Range was held as
//! its structs and as that buffer at once. Here the ApplyActor reads the
//! range in slices and encodes each into the wire's bytes
//! ([`ReadRequest::RangeWire`]); this handler frames them as one gRPC
//! message (its 5-byte prefix needs only their total length) and hands the
//! chunks to HTTP/2 one by one, each freed once written. The answer's bytes
//! are the RangeResponse prost would encode, byte for byte.
//!
//! Everything else is as tonic does it for the generated service: the
//! request's size limit and its messages, the errors (a trailers-only
//! response), the metadata and connection info the caller is taken from.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::response::Response;
use futures::StreamExt;
use http::{HeaderMap, HeaderValue};
use http_body::Frame;
use prost::Message;
use tonic::Status;

use super::Backend;
use crate::proto::etcdserverpb::{RangeRequest, ResponseHeader};
use crate::state_machine::kv::sliced::WireRange;

/// The gRPC path served here.
pub const PATH: &str = "/etcdserverpb.KV/Range";

/// The route of `KV.Range`: requests up to `max_request` encoded bytes.
pub fn route(backend: Backend, max_request: usize) -> axum::routing::MethodRouter {
    axum::routing::post(move |req: Request| {
        let backend = backend.clone();
        async move {
            match range(&backend, max_request, req).await {
                Ok(resp) => resp,
                Err(status) => status.into_http(),
            }
        }
    })
}

#[tracing::instrument(level = "debug", skip_all)]
async fn range(backend: &Backend, max_request: usize, req: Request) -> Result<Response, Status> {
    let (parts, body) = req.into_parts();
    let message = read_message(body, &parts.headers, max_request).await?;
    let r = RangeRequest::decode(message).map_err(|e| Status::internal(e.to_string()))?;
    let request = tonic::Request::from_parts(
        tonic::metadata::MetadataMap::from_headers(parts.headers),
        parts.extensions,
        (),
    );
    let caller = backend.caller_of(&request)?;
    let wire = super::kv::read_range(backend, &caller, r).await?;
    let header = backend.header(wire.revision).unwrap_or_default();
    framed(wire, &header)
}

/// The one message of a unary request's body, as tonic reads it.
async fn read_message(body: Body, headers: &HeaderMap, max: usize) -> Result<Bytes, Status> {
    let mut stream = body.into_data_stream();
    let mut buf = Vec::new();
    let mut want = None;
    loop {
        if want.is_none() && buf.len() >= 5 {
            check_flag(buf[0], headers)?;
            let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
            if len > max {
                return Err(Status::resource_exhausted(format!(
                    "Error, decoded message length too large: found {len} bytes, the limit is: {max} bytes"
                )));
            }
            want = Some(5 + len);
        }
        if want.is_some_and(|w| buf.len() >= w) {
            break;
        }
        match stream.next().await {
            Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
            Some(Err(e)) => return Err(Status::internal(format!("reading the request: {e}"))),
            None => break,
        }
    }
    match want {
        Some(w) if buf.len() >= w => Ok(Bytes::from(buf).slice(5..w)),
        _ if buf.is_empty() => Err(Status::internal("Missing request message.")),
        _ => Err(Status::internal("the request ended inside its message")),
    }
}

/// The compressed-flag of a request message: the server accepts none.
fn check_flag(flag: u8, headers: &HeaderMap) -> Result<(), Status> {
    match flag {
        0 => Ok(()),
        1 => Err(match headers.get("grpc-encoding").and_then(|v| v.to_str().ok()) {
            Some(enc) => Status::unimplemented(format!(
                "Content is compressed with `{enc}` which isn't supported"
            )),
            None => Status::internal(
                "protocol error: received message with compressed-flag but no grpc-encoding was specified",
            ),
        }),
        f => Err(Status::internal(format!(
            "protocol error: received message with invalid compression flag: {f} (valid flags are 0 and 1), while sending request"
        ))),
    }
}

/// The answer: `wire` with `header` as one gRPC message, then `grpc-status: 0`.
fn framed(wire: WireRange, header: &ResponseHeader) -> Result<Response, Status> {
    let (before, after) = wire.around(header);
    let len = before.len() + wire.kvs_len() + after.len();
    let len = u32::try_from(len).map_err(|_| {
        Status::resource_exhausted(format!(
            "grpc: trying to send message larger than max ({len} vs. {})",
            u32::MAX
        ))
    })?;
    let mut first = Vec::with_capacity(5 + before.len());
    first.push(0);
    first.extend_from_slice(&len.to_be_bytes());
    first.extend_from_slice(&before);
    let mut chunks = VecDeque::with_capacity(wire.kvs.len() + 2);
    chunks.push_back(Bytes::from(first));
    chunks.extend(wire.kvs);
    if !after.is_empty() {
        chunks.push_back(after);
    }
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let body = Chunks {
        chunks,
        trailers: Some(trailers),
    };
    Response::builder()
        .status(http::StatusCode::OK)
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .body(Body::new(body))
        .map_err(|e| Status::internal(e.to_string()))
}

/// A body of ready chunks and then trailers: each chunk leaves memory once
/// HTTP/2 has taken it.
struct Chunks {
    chunks: VecDeque<Bytes>,
    trailers: Option<HeaderMap>,
}

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(c) = self.chunks.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(c))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty() && self.trailers.is_none()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.chunks.iter().map(|c| c.len() as u64).sum())
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;
    use crate::proto::etcdserverpb::RangeResponse;
    use crate::proto::mvccpb::KeyValue;

    #[tokio::test]
    async fn the_framed_answer_is_one_grpc_message_of_the_range_response() {
        let kvs: Vec<KeyValue> = (0..50)
            .map(|i| KeyValue {
                key: format!("k{i}").into_bytes(),
                value: vec![i as u8; i * 10].into(),
                mod_revision: 3 + i as i64,
                ..Default::default()
            })
            .collect();
        let header = ResponseHeader {
            cluster_id: 9,
            member_id: 8,
            revision: 77,
            raft_term: 2,
        };
        let want = RangeResponse {
            header: Some(header),
            kvs: kvs.clone(),
            more: true,
            count: 120,
        };
        // Chunks as the slices make them: several kvs each.
        let chunk = |kvs: &[KeyValue]| {
            let r = RangeResponse {
                kvs: kvs.to_vec(),
                ..Default::default()
            };
            Bytes::from(r.encode_to_vec())
        };
        let wire = WireRange {
            revision: 77,
            kvs: vec![chunk(&kvs[..7]), chunk(&kvs[7..8]), chunk(&kvs[8..])],
            more: true,
            count: 120,
        };
        let resp = framed(wire, &header).unwrap();
        assert_eq!(resp.headers()["content-type"], "application/grpc");
        let collected = resp.into_body().collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
        let bytes = collected.to_bytes();
        let body = want.encode_to_vec();
        assert_eq!(bytes[0], 0);
        assert_eq!(&bytes[1..5], &(body.len() as u32).to_be_bytes());
        assert_eq!(&bytes[5..], &body[..]);
    }

    #[tokio::test]
    async fn a_request_is_read_as_tonic_reads_it() {
        let msg = RangeRequest {
            key: b"abc".to_vec(),
            limit: 3,
            ..Default::default()
        }
        .encode_to_vec();
        let mut framed = vec![0];
        framed.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        framed.extend_from_slice(&msg);
        let h = HeaderMap::new();
        // Any split of the body into frames.
        let parts: Vec<Result<Bytes, std::io::Error>> = framed
            .chunks(3)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let body = Body::from_stream(futures::stream::iter(parts));
        let got = read_message(body, &h, 100).await.unwrap();
        assert_eq!(&got[..], &msg[..]);
        // Over the limit: tonic's words, which the size layer turns into etcd's.
        let err = read_message(Body::from(framed.clone()), &h, 4)
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(super::super::tonic_too_large(err.message()).is_some());
        // Compressed, empty, cut short.
        let mut gz = framed.clone();
        gz[0] = 1;
        let err = read_message(Body::from(gz), &h, 100).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Internal);
        let err = read_message(Body::empty(), &h, 100).await.unwrap_err();
        assert_eq!(err.message(), "Missing request message.");
        let err = read_message(Body::from(framed[..framed.len() - 1].to_vec()), &h, 100)
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Internal);
    }
}
