//! The `/v3/...` JSON gateway, side by side with etcd 3.4's: the same
//! requests (as curl sends them) get the same JSON, errors and HTTP status
//! codes; what gRPC writes the gateway reads and watches, and the reverse.

use std::io::{Read, Write};
use std::time::Duration;

use serde_json::Value;

use crate::harness::{Engine, Pair};

/// POST `body` to `path`; (status code, body). With `wait`, reads for that
/// long and returns what came (a streaming answer).
fn post(port: u16, path: &str, body: &str, wait: Option<Duration>) -> (u16, String) {
    post_as(port, path, body, wait, None)
}

/// `post` with an `Authorization` header (a token), as gateway clients send.
fn post_as(
    port: u16,
    path: &str,
    body: &str,
    wait: Option<Duration>,
    token: Option<&str>,
) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(wait.unwrap_or(Duration::from_secs(5))))
        .unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: {t}\r\n"));
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => break,
        }
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    let code = head.split(' ').nth(1).unwrap().parse().unwrap();
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    (
        code,
        if chunked {
            dechunk(rest)
        } else {
            rest.to_owned()
        },
    )
}

/// The data of a chunked body (as much as arrived).
fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
}

/// The JSON with what differs between two servers by design (IDs, term)
/// taken out.
fn normalized(text: &str) -> Value {
    let mut v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"));
    fn walk(v: &mut Value) {
        match v {
            Value::Object(m) => {
                for k in ["cluster_id", "member_id", "raft_term"] {
                    m.remove(k);
                }
                m.values_mut().for_each(walk);
            }
            Value::Array(a) => a.iter_mut().for_each(walk),
            _ => {}
        }
    }
    walk(&mut v);
    v
}

fn gateway_answers_as_etcd_does(engine: Engine) {
    let p = Pair::start(engine);
    let (e, m) = (p.etcd.port, p.ms.port);
    let same = |path: &str, body: &str| {
        let (ec, eb) = post(e, path, body, None);
        let (mc, mb) = post(m, path, body, None);
        assert_eq!(
            mc, ec,
            "{path} {body}: status; etcd said {eb}, we said {mb}"
        );
        assert_eq!(normalized(&mb), normalized(&eb), "{path} {body}");
        mb
    };
    // foo = bar, base64.
    same("/v3/kv/put", r#"{"key":"Zm9v","value":"YmFy"}"#);
    same(
        "/v3/kv/put",
        r#"{"key":"Zm9v","value":"YmF6","prev_kv":true}"#,
    );
    same("/v3/kv/put", r#"{"key":"Zm9vMg==","value":"MQ=="}"#);
    same("/v3/kv/range", r#"{"key":"Zm9v"}"#);
    same("/v3/kv/range", r#"{"key":"Zm9v","range_end":"Zm9w"}"#);
    same(
        "/v3/kv/range",
        r#"{"key":"Zm9v","range_end":"Zm9w","revision":"2"}"#,
    );
    same(
        "/v3/kv/range",
        r#"{"key":"Zm9v","range_end":"Zm9w","count_only":true}"#,
    );
    same(
        "/v3/kv/range",
        r#"{"key":"AA==","range_end":"AA==","sort_order":"DESCEND","sort_target":"MOD","limit":1}"#,
    );
    same("/v3/kv/range", r#"{"key":"bm9uZQ=="}"#);
    // Errors: status code and body.
    same("/v3/kv/put", r#"{"value":"YmFy"}"#);
    same("/v3/kv/range", r#"{"key":"Zm9v","revision":"100"}"#);
    same(
        "/v3/kv/txn",
        r#"{"compare":[{"key":"Zm9v","result":"EQUAL","target":"VALUE","value":"YmF6"}],"success":[{"request_put":{"key":"dHg=","value":"eWVz"}}],"failure":[{"request_range":{"key":"Zm9v"}}]}"#,
    );
    same(
        "/v3/kv/txn",
        r#"{"compare":[{"key":"Zm9v","target":"VERSION","version":"9"}],"success":[],"failure":[{"request_range":{"key":"Zm9v"}}]}"#,
    );
    same("/v3/kv/deleterange", r#"{"key":"Zm9vMg==","prev_kv":true}"#);
    same("/v3/kv/compaction", r#"{"revision":"3"}"#);
    same("/v3/kv/range", r#"{"key":"Zm9v","revision":"2"}"#);
    same("/v3/lease/grant", r#"{"TTL":"60","ID":"4660"}"#);
    same("/v3/lease/grant", r#"{"TTL":"60","ID":"4660"}"#);
    same(
        "/v3/kv/put",
        r#"{"key":"bGVhc2Vk","value":"eA==","lease":"4660"}"#,
    );
    same("/v3/lease/leases", "{}");
    let (_, eb) = post(
        e,
        "/v3/lease/timetolive",
        r#"{"ID":"4660","keys":true}"#,
        None,
    );
    let (_, mb) = post(
        m,
        "/v3/lease/timetolive",
        r#"{"ID":"4660","keys":true}"#,
        None,
    );
    let (mut ev, mut mv) = (normalized(&eb), normalized(&mb));
    for v in [&mut ev, &mut mv] {
        v.as_object_mut().unwrap().remove("TTL");
    }
    assert_eq!(mv, ev);
    // Keep-alive streams its answers (TTL back at 60).
    let (ec, eb) = post(
        e,
        "/v3/lease/keepalive",
        r#"{"ID":"4660"}"#,
        Some(Duration::from_millis(800)),
    );
    let (mc, mb) = post(
        m,
        "/v3/lease/keepalive",
        r#"{"ID":"4660"}"#,
        Some(Duration::from_millis(800)),
    );
    assert_eq!((mc, ec), (200, 200));
    let first = |b: &str| normalized(b.lines().next().unwrap_or("{}"));
    assert_eq!(first(&mb), first(&eb), "keepalive\netcd: {eb}\nours: {mb}");
    assert_eq!(first(&mb)["result"]["TTL"], "60", "{mb}");
    same("/v3/lease/revoke", r#"{"ID":"4660"}"#);
    same("/v3/lease/revoke", r#"{"ID":"4660"}"#);
    // A watch from revision 1 replays, then streams.
    let watch = r#"{"create_request":{"key":"Zm9v","range_end":"Zm9w","start_revision":"4"}}"#;
    let (ec, eb) = post(e, "/v3/watch", watch, Some(Duration::from_millis(800)));
    let (mc, mb) = post(m, "/v3/watch", watch, Some(Duration::from_millis(800)));
    assert_eq!((mc, ec), (200, 200));
    let lines = |b: &str| b.lines().map(normalized).collect::<Vec<_>>();
    assert_eq!(lines(&mb), lines(&eb), "watch\netcd: {eb}\nours: {mb}");
    assert_eq!(lines(&mb).len(), 2, "{mb}");
    // Member list: same shape.
    let (_, eb) = post(e, "/v3/cluster/member/list", "{}", None);
    let (_, mb) = post(m, "/v3/cluster/member/list", "{}", None);
    let keys = |b: &str| {
        let v: Value = serde_json::from_str(b).unwrap();
        let mut k: Vec<String> = v["members"][0]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        k.sort();
        k
    };
    assert_eq!(keys(&mb), keys(&eb));
    let (code, _) = post(m, "/v3/maintenance/status", "{}", None);
    assert_eq!(code, 200);
}

engine_tests!(sync: gateway_auth_answers_as_etcd_does);
engine_tests!(sync: gateway_answers_as_etcd_does);

/// What gRPC writes the gateway reads and watches, and the reverse.
async fn gateway_and_grpc_see_each_other(engine: Engine) {
    let s = tokio::task::spawn_blocking(move || crate::harness::Server::start_on(engine))
        .await
        .unwrap();
    let port = s.port;
    let mut client = s.client().await;
    // A gateway watch from now on, in the background.
    let watcher = tokio::task::spawn_blocking(move || {
        post(
            port,
            "/v3/watch",
            r#"{"create_request":{"key":"Y3Jvc3M=","range_end":"Y3Jvc3Q="}}"#,
            Some(Duration::from_millis(1500)),
        )
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    client.put("cross/grpc", "from-grpc", None).await.unwrap();
    let (code, body) = tokio::task::spawn_blocking(move || {
        post(
            port,
            "/v3/kv/put",
            r#"{"key":"Y3Jvc3MvZ3c=","value":"ZnJvbS1ndw=="}"#,
            None,
        )
    })
    .await
    .unwrap();
    assert_eq!(code, 200, "{body}");
    let got = client.get("cross/gw", None).await.unwrap();
    assert_eq!(got.kvs()[0].value(), b"from-gw");
    let (_, body) = tokio::task::spawn_blocking(move || {
        post(port, "/v3/kv/range", r#"{"key":"Y3Jvc3MvZ3JwYw=="}"#, None)
    })
    .await
    .unwrap();
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["kvs"][0]["value"], "ZnJvbS1ncnBj", "{body}");
    let (_, watched) = watcher.await.unwrap();
    let events: Vec<String> = watched
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .flat_map(|v| {
            v["result"]["events"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .map(|e| e["kv"]["key"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(events, ["Y3Jvc3MvZ3JwYw==", "Y3Jvc3MvZ3c="], "{watched}");
}

engine_tests!(async: gateway_and_grpc_see_each_other);

/// `/v3/auth/...` and the `Authorization` header, as etcd 3.4's gateway
/// answers them: log in, then the same answers with the token, without
/// it, and with a made-up one.
fn gateway_auth_answers_as_etcd_does(engine: Engine) {
    let p = Pair::start(engine);
    crate::auth::setup(&p);
    let login = |port: u16, user: &str, pw: &str| {
        let (code, body) = post(
            port,
            "/v3/auth/authenticate",
            &format!(r#"{{"name":"{user}","password":"{pw}"}}"#),
            None,
        );
        assert_eq!(code, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        v["token"].as_str().unwrap().to_owned()
    };
    let (e, m) = (p.etcd.port, p.ms.port);
    let (ea, ma) = (login(e, "alice", "alicepw"), login(m, "alice", "alicepw"));
    let (er, mr) = (login(e, "root", "rootpw"), login(m, "root", "rootpw"));
    let same = |path: &str, body: &str, tokens: Option<(&str, &str)>| {
        let (ec, eb) = post_as(e, path, body, None, tokens.map(|t| t.0));
        let (mc, mb) = post_as(m, path, body, None, tokens.map(|t| t.1));
        assert_eq!(
            mc, ec,
            "{path} {body}: status; etcd said {eb}, we said {mb}"
        );
        assert_eq!(normalized(&mb), normalized(&eb), "{path} {body}");
        mb
    };
    let alice = Some((ea.as_str(), ma.as_str()));
    let root = Some((er.as_str(), mr.as_str()));
    // a = 1 (base64), b.
    same("/v3/kv/put", r#"{"key":"YQ==","value":"MQ=="}"#, alice);
    let got = same("/v3/kv/range", r#"{"key":"YQ=="}"#, alice);
    assert!(got.contains("MQ=="), "{got}");
    let denied = same("/v3/kv/range", r#"{"key":"Yg=="}"#, alice);
    assert!(denied.contains("permission denied"), "{denied}");
    same("/v3/kv/range", r#"{"key":"YQ=="}"#, None);
    same(
        "/v3/kv/range",
        r#"{"key":"YQ=="}"#,
        Some(("bogus.1", "bogus.1")),
    );
    same(
        "/v3/auth/authenticate",
        r#"{"name":"alice","password":"nope"}"#,
        None,
    );
    same("/v3/auth/user/list", "{}", root);
    same("/v3/auth/user/list", "{}", alice);
    same("/v3/auth/role/get", r#"{"role":"app"}"#, alice);
    same("/v3/auth/user/get", r#"{"name":"alice"}"#, alice);
    same("/v3/auth/role/add", r#"{"name":"viewer"}"#, root);
    same(
        "/v3/auth/role/grant",
        r#"{"name":"viewer","perm":{"permType":"READ","key":"dg==","range_end":"dw=="}}"#,
        root,
    );
    same("/v3/auth/role/get", r#"{"role":"viewer"}"#, root);
    same("/v3/auth/disable", "{}", root);
    same("/v3/kv/range", r#"{"key":"YQ=="}"#, None);
}

/// The rest of the gateway's mapping, side by side with etcd 3.4: Lock,
/// Election, Maintenance and the Cluster calls that change members. What
/// differs by design is taken out before comparing (IDs etcd picks at
/// random, hash values: MetaStore hashes its own records).
fn gateway_lock_election_maintenance_cluster_as_etcd(engine: Engine) {
    let p = Pair::start(engine);
    let (e, m) = (p.etcd.port, p.ms.port);
    let both = |path: &str, body: &str| -> (Value, Value) {
        let (ec, eb) = post(e, path, body, None);
        let (mc, mb) = post(m, path, body, None);
        assert_eq!(
            mc, ec,
            "{path} {body}: status; etcd said {eb}, we said {mb}"
        );
        (normalized(&eb), normalized(&mb))
    };
    let same = |path: &str, body: &str| -> Value {
        let (ev, mv) = both(path, body);
        assert_eq!(mv, ev, "{path} {body}");
        mv
    };
    // Lock and Election on a lease both servers know by the same ID.
    same("/v3/lease/grant", r#"{"TTL":"60","ID":"4660"}"#);
    let locked = same("/v3/lock/lock", r#"{"name":"bXlsb2Nr","lease":"4660"}"#);
    let key = locked["key"].as_str().unwrap().to_owned();
    same(
        "/v3/kv/range",
        r#"{"key":"bXlsb2Nr","range_end":"bXlsb2Ns"}"#,
    );
    same("/v3/lock/unlock", &format!(r#"{{"key":"{key}"}}"#));
    same("/v3/lock/unlock", &format!(r#"{{"key":"{key}"}}"#));
    same("/v3/lock/lock", r#"{"name":"bXlsb2Nr","lease":"999"}"#);
    let won = same(
        "/v3/election/campaign",
        r#"{"name":"ZWw=","lease":"4660","value":"djE="}"#,
    );
    let leader = won["leader"].to_string();
    same("/v3/election/leader", r#"{"name":"ZWw="}"#);
    same(
        "/v3/election/proclaim",
        &format!(r#"{{"leader":{leader},"value":"djI="}}"#),
    );
    same("/v3/election/leader", r#"{"name":"ZWw="}"#);
    same("/v3/election/resign", &format!(r#"{{"leader":{leader}}}"#));
    same("/v3/election/leader", r#"{"name":"ZWw="}"#);
    same(
        "/v3/election/proclaim",
        &format!(r#"{{"leader":{leader},"value":"djM="}}"#),
    );
    // Maintenance.
    same("/v3/maintenance/defragment", "{}");
    let (ev, mv) = both("/v3/maintenance/alarm", r#"{"action":"GET"}"#);
    // etcd 3.4 sends no header with alarms (3.5 does, as MetaStore).
    assert_eq!(mv.get("alarms"), ev.get("alarms"), "alarms: {ev} / {mv}");
    let (ev, mv) = both("/v3/maintenance/hash", "{}");
    assert!(mv["hash"].is_number(), "{mv}");
    assert_eq!(mv["header"]["revision"], ev["header"]["revision"]);
    // etcd maps HashKV onto the same path as Hash (so its gateway only ever
    // answers Hash); MetaStore also serves it at its own path.
    assert_eq!(post(e, "/v3/maintenance/hashkv", "{}", None).0, 404);
    let (code, body) = post(m, "/v3/maintenance/hashkv", "{}", None);
    assert_eq!(code, 200, "{body}");
    assert!(normalized(&body)["hash_revision"].is_string(), "{body}");
    let (ev, mv) = both("/v3/maintenance/status", "{}");
    for k in ["version", "leader", "raftIndex", "header"] {
        assert!(
            ev.get(k).is_some() == mv.get(k).is_some(),
            "status field {k}: etcd {ev} / ours {mv}"
        );
    }
    same(
        "/v3/maintenance/transfer-leadership",
        r#"{"targetID":"12345"}"#,
    );
    // Cluster: a learner added (IDs differ: etcd picks them at random),
    // updated, refused promotion (it never started), removed.
    let add = r#"{"peerURLs":["http://127.0.0.1:1"],"isLearner":true}"#;
    let ids: Vec<String> = [e, m]
        .iter()
        .map(|&port| {
            let (code, body) = post(port, "/v3/cluster/member/add", add, None);
            assert_eq!(code, 200, "{body}");
            let v: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["member"]["isLearner"], Value::Bool(true), "{body}");
            assert_eq!(v["members"].as_array().unwrap().len(), 2, "{body}");
            v["member"]["ID"].as_str().unwrap().to_owned()
        })
        .collect();
    let each = |path: &str, body: &dyn Fn(&str) -> String| {
        let (ec, eb) = post(e, path, &body(&ids[0]), None);
        let (mc, mb) = post(m, path, &body(&ids[1]), None);
        assert_eq!(mc, ec, "{path}: etcd said {eb}, we said {mb}");
        let strip = |v: Value| {
            let mut v = v;
            if let Some(ms) = v.get_mut("members").and_then(Value::as_array_mut) {
                for member in ms {
                    member.as_object_mut().unwrap().remove("ID");
                    member.as_object_mut().unwrap().remove("name");
                    member.as_object_mut().unwrap().remove("clientURLs");
                    member.as_object_mut().unwrap().remove("peerURLs");
                }
            }
            v
        };
        assert_eq!(strip(normalized(&mb)), strip(normalized(&eb)), "{path}");
    };
    each("/v3/cluster/member/promote", &|id| {
        format!(r#"{{"ID":"{id}"}}"#)
    });
    // etcd 3.4 drops the learner flag from its member list on an update (it
    // replaces the member's raft attributes with the request's); MetaStore
    // keeps it. The rest of the answer is the same.
    let (ec, eb) = post(
        e,
        "/v3/cluster/member/update",
        &format!(r#"{{"ID":"{}","peerURLs":["http://127.0.0.1:2"]}}"#, ids[0]),
        None,
    );
    let (mc, mb) = post(
        m,
        "/v3/cluster/member/update",
        &format!(r#"{{"ID":"{}","peerURLs":["http://127.0.0.1:2"]}}"#, ids[1]),
        None,
    );
    assert_eq!((mc, ec), (200, 200), "{mb} / {eb}");
    let learners = |b: &str| -> (usize, usize) {
        let v = normalized(b);
        let ms = v["members"].as_array().unwrap();
        let flagged = ms.iter().filter(|m| m["isLearner"] == Value::Bool(true));
        (ms.len(), flagged.count())
    };
    assert_eq!(learners(&eb), (2, 0), "{eb}");
    assert_eq!(learners(&mb), (2, 1), "{mb}");
    each("/v3/cluster/member/remove", &|id| {
        format!(r#"{{"ID":"{id}"}}"#)
    });
    each("/v3/cluster/member/remove", &|id| {
        format!(r#"{{"ID":"{id}"}}"#)
    });
}

engine_tests!(sync: gateway_lock_election_maintenance_cluster_as_etcd);
