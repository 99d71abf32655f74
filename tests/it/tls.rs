//! TLS on the client and peer ports (issue 14, item 4): etcdctl with
//! `--cacert/--cert/--key` against etcd 3.4 and MetaStore started with the
//! same TLS flags, the same outputs and failures; peer TLS clusters on both
//! engines; a member with another CA's certificate shut out; the allowed
//! CN; certificate rotation without restart; /metrics over https and plain.
//!
//! Every certificate is made here, at test time (rcgen), in a temp dir.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

use crate::harness::{etcdctl_at, http_get, Engine, Kind, Server};

/// A test certificate authority.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A certificate and its key, as PEM.
struct Leaf {
    cert: String,
    key: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    /// A server-and-client certificate for 127.0.0.1 with common name `cn`,
    /// valid from `from_days` to `to_days` around now.
    fn issue_valid(&self, cn: &str, from_days: i64, to_days: i64) -> Leaf {
        let mut p =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".into()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now + time::Duration::days(from_days);
        p.not_after = now + time::Duration::days(to_days);
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    fn issue(&self, cn: &str) -> Leaf {
        self.issue_valid(cn, -1, 2)
    }

    /// A certificate with serial number `serial`.
    fn issue_serial(&self, cn: &str, serial: u64) -> Leaf {
        let mut p = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.serial_number = Some(rcgen::SerialNumber::from(serial));
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    /// A CRL (PEM) revoking `serials`.
    fn crl(&self, serials: &[u64]) -> String {
        let now = time::OffsetDateTime::now_utc();
        rcgen::CertificateRevocationListParams {
            this_update: now - time::Duration::hours(1),
            next_update: now + time::Duration::days(1),
            crl_number: rcgen::SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| rcgen::RevokedCertParams {
                    serial_number: rcgen::SerialNumber::from(*s),
                    revocation_time: now - time::Duration::hours(1),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        }
        .signed_by(&self.cert, &self.key)
        .unwrap()
        .pem()
        .unwrap()
    }
}

/// The temp dir the certificates of one test live in.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        Pki {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `ca`'s certificate as `<name>.crt`.
    fn ca(&self, name: &str, ca: &Ca) -> String {
        let p = self.path(&format!("{name}.crt"));
        std::fs::write(&p, ca.cert.pem()).unwrap();
        p.display().to_string()
    }

    /// Writes a leaf as `<name>.crt` and `<name>.key`; returns the paths.
    fn leaf(&self, name: &str, leaf: &Leaf) -> (String, String) {
        let (c, k) = (
            self.path(&format!("{name}.crt")),
            self.path(&format!("{name}.key")),
        );
        // Renamed into place: a reader sees the old file or the new one.
        let tmp = self.path("tmp.pem");
        std::fs::write(&tmp, &leaf.key).unwrap();
        std::fs::rename(&tmp, &k).unwrap();
        std::fs::write(&tmp, &leaf.cert).unwrap();
        std::fs::rename(&tmp, &c).unwrap();
        (c.display().to_string(), k.display().to_string())
    }
}

/// etcdctl against `url` with TLS flags, short timeouts.
fn ctl(url: &str, tls: &[&str], args: &[&str]) -> Output {
    let mut all: Vec<&str> = tls.to_vec();
    all.extend(["--dial-timeout=1s", "--command-timeout=3s"]);
    all.extend(args);
    etcdctl_at(url, &all)
}

/// What a comparison keeps of an etcdctl run: exit code, stdout, the final
/// `Error:` line, and the error of grpc-go's last retry log line (the rest
/// of those lines are timestamps and random client ids).
fn essence(out: &Output) -> (Option<i32>, String, String, String) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let error = stderr
        .lines()
        .rfind(|l| l.starts_with("Error:"))
        .unwrap_or("")
        .to_owned();
    let retry = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
        .next_back()
        .unwrap_or_default();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        error,
        retry,
    )
}

/// etcd 3.4 and a MetaStore with an https client URL and `flags`, started
/// side by side.
fn tls_pair(engine: Engine, flags: &[String]) -> (Server, Server) {
    let start = |kind: Kind| {
        let mut s = Server::unstarted(kind, "default", &[]);
        s.set_https(true, false);
        s.add_extra(flags);
        s.spawn();
        s
    };
    std::thread::scope(|scope| {
        let etcd = scope.spawn(|| start(Kind::Etcd));
        let ms = start(Kind::MetaStore(engine));
        (etcd.join().unwrap(), ms)
    })
}

/// Runs the same etcdctl invocation on both daemons, concurrently (each
/// failure waits out its timeout).
fn both(etcd: &Server, ms: &Server, scheme: &str, tls: &[&str], args: &[&str]) -> [Output; 2] {
    let url = |s: &Server| format!("{scheme}://127.0.0.1:{}", s.port);
    std::thread::scope(|scope| {
        let e = scope.spawn(|| ctl(&url(etcd), tls, args));
        let m = ctl(&url(ms), tls, args);
        [e.join().unwrap(), m]
    })
}

/// Client certificate authentication, side by side with etcd 3.4: the same
/// answers with good credentials, the same failure (exit code and error)
/// for a CA the client does not trust the server by, no client
/// certificate, a client certificate of another CA, an expired client
/// certificate, and plain HTTP/2 to the TLS port.
#[test]
fn client_tls_answers_and_failures_match_etcd() {
    let pki = Pki::new();
    let ca = Ca::new("test-ca");
    let other = Ca::new("other-ca");
    let ca_file = pki.ca("ca", &ca);
    let other_file = pki.ca("other-ca", &other);
    let (srv, srv_key) = pki.leaf("server", &ca.issue("server"));
    let (cli, cli_key) = pki.leaf("client", &ca.issue("client"));
    let (stranger, stranger_key) = pki.leaf("stranger", &other.issue("client"));
    let (expired, expired_key) = pki.leaf("expired", &ca.issue_valid("client", -3, -1));
    let flags: Vec<String> = [
        "--cert-file",
        &srv,
        "--key-file",
        &srv_key,
        "--trusted-ca-file",
        &ca_file,
        "--client-cert-auth",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (etcd, ms) = tls_pair(Engine::Memory, &flags);
    let good = ["--cacert", &ca_file, "--cert", &cli, "--key", &cli_key];

    for args in [
        &["put", "foo", "bar"][..],
        &["get", "foo"],
        &["get", "foo", "-w", "json"],
    ] {
        let [e, m] = both(&etcd, &ms, "https", &good, args);
        let (e, m) = (essence(&e), essence(&m));
        if args.contains(&"json") {
            assert_eq!((e.0, m.0), (Some(0), Some(0)), "{e:?} {m:?}");
            assert!(m.1.contains("\"kvs\""), "{m:?}");
        } else {
            assert_eq!(e, m, "etcdctl {args:?}");
            assert_eq!(e.0, Some(0), "{e:?}");
        }
    }

    let failures: [(&str, &str, Vec<&str>); 5] = [
        (
            "server certificate not signed by the client's CA",
            "https",
            vec!["--cacert", &other_file, "--cert", &cli, "--key", &cli_key],
        ),
        ("no client certificate", "https", vec!["--cacert", &ca_file]),
        (
            "client certificate of another CA",
            "https",
            vec![
                "--cacert",
                &ca_file,
                "--cert",
                &stranger,
                "--key",
                &stranger_key,
            ],
        ),
        (
            "expired client certificate",
            "https",
            vec![
                "--cacert",
                &ca_file,
                "--cert",
                &expired,
                "--key",
                &expired_key,
            ],
        ),
        ("plain HTTP/2 to the TLS port", "http", vec![]),
    ];
    for (what, scheme, tls) in &failures {
        let [e, m] = both(&etcd, &ms, scheme, tls, &["get", "foo"]);
        let (es, ms_) = (essence(&e), essence(&m));
        eprintln!(
            "{what}:\n  etcd:      {es:?}\n  metastore: {ms_:?}\n  metastore stderr: {}",
            String::from_utf8_lossy(&m.stderr)
                .lines()
                .next()
                .unwrap_or("")
        );
        assert_ne!(es.0, Some(0), "{what}: etcd accepted it");
        assert_eq!(es, ms_, "{what}");
    }
    // etcdctl sends a URL as the :authority of these: the fix works on
    // the decrypted stream.
    for args in [
        &["endpoint", "health"][..],
        &["endpoint", "status", "--cluster"],
    ] {
        let [e, m] = both(&etcd, &ms, "https", &good, args);
        assert!(
            e.status.success() && m.status.success(),
            "{args:?}: {e:?} {m:?}"
        );
    }
    // The key is still there for the right client only.
    let out = ctl(
        &format!("https://{}", ms.endpoint()),
        &good,
        &["get", "foo", "--print-value-only"],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "bar\n");
}

/// A TLS handshake from the test: (server certificate's CN, whether the
/// server accepted us). TLS 1.2, so a refused client certificate fails the
/// handshake itself.
fn handshake(port: u16, ca_file: &str, client: Option<(&str, &str)>) -> Result<String, String> {
    handshake_with(port, ca_file, client, &[&rustls::version::TLS12]).map(|(cn, _, _)| cn)
}

/// A TLS handshake offering `versions`: (server CN, version, cipher suite).
fn handshake_with(
    port: u16,
    ca_file: &str,
    client: Option<(&str, &str)>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<(String, rustls::ProtocolVersion, rustls::CipherSuite), String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca_file).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots);
    let config = match client {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(cert)
                    .unwrap()
                    .map(|c| c.unwrap())
                    .collect(),
                PrivateKeyDer::from_pem_file(key).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    let mut conn =
        rustls::ClientConnection::new(Arc::new(config), ServerName::try_from("127.0.0.1").unwrap())
            .unwrap();
    let mut sock = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut sock).map_err(|e| e.to_string())?;
    }
    let cert = conn.peer_certificates().unwrap()[0].clone();
    Ok((
        metastore::tls::common_name(&cert).unwrap_or_default(),
        conn.protocol_version().unwrap(),
        conn.negotiated_cipher_suite().unwrap().suite(),
    ))
}

/// `GET path` over HTTPS/1.1 (no ALPN: HTTP/1.1); (status line, body).
fn https_get(port: u16, ca_file: &str, path: &str) -> (String, String) {
    https_get_as(port, ca_file, None, path)
}

/// [`https_get`] presenting a client certificate.
fn https_get_as(
    port: u16,
    ca_file: &str,
    client: Option<(&str, &str)>,
    path: &str,
) -> (String, String) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca_file).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match client {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(cert)
                    .unwrap()
                    .map(|c| c.unwrap())
                    .collect(),
                rustls::pki_types::PrivateKeyDer::from_pem_file(key).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    let conn =
        rustls::ClientConnection::new(Arc::new(config), ServerName::try_from("127.0.0.1").unwrap())
            .unwrap();
    let sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    write!(
        tls,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = Vec::new();
    // A peer closing without close_notify still delivered what we need.
    let _ = tls.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (
        head.lines().next().unwrap_or("").to_owned(),
        body.to_owned(),
    )
}

/// An unstarted memory member serving https on its client port with a
/// certificate for `cn` from `ca` (files `server` under `pki`).
fn https_member(pki: &Pki, ca: &Ca, cn: &str) -> Server {
    let (srv, srv_key) = pki.leaf("server", &ca.issue(cn));
    let mut ms = Server::unstarted(Kind::MetaStore(Engine::Memory), "default", &[]);
    ms.set_https(true, false);
    ms.add_extra(&["--cert-file", &srv, "--key-file", &srv_key]);
    ms
}

/// Replacing the certificate files changes the certificate new
/// connections get, without a restart; /metrics is served over https on
/// the TLS port and plain on --listen-metrics-urls; an http:// listen URL
/// beside the https one is served plain.
#[test]
fn certificates_rotate_without_restart_and_metrics_are_served() {
    let pki = Pki::new();
    let ca = Ca::new("test-ca");
    let ca_file = pki.ca("ca", &ca);
    let mut ms = https_member(&pki, &ca, "server-1");
    let plain_port = crate::harness::free_port();
    ms.more_client_urls = vec![format!("http://127.0.0.1:{plain_port}")];
    ms.spawn();

    assert_eq!(handshake(ms.port, &ca_file, None).unwrap(), "server-1");
    let (status, body) = https_get(ms.port, &ca_file, "/metrics");
    assert!(status.contains("200"), "{status}");
    assert!(body.contains("etcd_server_has_leader 1"), "{body:.300}");
    let (status, body) = https_get(ms.port, &ca_file, "/health");
    assert!(
        status.contains("200") && body.contains("true"),
        "{status} {body}"
    );
    let (status, body) = http_get(ms.metrics_port.unwrap(), "/metrics").unwrap();
    assert!(
        status.contains("200") && body.contains("etcd_server_has_leader"),
        "{status}"
    );
    // The plain client URL serves plain; the TLS one refuses plain.
    let plain = ctl(
        &format!("http://127.0.0.1:{plain_port}"),
        &[],
        &["put", "k", "v"],
    );
    assert!(plain.status.success(), "{plain:?}");
    assert!(http_get(ms.port, "/health").is_none_or(|(s, _)| !s.contains("200")));

    pki.leaf("server", &ca.issue("server-2"));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let cn = handshake(ms.port, &ca_file, None).unwrap();
        if cn == "server-2" {
            break;
        }
        assert!(Instant::now() < deadline, "still serving {cn}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = ctl(
        &format!("https://{}", ms.endpoint()),
        &["--cacert", &ca_file],
        &["get", "k", "--print-value-only"],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "v\n", "{out:?}");
    assert!(ms.is_running());
}

/// Peer TLS flags for a member with `cert`.
fn peer_flags(ca_file: &str, cert: &(String, String)) -> Vec<String> {
    [
        "--peer-cert-file",
        &cert.0,
        "--peer-key-file",
        &cert.1,
        "--peer-trusted-ca-file",
        ca_file,
        "--peer-client-cert-auth",
        "--peer-cert-allowed-cn",
        "member",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// `get key` on a member, serializable (its own state).
fn local_value(s: &Server, key: &str) -> String {
    let out = ctl(
        &format!("http://{}", s.endpoint()),
        &[],
        &["get", key, "--print-value-only", "--consistency=s"],
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn wait_value(s: &Server, key: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while local_value(s, key) != want {
        assert!(
            Instant::now() < deadline,
            "{} never saw {key}={want}",
            s.name
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Three members with https:// peer URLs, mutual certificate checks and an
/// allowed CN elect a leader and replicate.
fn peer_tls_cluster(engine: Engine) {
    let pki = Pki::new();
    let ca = Ca::new("peer-ca");
    let ca_file = pki.ca("ca", &ca);
    let member = pki.leaf("member", &ca.issue("member"));
    let flags = peer_flags(&ca_file, &member);
    let mut c =
        crate::harness::Cluster::start_configured(&[Kind::MetaStore(engine); 3], &[], |_, s| {
            s.set_https(false, true);
            s.add_extra(&flags);
        });
    let leader = c.wait_leader(Duration::from_secs(10));
    let out = ctl(
        &format!("http://{}", c.members[leader].endpoint()),
        &[],
        &["put", "replicated", "yes"],
    );
    assert!(out.status.success(), "{out:?}");
    for m in &c.members {
        wait_value(m, "replicated", "yes");
        assert!(
            m.log().contains("serving peers over TLS"),
            "{}",
            m.log_tail_pub()
        );
    }
    // A member added later finds the cluster over TLS (discovery) and gets
    // its state as a Raft snapshot over TLS.
    let mut m4 = Server::unstarted(Kind::MetaStore(engine), "m4", &[]);
    m4.set_https(false, true);
    m4.add_extra(&flags);
    // As etcd, members are added only once every member has been connected
    // for 5 s ("unhealthy cluster" before).
    let peer = m4.peer_url();
    let add = ["member", "add", "m4", "--learner", "--peer-urls", &peer];
    let deadline = Instant::now() + Duration::from_secs(10);
    let out = loop {
        let out = ctl(
            &format!("http://{}", c.members[leader].endpoint()),
            &[],
            &add,
        );
        let unhealthy = String::from_utf8_lossy(&out.stderr).contains("unhealthy cluster");
        if !unhealthy || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    assert!(out.status.success(), "{out:?}");
    m4.initial_cluster = Some(format!("{},m4={}", c.initial_cluster(), m4.peer_url()));
    m4.cluster_state = "existing".into();
    m4.launch();
    m4.wait_started();
    wait_value(&m4, "replicated", "yes");
    assert!(
        m4.log().contains("snapshot received and checked"),
        "{}",
        m4.log_tail_pub()
    );
}

engine_tests!(sync: peer_tls_cluster);

/// A member whose peer certificate another CA signed cannot talk to the
/// others: the two good members elect a leader and serve writes without
/// it, and it never gets them.
#[test]
fn a_member_with_another_cas_certificate_is_shut_out() {
    let pki = Pki::new();
    let ca = Ca::new("peer-ca");
    let other = Ca::new("other-ca");
    let ca_file = pki.ca("ca", &ca);
    let good = pki.leaf("member", &ca.issue("member"));
    let bad = pki.leaf("intruder", &other.issue("member"));
    let mut members: Vec<Server> = (0..3)
        .map(|i| {
            let mut s =
                Server::unstarted(Kind::MetaStore(Engine::Memory), &format!("m{}", i + 1), &[]);
            s.set_https(false, true);
            s.add_extra(&peer_flags(&ca_file, if i == 2 { &bad } else { &good }));
            s
        })
        .collect();
    let initial = members
        .iter()
        .map(|m| format!("{}={}", m.name, m.peer_url()))
        .collect::<Vec<_>>()
        .join(",");
    for m in &mut members {
        m.initial_cluster = Some(initial.clone());
        m.launch();
    }
    members[0].wait_started();
    members[1].wait_started();
    let out = ctl(
        &format!("http://{}", members[0].endpoint()),
        &["--command-timeout=5s"],
        &["put", "k", "written"],
    );
    assert!(out.status.success(), "{out:?}");
    wait_value(&members[1], "k", "written");
    std::thread::sleep(Duration::from_millis(500));
    assert!(members[2].is_running());
    assert_eq!(
        local_value(&members[2], "k"),
        "",
        "the intruder got the write"
    );
    let health = http_get(members[2].port, "/health").map(|(_, b)| b);
    assert!(
        health.as_deref().is_some_and(|b| b.contains("false")),
        "{health:?}"
    );
    let refused = members[..2].iter().any(|m| {
        m.log()
            .contains("rejected connection: TLS handshake failed")
    });
    assert!(refused, "{}", members[0].log_tail_pub());
}

/// `--peer-cert-allowed-cn`: a certificate of the right CA with another
/// common name is refused at the handshake; the allowed one is accepted.
#[test]
fn the_peer_port_takes_only_the_allowed_common_name() {
    let pki = Pki::new();
    let ca = Ca::new("peer-ca");
    let ca_file = pki.ca("ca", &ca);
    let member = pki.leaf("member", &ca.issue("member"));
    let (wrong, wrong_key) = pki.leaf("wrong-cn", &ca.issue("intruder"));
    let mut s = Server::unstarted(Kind::MetaStore(Engine::Memory), "default", &[]);
    s.set_https(false, true);
    s.add_extra(&peer_flags(&ca_file, &member));
    s.spawn();
    assert_eq!(
        handshake(s.peer_port, &ca_file, Some((&member.0, &member.1))).unwrap(),
        "member"
    );
    let refused = handshake(s.peer_port, &ca_file, Some((&wrong, &wrong_key)));
    assert!(refused.is_err(), "{refused:?}");
    let anonymous = handshake(s.peer_port, &ca_file, None);
    assert!(anonymous.is_err(), "{anonymous:?}");
}

/// `--auto-tls` and `--peer-auto-tls`, side by side with etcd 3.4: a
/// self-signed certificate in <data-dir>/fixtures, served on the https
/// client URL; a client that skips verification gets etcd's answers.
#[test]
fn auto_tls_serves_a_self_signed_certificate_like_etcd() {
    let flags: Vec<String> = vec!["--auto-tls".into(), "--peer-auto-tls".into()];
    let start = |kind: Kind| {
        let mut s = Server::unstarted(kind, "default", &[]);
        s.set_https(true, true);
        s.add_extra(&flags);
        s.spawn();
        s
    };
    let (etcd, ms) = std::thread::scope(|scope| {
        let e = scope.spawn(|| start(Kind::Etcd));
        let m = start(Kind::MetaStore(Engine::Memory));
        (e.join().unwrap(), m)
    });
    for args in [&["put", "a", "1"][..], &["get", "a"]] {
        let [e, m] = both(
            &etcd,
            &ms,
            "https",
            &["--insecure-transport=false", "--insecure-skip-tls-verify"],
            args,
        );
        assert_eq!(essence(&e), essence(&m), "etcdctl {args:?}");
        assert!(e.status.success(), "{e:?}");
    }
    // Without skipping verification the self-signed certificate is refused.
    let [e, m] = both(
        &etcd,
        &ms,
        "https",
        &["--insecure-transport=false"],
        &["get", "a"],
    );
    assert_eq!(essence(&e), essence(&m));
    assert!(!m.status.success());
    for side in ["client", "peer"] {
        assert!(Path::new(&ms.dir)
            .join("fixtures")
            .join(side)
            .join("cert.pem")
            .exists());
    }
}

/// `--client-crl-file`, side by side with etcd 3.4: a client certificate
/// the CRL lists is refused, one it does not list is served.
#[test]
fn a_revoked_client_certificate_is_refused_like_etcd() {
    let pki = Pki::new();
    let ca = Ca::new("test-ca");
    let ca_file = pki.ca("ca", &ca);
    let (srv, srv_key) = pki.leaf("server", &ca.issue("server"));
    let (ok, ok_key) = pki.leaf("kept", &ca.issue_serial("client", 1001));
    let (revoked, revoked_key) = pki.leaf("revoked", &ca.issue_serial("client", 1002));
    let crl = pki.path("ca.crl");
    std::fs::write(&crl, ca.crl(&[1002])).unwrap();
    let crl = crl.display().to_string();
    let flags: Vec<String> = [
        "--cert-file",
        &srv,
        "--key-file",
        &srv_key,
        "--trusted-ca-file",
        &ca_file,
        "--client-cert-auth",
        "--client-crl-file",
        &crl,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (etcd, ms) = tls_pair(Engine::Memory, &flags);
    let [e, m] = both(
        &etcd,
        &ms,
        "https",
        &["--cacert", &ca_file, "--cert", &ok, "--key", &ok_key],
        &["put", "k", "v"],
    );
    assert_eq!(essence(&e), essence(&m));
    assert!(m.status.success(), "{m:?}");
    let [e, m] = both(
        &etcd,
        &ms,
        "https",
        &[
            "--cacert",
            &ca_file,
            "--cert",
            &revoked,
            "--key",
            &revoked_key,
        ],
        &["get", "k"],
    );
    assert_eq!(essence(&e), essence(&m));
    assert!(!m.status.success(), "{m:?}");
}

/// `--tls-max-version TLS1.2 --cipher-suites ...`: only that version and
/// suite are negotiated; etcd's refusals at start-up (cipher suites with
/// TLS 1.3 only, unknown names) and the ones rustls adds (CBC suites).
#[test]
fn tls_versions_and_cipher_suites_are_enforced() {
    let pki = Pki::new();
    let ca = Ca::new("test-ca");
    let ca_file = pki.ca("ca", &ca);
    let (srv, srv_key) = pki.leaf("server", &ca.issue("server"));
    let mut ms = Server::unstarted(Kind::MetaStore(Engine::Memory), "default", &[]);
    ms.set_https(true, false);
    let tls = ["--cert-file", &srv, "--key-file", &srv_key];
    ms.add_extra(&tls);
    ms.add_extra(&[
        "--tls-max-version",
        "TLS1.2",
        "--cipher-suites",
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    ]);
    ms.spawn();
    let all = [&rustls::version::TLS13, &rustls::version::TLS12];
    let (_, version, suite) = handshake_with(ms.port, &ca_file, None, &all).unwrap();
    assert_eq!(version, rustls::ProtocolVersion::TLSv1_2);
    assert_eq!(
        suite,
        rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
    );
    let only13 = handshake_with(ms.port, &ca_file, None, &[&rustls::version::TLS13]);
    assert!(only13.is_err(), "{only13:?}");
    let out = ctl(
        &format!("https://{}", ms.endpoint()),
        &["--cacert", &ca_file],
        &["put", "a", "b"],
    );
    assert!(out.status.success(), "{out:?}");

    for (flags, why) in [
        (
            vec![
                "--tls-min-version",
                "TLS1.3",
                "--cipher-suites",
                "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
            ],
            "cipher suites cannot be configured when only TLS1.3 is enabled",
        ),
        (
            vec!["--cipher-suites", "TLS_NOPE"],
            "unexpected TLS cipher suite",
        ),
        (
            vec!["--cipher-suites", "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA"],
            "not supported by MetaStore",
        ),
        (
            vec!["--tls-min-version", "TLS1.1"],
            "TLS1.1 is not supported",
        ),
    ] {
        let mut bad = Server::unstarted(Kind::MetaStore(Engine::Memory), "default", &[]);
        bad.set_https(true, false);
        bad.add_extra(&tls);
        bad.add_extra(&flags);
        let out = bad.run_to_exit();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(why),
            "{flags:?}: {stderr}"
        );
    }
}

/// `--peer-auto-tls` on every member: each makes its own self-signed peer
/// certificate, the members talk over TLS without verifying each other
/// (etcd's behaviour), elect a leader and replicate.
#[test]
fn a_peer_auto_tls_cluster_replicates() {
    let mut c = crate::harness::Cluster::start_configured(
        &[Kind::MetaStore(Engine::Memory); 3],
        &["--peer-auto-tls"],
        |_, s| s.set_https(false, true),
    );
    let leader = c.wait_leader(Duration::from_secs(10));
    let out = ctl(
        &format!("http://{}", c.members[leader].endpoint()),
        &[],
        &["put", "auto", "tls"],
    );
    assert!(out.status.success(), "{out:?}");
    for m in &c.members {
        wait_value(m, "auto", "tls");
        assert!(m.dir.join("fixtures/peer/cert.pem").exists());
    }
}

/// What a handler sees: the verified client certificate's common name in
/// the request's extensions on a TLS port with --client-cert-auth, none
/// on a plain port (`/debug/client-cn`, a test-only route).
#[test]
fn handlers_see_the_client_certificates_common_name() {
    let pki = Pki::new();
    let ca = Ca::new("test-ca");
    let ca_file = pki.ca("ca", &ca);
    let (srv, srv_key) = pki.leaf("server", &ca.issue("server"));
    let (alice, alice_key) = pki.leaf("alice", &ca.issue("alice"));
    let mut ms = Server::unstarted(Kind::MetaStore(Engine::Memory), "default", &[]);
    ms.set_https(true, false);
    let plain_port = crate::harness::free_port();
    ms.more_client_urls = vec![format!("http://127.0.0.1:{plain_port}")];
    ms.add_extra(&[
        "--cert-file",
        &srv,
        "--key-file",
        &srv_key,
        "--trusted-ca-file",
        &ca_file,
        "--client-cert-auth",
        "--experimental-fault-injection",
    ]);
    ms.spawn();
    let (status, body) = https_get_as(
        ms.port,
        &ca_file,
        Some((&alice, &alice_key)),
        "/debug/client-cn",
    );
    assert!(status.contains("200"), "{status}");
    assert_eq!(body, "alice");
    let (status, body) = http_get(plain_port, "/debug/client-cn").unwrap();
    assert!(status.contains("200"), "{status}");
    assert_eq!(body, "");
}

/// With client certificates required and auth on, a request without a
/// token runs as its certificate's common name (etcd's behaviour), and a
/// password login still works; side by side with etcd 3.4.
#[test]
fn the_client_certificates_common_name_is_the_user_when_auth_is_on() {
    let pki = Pki::new();
    let ca = Ca::new("test-ca");
    let ca_file = pki.ca("ca", &ca);
    let (srv, srv_key) = pki.leaf("server", &ca.issue("server"));
    let (root, root_key) = pki.leaf("root", &ca.issue("root"));
    let (alice, alice_key) = pki.leaf("alice", &ca.issue("alice"));
    let (carol, carol_key) = pki.leaf("carol", &ca.issue("carol"));
    let flags: Vec<String> = [
        "--cert-file",
        &srv,
        "--key-file",
        &srv_key,
        "--trusted-ca-file",
        &ca_file,
        "--client-cert-auth",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (etcd, ms) = tls_pair(Engine::Memory, &flags);
    let as_cert = |c: &str, k: &str| {
        vec![
            "--cacert".to_owned(),
            ca_file.clone(),
            "--cert".into(),
            c.into(),
            "--key".into(),
            k.into(),
        ]
    };
    let root_tls = as_cert(&root, &root_key);
    let alice_tls = as_cert(&alice, &alice_key);
    let carol_tls = as_cert(&carol, &carol_key);
    fn refs(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }
    let steps: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (refs(&root_tls), vec!["user", "add", "root:rootpw"]),
        (refs(&root_tls), vec!["user", "grant-role", "root", "root"]),
        (refs(&root_tls), vec!["user", "add", "alice:alicepw"]),
        (refs(&root_tls), vec!["role", "add", "app"]),
        (
            refs(&root_tls),
            vec!["role", "grant-permission", "app", "readwrite", "a"],
        ),
        (refs(&root_tls), vec!["user", "grant-role", "alice", "app"]),
        (refs(&root_tls), vec!["auth", "enable"]),
        // Certificates name the user: root may do anything, alice her key.
        (refs(&root_tls), vec!["put", "b", "1"]),
        (refs(&alice_tls), vec!["put", "a", "1"]),
        (refs(&alice_tls), vec!["get", "a"]),
        (refs(&alice_tls), vec!["get", "b"]),
        // No such user: denied.
        (refs(&carol_tls), vec!["get", "a"]),
        // A password login over the same connection wins over the CN.
        (refs(&alice_tls), vec!["--user=root:rootpw", "get", "b"]),
        (refs(&carol_tls), vec!["--user=alice:alicepw", "get", "a"]),
        (refs(&carol_tls), vec!["--user=alice:wrong", "get", "a"]),
    ];
    let mut diffs = Vec::new();
    for (tls, args) in &steps {
        let [e, m] = both(&etcd, &ms, "https", tls, args);
        let (e, m) = (essence(&e), essence(&m));
        if e != m {
            diffs.push(format!("{args:?}: etcd {e:?}, metastore {m:?}"));
        }
    }
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
    let [_, m] = both(&etcd, &ms, "https", &refs(&alice_tls), &["get", "b"]);
    assert!(String::from_utf8_lossy(&m.stderr).contains("permission denied"));
    let [_, m] = both(&etcd, &ms, "https", &refs(&alice_tls), &["get", "a"]);
    assert!(String::from_utf8_lossy(&m.stdout).contains('1'));
}

/// Connections to a TLS client port that never finish the handshake (one
/// sends nothing, one the first bytes of a ClientHello) are closed after
/// the 10 s handshake deadline, and meanwhile others connect and are served.
#[test]
fn stalled_tls_handshakes_are_closed_and_block_no_one() {
    let pki = Pki::new();
    let ca = Ca::new("test-ca");
    let ca_file = pki.ca("ca", &ca);
    let mut ms = https_member(&pki, &ca, "server-1");
    ms.spawn();
    let opened = Instant::now();
    // A TLS record header announcing a 512-byte handshake, and 3 bytes of it.
    let starts: [&[u8]; 2] = [b"", &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01]];
    let mut stalled: Vec<(TcpStream, Option<Duration>)> = starts
        .iter()
        .map(|first| {
            let mut c = TcpStream::connect(("127.0.0.1", ms.port)).unwrap();
            c.write_all(first).unwrap();
            c.set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            (c, None)
        })
        .collect();
    assert_eq!(handshake(ms.port, &ca_file, None).unwrap(), "server-1");
    let (status, _) = https_get(ms.port, &ca_file, "/health");
    assert!(status.contains("200"), "{status}");
    while opened.elapsed() < Duration::from_secs(20) && stalled.iter().any(|(_, l)| l.is_none()) {
        for (c, lived) in stalled.iter_mut().filter(|(_, l)| l.is_none()) {
            let mut b = [0u8; 64];
            match c.read(&mut b) {
                Ok(0) => *lived = Some(opened.elapsed()),
                Err(e)
                    if e.kind() != std::io::ErrorKind::WouldBlock
                        && e.kind() != std::io::ErrorKind::TimedOut =>
                {
                    *lived = Some(opened.elapsed())
                }
                _ => {}
            }
        }
    }
    for (i, (_, lived)) in stalled.iter().enumerate() {
        let lived = lived.unwrap_or_else(|| panic!("stalled handshake {i} still open after 20 s"));
        assert!(
            lived >= Duration::from_secs(9),
            "stalled handshake {i} closed after {lived:?}"
        );
    }
    assert!(
        ms.log().contains("TLS handshake timed out"),
        "{}",
        ms.log_tail_pub()
    );
}
