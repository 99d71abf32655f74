//! HTTP/1.1 on the client port as clients really use it, side by side with
//! etcd 3.4: keep-alive connections carrying a GET with a body (Patroni sends
//! `GET /version` with `{}`), bodies that arrive after their headers,
//! pipelined requests, and a reader that takes its time. Every request gets
//! its answer on the same connection, as etcd gives it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::harness::{Engine, Pair, Server};

/// One HTTP/1.1 response: status code and body.
#[derive(Debug)]
struct Resp {
    status: u16,
    body: Vec<u8>,
}

/// Reads one response (Content-Length or chunked); `None` if the
/// connection closed first.
fn read_response(r: &mut BufReader<TcpStream>) -> Option<Resp> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let status: u16 = line.split_whitespace().nth(1)?.parse().ok()?;
    let (mut length, mut chunked) = (None, false);
    loop {
        line.clear();
        r.read_line(&mut line).ok()?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (name, value) = l.split_once(':')?;
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => length = value.trim().parse::<usize>().ok(),
            "transfer-encoding" => chunked = value.trim().eq_ignore_ascii_case("chunked"),
            _ => {}
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            line.clear();
            r.read_line(&mut line).ok()?;
            let n = usize::from_str_radix(line.trim(), 16).ok()?;
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk).ok()?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else {
        body.resize(length.unwrap_or(0), 0);
        r.read_exact(&mut body).ok()?;
    }
    Some(Resp { status, body })
}

fn request(method: &str, path: &str, body: &str) -> String {
    let length = if body.is_empty() && method == "GET" {
        String::new()
    } else {
        format!("Content-Length: {}\r\n", body.len())
    };
    format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         {length}\r\n"
    )
}

/// How a sequence is sent.
#[derive(Clone, Copy, Debug)]
enum Send {
    /// Each request whole, its answer read before the next.
    InTurn,
    /// Each request's body 30 ms after its headers.
    LateBody,
    /// Every request written at once, then the answers read.
    Pipelined,
    /// Pipelined, then the answers read a few bytes at a time.
    SlowReader,
}

/// Sends `reqs` (method, path, body) on one connection; the answers'
/// statuses and whether each body is JSON with the expected field.
fn sequence(s: &Server, reqs: &[(&str, &str, &str)], how: Send) -> Vec<Option<u16>> {
    let stream = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.set_nodelay(true).unwrap();
    let mut w = stream.try_clone().unwrap();
    let mut r = BufReader::with_capacity(
        match how {
            Send::SlowReader => 7,
            _ => 8192,
        },
        stream,
    );
    let mut out = Vec::new();
    let answer = |r: &mut BufReader<TcpStream>| {
        let resp = read_response(r);
        if let Some(resp) = &resp {
            assert!(
                resp.status != 200 || resp.body.first() == Some(&b'{') || resp.body.is_empty(),
                "{resp:?}"
            );
        }
        resp.map(|x| x.status)
    };
    match how {
        Send::InTurn | Send::LateBody => {
            for (m, p, b) in reqs {
                // A write to a connection the server closed fails: that
                // request, like one whose answer never came, gets none.
                let mut sent = w.write_all(request(m, p, b).as_bytes()).is_ok();
                if matches!(how, Send::LateBody) && !b.is_empty() {
                    std::thread::sleep(Duration::from_millis(30));
                }
                sent = sent && w.write_all(b.as_bytes()).is_ok();
                out.push(if sent { answer(&mut r) } else { None });
            }
        }
        Send::Pipelined | Send::SlowReader => {
            let mut all = Vec::new();
            for (m, p, b) in reqs {
                all.extend_from_slice(request(m, p, b).as_bytes());
                all.extend_from_slice(b.as_bytes());
            }
            if w.write_all(&all).is_err() {
                return vec![None; reqs.len()];
            }
            for _ in reqs {
                if matches!(how, Send::SlowReader) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                out.push(answer(&mut r));
            }
        }
    }
    out
}

fn keep_alive_sequences_answer_as_etcds(engine: Engine) {
    let pair = Pair::start(engine);
    for s in [&pair.etcd, &pair.ms] {
        assert!(s.etcdctl(&["put", "foo", "bar"]).status.success());
    }
    let range = ("POST", "/v3/kv/range", r#"{"key":"Zm9v"}"#);
    let put = ("POST", "/v3/kv/put", r#"{"key":"YQ==","value":"Yg=="}"#);
    let sequences: Vec<Vec<(&str, &str, &str)>> = vec![
        vec![("GET", "/version", "{}"), range],
        vec![("GET", "/version", ""), range, ("GET", "/health", "")],
        vec![
            ("GET", "/health", "{}"),
            put,
            ("GET", "/version", "{}"),
            range,
        ],
        vec![range, ("GET", "/version", r#"{"a":"some bytes"}"#), put],
    ];
    let mut diffs = Vec::new();
    for how in [
        Send::InTurn,
        Send::LateBody,
        Send::Pipelined,
        Send::SlowReader,
    ] {
        for seq in &sequences {
            // Several times each: the race this guards was 14 in 6,000.
            for round in 0..25 {
                let want = sequence(&pair.etcd, seq, how);
                let got = sequence(&pair.ms, seq, how);
                assert!(
                    want.iter().all(|s| *s == Some(200)),
                    "etcd itself: {how:?} {seq:?}: {want:?}"
                );
                if want != got {
                    diffs.push(format!(
                        "{how:?} round {round} {seq:?}: etcd {want:?}, MetaStore {got:?}"
                    ));
                }
            }
        }
    }
    assert!(
        diffs.is_empty(),
        "{} differences:\n{}",
        diffs.len(),
        diffs.join("\n")
    );
}

engine_tests!(sync: keep_alive_sequences_answer_as_etcds);
