//! MetaStore: a distributed metadata store that speaks the etcd v3 API.
//!
//! Rooms, imports flowing down only (a lower room never names a higher one):
//! - top floor: [`server`] (prepare, run) and [`bootstrap`] (who a new
//!   member is, discovery and join planning);
//! - [`api`]: gRPC/HTTP handlers, talking to the actors only;
//! - [`actors`]: RaftActor, WalWriter, ApplyActor, Lessor, Ticker, peers,
//!   client sessions, and the wiring of a member ([`actors::core`]);
//! - [`consensus`], [`state_machine`], [`watch`]: plain logic;
//! - [`storage`]: the shared vocabulary, the engine traits and the engines;
//! - ground floor, usable from every room: [`proto`], [`config`],
//!   [`error`], [`metrics`], [`status`], [`fatal`], [`tls`].

pub mod actors;
pub mod api;
pub mod bootstrap;
pub mod config;
pub mod consensus;
pub mod error;
pub mod failpoints;
pub mod fatal;
pub mod metrics;
pub mod proto;
pub mod server;
pub mod state_machine;
pub mod status;
pub mod storage;
pub mod tls;
pub mod watch;

#[cfg(test)]
mod layering {
    //! The rooms' import rule, checked on the source: a room names only
    //! rooms below it and the ground floor; the ground floor names only
    //! itself, `storage` and `proto`; `storage` names only `proto`.

    use std::path::Path;

    /// A room's floor; None for the ground floor.
    fn floor(room: &str) -> Option<u8> {
        Some(match room {
            "storage" => 1,
            "watch" | "consensus" => 2,
            "state_machine" => 3,
            "actors" => 4,
            "api" => 5,
            "bootstrap" => 6,
            "server" | "main" => 7,
            _ => return None,
        })
    }

    fn allowed(from: &str, to: &str) -> bool {
        if from == to || to == "proto" {
            return true;
        }
        match (floor(from), floor(to)) {
            (Some(1), _) => false,
            (Some(a), Some(b)) => b < a,
            (Some(_), None) => true,
            (None, Some(b)) => b == 1,
            (None, None) => true,
        }
    }

    /// Rooms a file's code (not its comments) names as `crate::room`.
    fn named(code: &str) -> Vec<String> {
        let mut out = Vec::new();
        for line in code.lines() {
            let line = line.trim_start();
            if line.starts_with("//") {
                continue;
            }
            let mut rest = line;
            while let Some(i) = rest.find("crate::") {
                rest = &rest[i + "crate::".len()..];
                let room: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if room.is_empty() && rest.starts_with('{') {
                    // `crate::{a, b::c}`
                    let group = &rest[1..];
                    let end = group.find('}').unwrap_or(group.len());
                    for part in group[..end].split(',') {
                        let r: String = part
                            .trim()
                            .chars()
                            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                            .collect();
                        out.push(r);
                    }
                }
                if !room.is_empty() {
                    out.push(room);
                }
            }
        }
        out
    }

    fn files(dir: &Path, into: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).expect("read src").flatten() {
            let p = e.path();
            if p.is_dir() {
                files(&p, into);
            } else if p.extension().is_some_and(|x| x == "rs") {
                into.push(p);
            }
        }
    }

    #[test]
    fn imports_flow_down() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut all = Vec::new();
        files(&src, &mut all);
        let mut wrong = Vec::new();
        for f in &all {
            let rel = f.strip_prefix(&src).expect("under src");
            let first = rel.components().next().expect("a component");
            let room = first.as_os_str().to_string_lossy();
            let room = room.trim_end_matches(".rs");
            if room == "lib" {
                continue; // declares the rooms (and holds this test)
            }
            let code = std::fs::read_to_string(f).expect("read a source file");
            for to in named(&code) {
                if !allowed(room, &to) {
                    wrong.push(format!("{} names crate::{to}", rel.display()));
                }
            }
        }
        assert!(wrong.len() < all.len(), "sanity");
        assert!(
            wrong.is_empty(),
            "imports against the floors:\n{}",
            wrong.join("\n")
        );
    }

    #[test]
    fn the_rule_catches_an_upward_import() {
        assert!(named("use crate::{actors::Core, proto};").contains(&"actors".to_owned()));
        assert!(!allowed("storage", "error"));
        assert!(!allowed("watch", "actors"));
        assert!(!allowed("status", "actors"));
        assert!(allowed("api", "actors"));
        assert!(allowed("config", "storage"));
    }
}
