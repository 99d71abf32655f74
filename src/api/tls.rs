//! The client port over TLS, and who the client is.
//!
//! Each `https://` listen client URL gets a [`TlsListener`]: TCP, then the
//! TLS handshake (several at once, see [`crate::tls::TlsIncoming`]), then
//! the `:authority` fix of [`super::authority`] on the decrypted bytes, then
//! hyper (gRPC, the /v3 gateway, /metrics, /health, as on a plain port).
//!
//! Every request, on TLS and plain ports alike, carries a [`ClientIdentity`]
//! in its extensions (axum's `ConnectInfo`): the remote address and, when
//! the client presented a certificate the server verified
//! (`--client-cert-auth`), its common name. etcd takes that name as the user
//! when auth is on; [`client_common_name`] reads it.

use std::io;
use std::net::SocketAddr;

use axum::extract::connect_info::Connected;
use axum::extract::ConnectInfo;
use axum::serve::IncomingStream;

use super::authority::{self, FixAuthority};
use crate::tls::{peer_common_name, ServerTls, TlsIncoming};

/// Who is on the other end of a client connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    /// The client's address.
    pub remote: SocketAddr,
    /// The verified client certificate's subject common name (TLS with
    /// client certificate authentication only).
    pub common_name: Option<String>,
}

/// The verified client certificate's common name of the connection a
/// request came on (None: plain port, no client certificate, or no CN).
/// A tonic handler passes `request.extensions()` (tonic's are http's).
pub fn client_common_name(ext: &http::Extensions) -> Option<String> {
    ext.get::<ConnectInfo<ClientIdentity>>()
        .and_then(|c| c.0.common_name.clone())
}

/// Test-only routes (`--experimental-fault-injection`): `GET
/// /debug/client-cn` answers [`client_common_name`] of its own request, so
/// tests see what handlers see.
pub fn debug_router() -> axum::Router {
    axum::Router::new().route(
        "/debug/client-cn",
        axum::routing::get(|ext: http::Extensions| async move {
            client_common_name(&ext).unwrap_or_default()
        }),
    )
}

/// A TLS client listener (see the module note).
pub struct TlsListener(pub TlsIncoming);

impl TlsListener {
    /// Serves TLS with `tls` on `tcp`.
    pub fn new(tcp: tokio::net::TcpListener, tls: ServerTls) -> TlsListener {
        TlsListener(TlsIncoming::new(tcp, tls))
    }
}

/// A client connection over TLS.
pub type TlsConn = FixAuthority<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>;

impl axum::serve::Listener for TlsListener {
    type Io = TlsConn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (tls, addr) = self.0.accept().await;
        (FixAuthority::new(tls), addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

impl Connected<IncomingStream<'_, TlsListener>> for ClientIdentity {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        ClientIdentity {
            remote: *stream.remote_addr(),
            common_name: peer_common_name(stream.io().get_ref()),
        }
    }
}

impl Connected<IncomingStream<'_, authority::Listener>> for ClientIdentity {
    fn connect_info(stream: IncomingStream<'_, authority::Listener>) -> Self {
        ClientIdentity {
            remote: *stream.remote_addr(),
            common_name: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_common_name_is_read_from_the_connect_info() {
        let mut ext = http::Extensions::new();
        assert_eq!(client_common_name(&ext), None);
        ext.insert(ConnectInfo(ClientIdentity {
            remote: "127.0.0.1:1".parse().unwrap(),
            common_name: Some("alice".into()),
        }));
        assert_eq!(client_common_name(&ext).as_deref(), Some("alice"));
        let req = tonic::Request::from_http(http::Request::new(()));
        assert_eq!(client_common_name(req.extensions()), None);
    }
}
