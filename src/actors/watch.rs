//! The WatchSession actor: one per Watch stream (the design's client-session
//! actors). It reads what the client sends, one request at a time, and turns
//! each into a typed message for the ApplyActor, whose watch hub owns the
//! watchers and writes every response (so a watcher's `created` always
//! precedes its events). Waiting for each message to be taken is the
//! backpressure: a client flooding requests is read no faster than they are
//! handled. A stream that fails ends its watchers at once; one the client
//! only half-closes keeps them (as in etcd) until the response stream goes
//! away, which the hub notices by itself.

use actix::prelude::*;

use super::apply::ApplyActor;
use super::messages::{WatchCancel, WatchClose, WatchCreate, WatchProgress};
use crate::proto::etcdserverpb::{watch_request::RequestUnion, WatchRequest};
use crate::state_machine::auth::Caller;
use crate::watch::StreamId;

/// One Watch stream's requests.
pub struct WatchSession {
    apply: Addr<ApplyActor>,
    stream: StreamId,
    failed: bool,
    /// Who opened the stream (its creates are checked as this user).
    caller: Caller,
}

impl WatchSession {
    /// A session for `stream`, whose watchers live in `apply`'s hub.
    pub fn new(apply: Addr<ApplyActor>, stream: StreamId, caller: Caller) -> WatchSession {
        WatchSession {
            apply,
            stream,
            failed: false,
            caller,
        }
    }
}

impl Actor for WatchSession {
    type Context = Context<Self>;

    fn stopped(&mut self, _: &mut Self::Context) {
        if self.failed {
            self.apply.do_send(WatchClose {
                stream: self.stream,
            });
        }
    }
}

impl StreamHandler<Result<WatchRequest, tonic::Status>> for WatchSession {
    fn handle(&mut self, item: Result<WatchRequest, tonic::Status>, ctx: &mut Self::Context) {
        let req = match item {
            Ok(r) => r,
            Err(status) => {
                tracing::debug!(%status, "watch stream ended with an error");
                self.failed = true;
                ctx.stop();
                return;
            }
        };
        let stream = self.stream;
        let apply = self.apply.clone();
        let caller = self.caller.clone();
        // One request at a time: the next is read once this one is taken.
        let sent = async move {
            let _ = match req.request_union {
                Some(RequestUnion::CreateRequest(request)) => {
                    apply
                        .send(WatchCreate {
                            stream,
                            request,
                            caller,
                        })
                        .await
                }
                Some(RequestUnion::CancelRequest(c)) => {
                    apply
                        .send(WatchCancel {
                            stream,
                            watch_id: c.watch_id,
                        })
                        .await
                }
                Some(RequestUnion::ProgressRequest(_)) => {
                    apply.send(WatchProgress { stream }).await
                }
                None => Ok(()),
            };
        };
        ctx.wait(sent.into_actor(self));
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        ctx.stop();
    }
}
