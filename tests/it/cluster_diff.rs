//! A 3-member etcd 3.4 cluster and a 3-member MetaStore cluster side by
//! side: `member list`, `endpoint status --cluster` and the errors of
//! membership changes must read the same once IDs, ports and what differs
//! between any two clusters (raft indexes, sizes, versions) are masked.

use std::process::Output;
use std::time::Duration;

use serde_json::Value;

use crate::harness::{etcdctl_at, Cluster, Engine, Kind};

/// Replaces every member's ports by its position and every ID by a token.
struct Masks {
    ports: Vec<(String, String)>,
}

impl Masks {
    fn of(c: &Cluster) -> Masks {
        let mut ports = Vec::new();
        for (i, m) in c.members.iter().enumerate() {
            ports.push((m.port.to_string(), format!("<client{i}>")));
            ports.push((m.peer_port.to_string(), format!("<peer{i}>")));
        }
        Masks { ports }
    }

    fn text(&self, s: &str) -> String {
        let mut s = s.to_owned();
        for (from, to) in &self.ports {
            s = s.replace(from.as_str(), to);
        }
        // Hex member IDs at the start of `member list` lines and in messages
        // (etcdctl pads them to 16 places: the padding goes too).
        s.split('\n')
            .map(|line| {
                line.split(' ')
                    .filter(|w| !w.is_empty())
                    .map(|w| {
                        let core = w.trim_end_matches(',');
                        let hex = core.len() >= 12 && core.chars().all(|c| c.is_ascii_hexdigit());
                        if hex {
                            w.replacen(core, "<id>", 1)
                        } else {
                            w.to_owned()
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn stderr_lines(out: &Output) -> String {
    crate::etcdctl::normalise_stderr(&String::from_utf8_lossy(&out.stderr))
}

/// (exit code, stdout, stderr) of etcdctl on the first member, masked.
fn run(c: &Cluster, m: &Masks, args: &[&str]) -> (Option<i32>, String, String) {
    let out = etcdctl_at(&c.members[0].endpoint(), args);
    (
        out.status.code(),
        m.text(&String::from_utf8_lossy(&out.stdout)),
        m.text(&stderr_lines(&out)),
    )
}

fn member_ids(c: &Cluster) -> Vec<String> {
    let out = etcdctl_at(&c.members[0].endpoint(), &["member", "list"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split(',').next().unwrap().to_owned())
        .collect()
}

/// The shape of `endpoint status --cluster -w json`: per endpoint, the
/// masked endpoint, whether it leads, whether all agree on the leader,
/// and which fields are there.
fn status_shape(c: &Cluster, m: &Masks) -> Vec<String> {
    let out = etcdctl_at(
        &c.members[0].endpoint(),
        &["endpoint", "status", "--cluster", "-w", "json"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let items = v.as_array().unwrap();
    let leaders: Vec<u64> = items
        .iter()
        .map(|e| e["Status"]["leader"].as_u64().unwrap_or(0))
        .collect();
    let mut shape: Vec<String> = items
        .iter()
        .map(|e| {
            let s = &e["Status"];
            let mut keys: Vec<&str> = s.as_object().unwrap().keys().map(String::as_str).collect();
            // Zero-valued fields are left out of the JSON; dbSize may be 0
            // for an empty MetaStore memory store.
            keys.retain(|k| !matches!(*k, "dbSize" | "dbSizeInUse"));
            keys.sort_unstable();
            format!(
                "{} agreed={} applied={} keys={keys:?}",
                m.text(e["Endpoint"].as_str().unwrap()),
                leaders.iter().all(|l| *l == leaders[0]),
                s["raftAppliedIndex"].as_u64().is_some(),
            )
        })
        .collect();
    shape.sort();
    let ids: Vec<u64> = items
        .iter()
        .map(|e| e["Status"]["header"]["member_id"].as_u64().unwrap())
        .collect();
    let leading = ids.iter().filter(|id| leaders.contains(id)).count();
    shape.push(format!("members that lead: {leading}"));
    shape
}

#[test]
fn cluster_commands_read_as_against_etcd() {
    let (etcd, ms) = std::thread::scope(|s| {
        let etcd = s.spawn(|| Cluster::start_kinds(&[Kind::Etcd; 3], &[]));
        let ms = Cluster::start(3, Engine::Memory, &[]);
        (etcd.join().unwrap(), ms)
    });
    let (me, mm) = (Masks::of(&etcd), Masks::of(&ms));
    // Members publish their names and client URLs shortly after start.
    let mut etcd = etcd;
    let mut ms = ms;
    etcd.wait_leader(Duration::from_secs(10));
    ms.wait_leader(Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(500));

    let mut diffs = Vec::new();
    let mut check =
        |what: &str, a: (Option<i32>, String, String), b: (Option<i32>, String, String)| {
            if a != b {
                diffs.push(format!("{what}:\n  etcd:      {a:?}\n  metastore: {b:?}"));
            }
        };
    // member list, sorted (IDs differ, so does their order).
    let sorted = |mut r: (Option<i32>, String, String)| {
        let mut lines: Vec<&str> = r.1.lines().collect();
        lines.sort_unstable();
        r.1 = lines.join("\n");
        r
    };
    check(
        "member list",
        sorted(run(&etcd, &me, &["member", "list"])),
        sorted(run(&ms, &mm, &["member", "list"])),
    );
    check(
        "member list -w table",
        sorted(run(&etcd, &me, &["member", "list", "-w", "table"])),
        sorted(run(&ms, &mm, &["member", "list", "-w", "table"])),
    );
    check(
        "endpoint status --cluster (shape)",
        (None, status_shape(&etcd, &me).join("\n"), String::new()),
        (None, status_shape(&ms, &mm).join("\n"), String::new()),
    );
    // Errors of membership changes.
    for args in [
        vec!["member", "remove", "1234"],
        vec!["member", "update", "1234", "--peer-urls=http://127.0.0.1:9"],
        vec!["member", "promote", "1234"],
        vec!["member", "add", "x", "--peer-urls=127.0.0.1:9"],
    ] {
        check(
            &format!("{args:?}"),
            run(&etcd, &me, &args),
            run(&ms, &mm, &args),
        );
    }
    let voter_e = member_ids(&etcd)[1].clone();
    let voter_m = member_ids(&ms)[1].clone();
    check(
        "member promote of a voter",
        run(&etcd, &me, &["member", "promote", &voter_e]),
        run(&ms, &mm, &["member", "promote", &voter_m]),
    );
    // A learner that never started: it cannot be promoted, and no second
    // learner may join.
    let learner = |c: &Cluster| {
        let url = format!(
            "--peer-urls=http://127.0.0.1:{}",
            crate::harness::free_port()
        );
        // Both refuse it until every voter was connected for 5 s.
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        let out = loop {
            let out = etcdctl_at(
                &c.members[0].endpoint(),
                &["member", "add", "l1", &url, "--learner"],
            );
            if out.status.success() || std::time::Instant::now() > deadline {
                break out;
            }
            std::thread::sleep(Duration::from_millis(250));
        };
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.split_whitespace().nth(1).unwrap().to_owned()
    };
    let (le, lm) = (learner(&etcd), learner(&ms));
    // (Both refuse any MemberAdd until every voter was connected for 5 s;
    // the learner above waited for that.)
    let taken_e = format!("--peer-urls=http://127.0.0.1:{}", etcd.members[1].peer_port);
    let taken_m = format!("--peer-urls=http://127.0.0.1:{}", ms.members[1].peer_port);
    check(
        "member add with a peer URL in use",
        run(&etcd, &me, &["member", "add", "x", &taken_e]),
        run(&ms, &mm, &["member", "add", "x", &taken_m]),
    );

    check(
        "member promote of a learner that is not in sync",
        run(&etcd, &me, &["member", "promote", &le]),
        run(&ms, &mm, &["member", "promote", &lm]),
    );
    check(
        "member add of a second learner",
        run(
            &etcd,
            &me,
            &[
                "member",
                "add",
                "l2",
                "--peer-urls=http://127.0.0.1:7",
                "--learner",
            ],
        ),
        run(
            &ms,
            &mm,
            &[
                "member",
                "add",
                "l2",
                "--peer-urls=http://127.0.0.1:7",
                "--learner",
            ],
        ),
    );
    check(
        "member remove of the learner",
        run(&etcd, &me, &["member", "remove", &le]),
        run(&ms, &mm, &["member", "remove", &lm]),
    );
    // MemberUpdate: a second peer URL for member m3.
    let id_of = |c: &Cluster, name: &str| {
        let out = etcdctl_at(&c.members[0].endpoint(), &["member", "list"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find(|l| l.contains(&format!(", {name}, ")))
            .and_then(|l| l.split(',').next())
            .unwrap()
            .to_owned()
    };
    let (ue, um) = (id_of(&etcd, "m3"), id_of(&ms, "m3"));
    let two = |c: &Cluster| format!("--peer-urls={},http://127.0.0.1:1", c.members[2].peer_url());
    let (two_e, two_m) = (two(&etcd), two(&ms));
    check(
        "member update",
        run(&etcd, &me, &["member", "update", &ue, &two_e]),
        run(&ms, &mm, &["member", "update", &um, &two_m]),
    );
    check(
        "member list after the update",
        sorted(run(&etcd, &me, &["member", "list"])),
        sorted(run(&ms, &mm, &["member", "list"])),
    );
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
}
