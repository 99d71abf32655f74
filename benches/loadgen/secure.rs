//! `--tls` and `--auth`: certificates generated at run time, TLS
//! connections, the users and roles set up before a run, and tokens.
//!
//! * `--tls`: a CA and a server certificate for 127.0.0.1 are generated
//!   (rcgen) into a temp dir that is removed when the run ends; both servers
//!   serve their client port on `https://` with them (`--cert-file`,
//!   `--key-file`), and every client connection is TLS (rustls, trusting only
//!   that CA, ALPN h2). /health and /metrics are then read from a plain
//!   `--listen-metrics-urls` port.
//! * `--auth`: before the run, on each server, user `root` (role `root`) and
//!   user `bench` (role `bench` with readwrite on every key) are created and
//!   auth is enabled; every client connection then authenticates as `bench`
//!   and sends its token in the `token` metadata of every request.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use metastore::proto::authpb::{permission, Permission};
use metastore::proto::etcdserverpb::auth_client::AuthClient;
use metastore::proto::etcdserverpb::{
    AuthEnableRequest, AuthRoleAddRequest, AuthRoleGrantPermissionRequest, AuthUserAddRequest,
    AuthUserGrantRoleRequest, AuthenticateRequest,
};
use tonic::codegen::http::Uri;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

/// The load user and its password.
pub const USER: &str = "bench";
pub const PASSWORD: &str = "bench-pw";
const ROOT_PASSWORD: &str = "root-pw";

/// Generated certificates, in a temp dir removed on drop.
pub struct Certs {
    dir: tempfile::TempDir,
    client: Arc<rustls::ClientConfig>,
}

impl Certs {
    /// A CA and a server certificate for 127.0.0.1 and localhost.
    pub fn generate() -> Result<Certs, String> {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
            KeyUsagePurpose,
        };
        let err = |e: rcgen::Error| format!("certificates: {e}");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "loadgen CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate().map_err(err)?;
        let ca = ca_params.self_signed(&ca_key).map_err(err)?;
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .map_err(err)?;
        params
            .distinguished_name
            .push(DnType::CommonName, "loadgen server");
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().map_err(err)?;
        let cert = params.signed_by(&key, &ca, &ca_key).map_err(err)?;

        let dir = tempfile::Builder::new()
            .prefix("loadgen-certs-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        let write = |name: &str, pem: String| {
            std::fs::write(dir.path().join(name), pem).map_err(|e| format!("{name}: {e}"))
        };
        write("ca.pem", ca.pem())?;
        write("server.pem", cert.pem())?;
        write("server-key.pem", key.serialize_pem())?;

        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(ca.der().clone())
            .map_err(|e| format!("CA: {e}"))?;
        // ring, as the server (deprecated only for lacking post-quantum key
        // exchange, which etcd 3.4's Go lacks too).
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS client: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Certs {
            dir,
            client: Arc::new(client),
        })
    }

    /// The servers' TLS flags (etcd's names, which MetaStore shares).
    pub fn server_flags(&self) -> Vec<String> {
        let p = |n: &str| self.dir.path().join(n).display().to_string();
        vec![
            "--cert-file".to_owned(),
            p("server.pem"),
            "--key-file".to_owned(),
            p("server-key.pem"),
        ]
    }
}

/// How clients connect: plain or TLS, with or without a token.
#[derive(Clone, Default)]
pub struct Dial {
    tls: Option<Arc<rustls::ClientConfig>>,
    /// Authenticate as `bench` on every new connection.
    pub auth: bool,
}

impl Dial {
    pub fn new(certs: Option<&Certs>, auth: bool) -> Dial {
        Dial {
            tls: certs.map(|c| c.client.clone()),
            auth,
        }
    }

    /// A channel to `endpoint` (`host:port`, any scheme prefix dropped);
    /// `tune` sets the endpoint's options.
    pub async fn channel(
        &self,
        endpoint: &str,
        tune: impl FnOnce(Endpoint) -> Endpoint,
    ) -> Result<Channel, String> {
        let addr = crate::http::host_port(endpoint).to_owned();
        // Always http:// for tonic: the connector does the TLS.
        let ep = tune(
            Endpoint::from_shared(format!("http://{addr}"))
                .map_err(|e| format!("endpoint {endpoint}: {e}"))?,
        );
        match &self.tls {
            None => ep.connect().await,
            Some(tls) => ep.connect_with_connector(TlsConnect(tls.clone())).await,
        }
        .map_err(|e| format!("connect {endpoint}: {e:?}"))
    }

    /// A channel whose requests carry a token when `--auth` is on (the
    /// connection authenticates first).
    pub async fn client_channel(
        &self,
        endpoint: &str,
        tune: impl FnOnce(Endpoint) -> Endpoint,
    ) -> Result<Authed, String> {
        let channel = self.channel(endpoint, tune).await?;
        let token = if self.auth {
            Some(authenticate(&channel, USER, PASSWORD).await?)
        } else {
            None
        };
        Ok(InterceptedService::new(channel, Token(token)))
    }
}

/// A channel that adds the `token` metadata (if any) to every request.
pub type Authed = InterceptedService<Channel, Token>;

/// Adds `token` to each request's metadata.
#[derive(Clone)]
pub struct Token(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for Token {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(t) = &self.0 {
            req.metadata_mut().insert("token", t.clone());
        }
        Ok(req)
    }
}

/// Authenticate(name, password): the token.
pub async fn authenticate(
    channel: &Channel,
    name: &str,
    password: &str,
) -> Result<MetadataValue<Ascii>, String> {
    let token = AuthClient::new(channel.clone())
        .authenticate(AuthenticateRequest {
            name: name.to_owned(),
            password: password.to_owned(),
        })
        .await
        .map_err(|e| format!("authenticate {name}: {:?}: {}", e.code(), e.message()))?
        .into_inner()
        .token;
    token
        .parse()
        .map_err(|e| format!("token {token:?} is no metadata value: {e}"))
}

/// Creates `root` (role root) and `bench` (readwrite on every key) and
/// enables auth, through `endpoint`.
pub async fn enable_auth(dial: &Dial, endpoint: &str) -> Result<(), String> {
    let channel = dial
        .channel(endpoint, |e| e.connect_timeout(Duration::from_secs(5)))
        .await?;
    let mut auth = AuthClient::new(channel);
    let fail = |what: &'static str| {
        move |e: tonic::Status| format!("{what}: {:?}: {}", e.code(), e.message())
    };
    for (name, password) in [("root", ROOT_PASSWORD), (USER, PASSWORD)] {
        auth.user_add(AuthUserAddRequest {
            name: name.to_owned(),
            password: password.to_owned(),
            ..Default::default()
        })
        .await
        .map_err(fail("user add"))?;
    }
    auth.user_grant_role(AuthUserGrantRoleRequest {
        user: "root".to_owned(),
        role: "root".to_owned(),
    })
    .await
    .map_err(fail("grant root"))?;
    auth.role_add(AuthRoleAddRequest {
        name: USER.to_owned(),
    })
    .await
    .map_err(fail("role add"))?;
    // Key "\0" to range end "\0": every key.
    auth.role_grant_permission(AuthRoleGrantPermissionRequest {
        name: USER.to_owned(),
        perm: Some(Permission {
            perm_type: permission::Type::Readwrite as i32,
            key: vec![0],
            range_end: vec![0],
        }),
    })
    .await
    .map_err(fail("grant permission"))?;
    auth.user_grant_role(AuthUserGrantRoleRequest {
        user: USER.to_owned(),
        role: USER.to_owned(),
    })
    .await
    .map_err(fail("grant role"))?;
    auth.auth_enable(AuthEnableRequest {})
        .await
        .map_err(fail("auth enable"))?;
    Ok(())
}

/// Opens TCP + TLS to the URI's host and port.
#[derive(Clone)]
struct TlsConnect(Arc<rustls::ClientConfig>);

type Io = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

impl tower_service::Service<Uri> for TlsConnect {
    type Response = Io;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Io>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let config = self.0.clone();
        Box::pin(async move {
            let bad = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, m);
            let host = uri.host().ok_or_else(|| bad(format!("{uri}: no host")))?;
            let port = uri
                .port_u16()
                .ok_or_else(|| bad(format!("{uri}: no port")))?;
            let name = rustls_pki_types::ServerName::try_from(host.to_owned())
                .map_err(|e| bad(format!("{host}: {e}")))?;
            let tcp = tokio::net::TcpStream::connect((host, port)).await?;
            tcp.set_nodelay(true)?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            Ok(hyper_util::rt::TokioIo::new(tls))
        })
    }
}
