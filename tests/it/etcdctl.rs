//! etcdctl against etcd 3.4 and against MetaStore, command by command: exit
//! code, stdout and stderr must be identical once cluster/member ids and the
//! raft term (which differ between any two clusters) are masked, and the
//! client's log lines lose their timestamps and random client ids.

use std::process::Output;

use metastore::proto::etcdserverpb::RangeResponse;
use serde_json::Value;

use crate::harness::{Engine, Pair, Server};

/// One etcdctl invocation: arguments, and stdin (for `txn`).
pub(crate) struct Cmd {
    args: Vec<String>,
    stdin: Option<String>,
    /// stdout is a protobuf RangeResponse (`get -w protobuf`).
    proto: bool,
}

pub(crate) fn c(line: &str) -> Cmd {
    Cmd {
        args: split(line),
        stdin: None,
        proto: false,
    }
}

/// A `get ... -w protobuf`: its output is decoded before comparing.
fn c_proto(line: &str) -> Cmd {
    Cmd {
        proto: true,
        ..c(line)
    }
}

/// `etcdctl txn` reading compares, success ops and failure ops from stdin,
/// each section ended by an empty line.
pub(crate) fn txn(args: &str, compares: &[&str], success: &[&str], failure: &[&str]) -> Cmd {
    let mut input = String::new();
    for section in [compares, success, failure] {
        for line in section {
            input.push_str(line);
            input.push('\n');
        }
        input.push('\n');
    }
    txn_raw(args, &input)
}

fn txn_raw(args: &str, input: &str) -> Cmd {
    Cmd {
        args: split(&format!("txn {args}")),
        stdin: Some(input.to_owned()),
        proto: false,
    }
}

/// Splits on spaces; `'...'` groups words (and may be empty).
fn split(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    for ch in line.chars() {
        match ch {
            '\'' => {
                quoted = !quoted;
                any = true;
            }
            ' ' if !quoted => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            _ => {
                cur.push(ch);
                any = true;
            }
        }
    }
    if any {
        out.push(cur);
    }
    out
}

/// What a command printed, normalised.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Seen {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn mask_id(v: &mut Value) {
    if v.as_u64().is_some_and(|n| n != 0) {
        *v = Value::String("<id>".into());
    }
}

fn mask_json(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for header in ["header", "Header"] {
                if let Some(Value::Object(h)) = map.get_mut(header) {
                    for k in ["cluster_id", "member_id", "raft_term"] {
                        if let Some(x) = h.get_mut(k) {
                            mask_id(x);
                        }
                    }
                }
            }
            map.values_mut().for_each(mask_json);
        }
        Value::Array(items) => items.iter_mut().for_each(mask_json),
        _ => {}
    }
}

pub(crate) fn normalise_stdout(s: &str) -> String {
    s.lines()
        .map(|line| {
            if let Ok(mut v) = serde_json::from_str::<Value>(line) {
                if v.is_object() {
                    mask_json(&mut v);
                    return v.to_string();
                }
            }
            for field in ["\"ClusterID\" : ", "\"MemberID\" : ", "\"RaftTerm\" : "] {
                if let Some(n) = line.strip_prefix(field) {
                    if n != "0" {
                        return format!("{field}<id>");
                    }
                }
            }
            line.to_owned()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// etcdctl's log lines without what differs between runs (time, target).
pub(crate) fn normalise_stderr(s: &str) -> String {
    s.lines()
        .map(|line| match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(mut log)) => {
                log.remove("ts");
                log.remove("target");
                Value::Object(log).to_string()
            }
            _ => line.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A protobuf RangeResponse, decoded, ids and term masked, as Debug text.
fn normalise_proto(bytes: &[u8]) -> String {
    use prost::Message as _;
    let mut r = RangeResponse::decode(bytes).expect("etcdctl printed a RangeResponse");
    if let Some(h) = r.header.as_mut() {
        h.cluster_id = u64::from(h.cluster_id != 0);
        h.member_id = u64::from(h.member_id != 0);
        h.raft_term = u64::from(h.raft_term != 0);
    }
    format!("{r:?}")
}

fn seen(out: Output, proto: bool) -> Seen {
    Seen {
        code: out.status.code(),
        stdout: if proto && out.status.success() {
            normalise_proto(&out.stdout)
        } else {
            normalise_stdout(&String::from_utf8_lossy(&out.stdout))
        },
        stderr: normalise_stderr(&String::from_utf8_lossy(&out.stderr)),
    }
}

fn exec(s: &Server, cmd: &Cmd) -> Seen {
    let args: Vec<&str> = cmd.args.iter().map(String::as_str).collect();
    let out = match &cmd.stdin {
        Some(input) => s.etcdctl_stdin(&args, input),
        None => s.etcdctl(&args),
    };
    seen(out, cmd.proto)
}

/// Runs every command on etcd, then on MetaStore; panics listing each
/// command whose normalised output differs. Returns etcd's outputs.
pub(crate) fn run(pair: &Pair, cmds: &[Cmd]) -> Vec<Seen> {
    let mut outs = Vec::new();
    let mut diffs = Vec::new();
    for (i, cmd) in cmds.iter().enumerate() {
        let want = exec(&pair.etcd, cmd);
        let got = exec(&pair.ms, cmd);
        if want != got {
            diffs.push(format!(
                "command {i}: etcdctl {:?} stdin={:?}\n  etcd:      {want:?}\n  metastore: {got:?}",
                cmd.args, cmd.stdin
            ));
        }
        outs.push(want);
    }
    assert!(
        diffs.is_empty(),
        "etcdctl output differs in {} of {} commands:\n{}",
        diffs.len(),
        cmds.len(),
        diffs.join("\n")
    );
    outs
}

const SERVER_ERROR: Option<i32> = Some(1);

fn put_and_get_in_every_output_format(engine: Engine) {
    let pair = Pair::start(engine);
    let mut cmds = vec![
        /* 0 */ c("put foo bar"),
        /* 1 */ c("put foo2 baz"),
        /* 2 */ c("put --prev-kv foo bar2"),
        /* 3 */ c("put -w json foo3 qux"),
        /* 4 */ c("put -w fields --prev-kv foo3 quux"),
        /* 5 */ c("put zeta ''"),
        /* 6 */ c("get foo"),
        /* 7 */ c("get foo -w json"),
        /* 8 */ c("get foo -w fields"),
        /* 9 */ c("get foo -w table"),
        /* 10 */ c_proto("get --prefix foo -w protobuf"),
        /* 11 */ c("get --prefix foo"),
        /* 12 */ c("get --from-key foo2"),
        /* 13 */ c("get foo foo3"),
        /* 14 */ c("get --limit 1 --prefix foo -w json"),
        /* 15 */ c("get --limit 2 --prefix foo"),
        /* 16 */ c("get --rev 2 foo"),
        /* 17 */ c("get --rev 3 --prefix foo -w json"),
        /* 18 */ c("get --keys-only --prefix foo"),
        /* 19 */ c("get --print-value-only --prefix foo"),
        /* 20 */ c("get --keys-only --print-value-only --prefix foo"),
        /* 21 */ c("get missing"),
        /* 22 */ c("get missing -w json"),
        /* 23 */ c("get --prefix ''"),
        /* 24 */ c("get --from-key ''"),
        /* 25 */ c("get --hex --prefix foo"),
        /* 26 */ c("get --consistency=s foo"),
        /* 27 */ c("get zeta -w json"),
        /* 28 */ c("get --rev 100 foo"),
        /* 29 */ c("get --rev 100 foo -w json"),
        /* 30 */ c("put '' v"),
        /* 31 */ c("get ''"),
        /* 32 */ c("put foo bar --lease=3039"),
        /* 33 */ c("put newkey --ignore-value"),
        /* 34 */ c("put foo --ignore-value"),
        /* 35 */ c("put foo again --ignore-lease"),
        /* 36 */ c("get foo -w json"),
        /* 37 */ c("get --prefix f --limit 2 --keys-only -w fields"),
    ];
    for by in ["CREATE", "KEY", "MODIFY", "VALUE", "VERSION"] {
        for order in ["", "ASCEND", "DESCEND"] {
            let order = if order.is_empty() {
                String::new()
            } else {
                format!(" --order={order}")
            };
            cmds.push(c(&format!("get --prefix foo --sort-by={by}{order}")));
            cmds.push(c(&format!(
                "get --from-key '' --limit 2 --sort-by={by}{order} -w json"
            )));
        }
    }
    let out = run(&pair, &cmds);
    assert_eq!(out[0].stdout, "OK");
    assert_eq!(out[2].stdout, "OK\nfoo\nbar");
    assert_eq!(out[6].stdout, "foo\nbar2");
    assert_eq!(out[11].stdout, "foo\nbar2\nfoo2\nbaz\nfoo3\nquux");
    assert_eq!(out[16].stdout, "foo\nbar");
    assert_eq!(out[19].stdout, "bar2\nbaz\nquux");
    assert_eq!(out[21].stdout, "");
    assert_eq!(out[28].code, SERVER_ERROR);
    assert!(out[28]
        .stderr
        .ends_with("Error: etcdserver: mvcc: required revision is a future revision"));
    assert!(out[30]
        .stderr
        .ends_with("Error: etcdserver: key is not provided"));
    assert!(out[32]
        .stderr
        .ends_with("Error: etcdserver: requested lease not found"));
    assert!(out[33].stderr.ends_with("Error: etcdserver: key not found"));
    assert!(
        out[36].stdout.contains("\"version\":4"),
        "{}",
        out[36].stdout
    );
}

fn deletes_and_txns_from_stdin(engine: Engine) {
    let pair = Pair::start(engine);
    let cmds = vec![
        /* 0 */ c("put a 1"),
        /* 1 */ c("put b 2"),
        /* 2 */ c("put c 3"),
        /* 3 */ c("put d 4"),
        /* 4 */ c("put e 5"),
        /* 5 */ c("put e2 6"),
        /* 6 */ c("del a"),
        /* 7 */ c("del a"),
        /* 8 */ c("del --prev-kv b"),
        /* 9 */ c("del --prev-kv c d"),
        /* 10 */ c("del --prefix e -w json"),
        /* 11 */ c("del --from-key d -w fields"),
        /* 12 */ c("del missing -w json"),
        /* 13 */ c("del --prev-kv missing"),
        /* 14 */ c("get --from-key ''"),
        // Compares fail on a missing key's value; the failure branch runs.
        /* 15 */
        txn(
            "",
            &[r#"val("x") = """#],
            &["put x then"],
            &["put x else", "get x"],
        ),
        /* 16 */
        txn(
            "-w json",
            &[r#"ver("x") = "1""#, r#"val("x") = "else""#],
            &["get x", "del x", r#"put y "hello world""#],
            &["put never 1"],
        ),
        /* 17 */
        txn(
            "-w fields",
            &[r#"create("y") > "0""#, r#"mod("y") < "100""#],
            &[
                "get y --rev=9",
                "get --from-key a",
                "get --prefix y --keys-only",
            ],
            &[],
        ),
        /* 18 */ txn("", &[r#"mod("y") = "0""#], &[], &["put z 1"]),
        /* 19 */ txn("", &[], &[], &[]),
        // Server-side errors.
        /* 20 */ txn("", &[], &["put k 1", "put k 2"], &[]),
        /* 21 */ txn("", &[], &["put k 1 --lease=3039"], &[]),
        /* 22 */ txn("", &[], &["put k --ignore-value"], &[]),
        /* 23 */ txn("", &[], &["get y --rev=100"], &[]),
        /* 24 */ txn("-w json", &[], &["put k 1", "get k", "del nothing"], &[]),
        // Client-side errors (the same etcdctl, so only a sanity check).
        /* 25 */
        txn("", &[r#"bogus("x") = "1""#], &[], &[]),
        /* 26 */ txn_raw("", "val(\"y\") = \"hello world\"\n\nput z 1\n"),
        /* 27 */ c("get --prefix '' -w json"),
    ];
    let out = run(&pair, &cmds);
    assert_eq!(out[6].stdout, "1");
    assert_eq!(out[7].stdout, "0");
    assert_eq!(out[8].stdout, "1\nb\n2");
    assert_eq!(out[9].stdout, "1\nc\n3");
    assert_eq!(out[14].stdout, "");
    assert_eq!(out[15].stdout, "FAILURE\n\nOK\n\nx\nelse");
    assert!(
        out[16].stdout.contains("\"succeeded\":true"),
        "{}",
        out[16].stdout
    );
    assert_eq!(out[18].stdout, "FAILURE\n\nOK");
    assert_eq!(out[19].stdout, "SUCCESS");
    assert!(out[20]
        .stderr
        .ends_with("Error: etcdserver: duplicate key given in txn request"));
    assert!(out[21]
        .stderr
        .ends_with("Error: etcdserver: requested lease not found"));
    assert!(out[22].stderr.ends_with("Error: etcdserver: key not found"));
    assert_eq!(out[23].code, SERVER_ERROR);
}

fn compaction_and_reads_of_old_revisions(engine: Engine) {
    let pair = Pair::start(engine);
    let cmds = vec![
        /* 0 */ c("put k v1"),
        /* 1 */ c("put k v2"),
        /* 2 */ c("put k v3"),
        /* 3 */ c("put k v4"),
        /* 4 */ c("put k v5"),
        /* 5 */ c("compaction 3"),
        /* 6 */ c("get k --rev=2"),
        /* 7 */ c("get k --rev=2 -w json"),
        /* 8 */ c("get k --rev=3"),
        /* 9 */ c("get k --rev=3 -w json"),
        /* 10 */ c("get k"),
        /* 11 */ c("compaction 3"),
        /* 12 */ c("compaction 2"),
        /* 13 */ c("compaction 10"),
        /* 14 */ c("compaction --physical 5"),
        /* 15 */ c("get k --rev=4"),
        /* 16 */ c("get k --rev=5"),
        /* 17 */ txn("", &[], &["get k --rev=5"], &[]),
        /* 18 */ txn("", &[], &["get k --rev=4"], &[]),
        /* 19 */ c("del k"),
        /* 20 */ c("compaction 7 -w json"),
        /* 21 */ c("get --prefix '' --rev=7 -w json"),
        /* 22 */ c("get --prefix '' --rev=6"),
        /* 23 */ c("compaction 0"),
        /* 24 */ c("compaction abc"),
    ];
    let out = run(&pair, &cmds);
    assert_eq!(out[5].stdout, "compacted revision 3");
    assert_eq!(out[6].code, SERVER_ERROR);
    assert!(out[6]
        .stderr
        .ends_with("Error: etcdserver: mvcc: required revision has been compacted"));
    assert_eq!(out[8].stdout, "k\nv2");
    assert_eq!(out[10].stdout, "k\nv5");
    assert_eq!(out[11].code, SERVER_ERROR);
    assert!(out[13]
        .stderr
        .ends_with("Error: etcdserver: mvcc: required revision is a future revision"));
    assert_eq!(out[14].stdout, "compacted revision 5");
    assert_eq!(out[15].code, SERVER_ERROR);
    assert_eq!(out[16].stdout, "k\nv4");
    assert_eq!(out[17].stdout, "SUCCESS\n\nk\nv4");
    assert_eq!(out[18].code, SERVER_ERROR);
    assert_eq!(out[22].code, SERVER_ERROR);
}

engine_tests!(sync: put_and_get_in_every_output_format, deletes_and_txns_from_stdin, compaction_and_reads_of_old_revisions);

/// `etcdctl <command> -w json` on `s`, parsed.
fn json_of(s: &Server, command: &str) -> Value {
    let mut args = split(command);
    if !command.contains("-w ") {
        args.extend(["-w".to_owned(), "json".to_owned()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = s.etcdctl(&args);
    assert!(
        out.status.success(),
        "{command}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("etcdctl printed JSON")
}

/// The granted TTLs of the leases `lease list` prints, in its order.
fn listed_ttls(s: &Server) -> Vec<i64> {
    let list = json_of(s, "lease list -w json");
    list["leases"]
        .as_array()
        .map(|ls| {
            ls.iter()
                .map(|l| {
                    let id = l["id"].as_u64().expect("a lease ID");
                    let ttl = json_of(s, &format!("lease timetolive {id:x} -w json"));
                    ttl["granted-ttl"].as_i64().expect("a granted TTL")
                })
                .collect()
        })
        .unwrap_or_default()
}

/// What a new user finds side by side with etcd: member list's header
/// (no revision), lease list's order (soonest expiry first), HashKV's
/// compact revision before any compaction (-1).
fn headers_lease_order_and_hashkv_as_etcd(engine: Engine) {
    let pair = Pair::start(engine);
    let header_keys = |s: &Server| {
        let v = json_of(s, "member list");
        let mut keys: Vec<String> = v["header"]
            .as_object()
            .expect("a header")
            .keys()
            .cloned()
            .collect();
        keys.sort();
        keys
    };
    for s in [&pair.etcd, &pair.ms] {
        let out = s.etcdctl(&["put", "k", "v"]);
        assert!(out.status.success());
        for ttl in ["300", "100", "200"] {
            let out = s.etcdctl(&["lease", "grant", ttl]);
            assert!(out.status.success());
        }
    }
    assert_eq!(header_keys(&pair.ms), header_keys(&pair.etcd));
    assert_eq!(listed_ttls(&pair.etcd), vec![100, 200, 300]);
    assert_eq!(listed_ttls(&pair.ms), listed_ttls(&pair.etcd));
    let compacted =
        |s: &Server| json_of(s, "endpoint hashkv")[0]["HashKV"]["compact_revision"].clone();
    assert_eq!(compacted(&pair.etcd), Value::from(-1));
    assert_eq!(compacted(&pair.ms), compacted(&pair.etcd));
}

engine_tests!(sync: headers_lease_order_and_hashkv_as_etcd);
