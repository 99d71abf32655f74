//! The checkers' tests: planted faults in a clean simulated history (each
//! kind caught), histories of real 1-, 3- and 5-member clusters under
//! every fault on both engines (no violation), and the shapes of known
//! etcd bugs as regression tests.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use metastore::proto::etcdserverpb::kv_client::KvClient;
use metastore::proto::etcdserverpb::CompactionRequest;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::lin::{self, Change};
use super::runner::{
    self, channel, current_rev, every_fault, judge, signal, watcher_specs, Faulty, Plan, Recorded,
    Recorder, PREFIX,
};
use super::watch::{self, Event, Item, Log, Spec};
use super::{Call, Kind, Kv, Op, Ret, Violations};
use crate::harness::Engine;

// ---------------------------------------------------------------------
// A clean history from a sequential model, and faults planted in it.
// ---------------------------------------------------------------------

/// A one-member store run one call at a time: a history that is right by
/// construction, for the checkers' planted-fault tests.
struct Sim {
    rev: i64,
    state: BTreeMap<String, Kv>,
    /// The state after each revision.
    states: BTreeMap<i64, BTreeMap<String, Kv>>,
    t: u64,
    calls: Vec<Call>,
    logs: Vec<Log>,
}

impl Sim {
    fn new() -> Sim {
        let logs = watcher_specs()
            .into_iter()
            .map(|(id, spec)| Log {
                name: format!("sim/w{id}"),
                spec,
                items: vec![Item::Created { rev: 1, start: 2 }],
            })
            .collect();
        let mut states = BTreeMap::new();
        states.insert(1, BTreeMap::new());
        Sim {
            rev: 1,
            state: BTreeMap::new(),
            states,
            t: 0,
            calls: Vec::new(),
            logs,
        }
    }

    fn record(&mut self, op: Op, ret: Ret) {
        self.t += 10;
        self.calls.push(Call {
            client: 0,
            op,
            start: self.t,
            end: self.t + 5,
            ret,
        });
    }

    /// Applies one revision's changes and delivers its events.
    fn apply(&mut self, changes: &[(String, Option<String>)]) -> i64 {
        self.rev += 1;
        let rev = self.rev;
        let mut chs = Vec::new();
        let mut sorted = changes.to_vec();
        sorted.sort();
        for (key, value) in sorted {
            let before = self.state.get(&key).cloned();
            let after = value.map(|v| Kv {
                key: key.clone(),
                value: v,
                create: before.as_ref().map_or(rev, |b| b.create),
                modified: rev,
                version: before.as_ref().map_or(1, |b| b.version + 1),
            });
            match &after {
                Some(kv) => self.state.insert(key.clone(), kv.clone()),
                None => self.state.remove(&key),
            };
            chs.push(Change { key, after, before });
        }
        self.states.insert(rev, self.state.clone());
        for log in &mut self.logs {
            let spec = &log.spec;
            let events: Vec<Event> = chs
                .iter()
                .filter(|c| in_range(spec, &c.key))
                .filter(|c| {
                    if c.after.is_some() {
                        !spec.no_put
                    } else {
                        !spec.no_delete
                    }
                })
                .map(|c| Event {
                    kv: c.after.clone().unwrap_or(Kv {
                        key: c.key.clone(),
                        value: String::new(),
                        create: 0,
                        modified: rev,
                        version: 0,
                    }),
                    delete: c.after.is_none(),
                    prev: if spec.prev_kv { c.before.clone() } else { None },
                })
                .collect();
            if !events.is_empty() {
                log.items.push(Item::Events { rev, events });
            }
        }
        rev
    }

    fn put(&mut self, key: &str, value: &str) {
        let rev = self.apply(&[(key.into(), Some(value.into()))]);
        self.record(
            Op::Put {
                key: key.into(),
                value: value.into(),
            },
            Ret::Put { rev },
        );
    }

    fn cas(&mut self, key: &str, expect: i64, value: &str, also: Option<&str>) {
        let cur = self.state.get(key).map_or(0, |k| k.modified);
        let ret = if cur == expect {
            let mut ch = vec![(key.to_owned(), Some(value.to_owned()))];
            if let Some(a) = also.filter(|a| *a != key) {
                ch.push((a.to_owned(), Some(value.to_owned())));
            }
            Ret::Cas {
                rev: self.apply(&ch),
                succeeded: true,
            }
        } else {
            Ret::Cas {
                rev: self.rev,
                succeeded: false,
            }
        };
        self.record(
            Op::Cas {
                key: key.into(),
                expect,
                value: value.into(),
                also: also.map(str::to_owned),
            },
            ret,
        );
    }

    fn delete(&mut self, key: &str) {
        let ret = if self.state.contains_key(key) {
            Ret::Delete {
                rev: self.apply(&[(key.into(), None)]),
                deleted: 1,
            }
        } else {
            Ret::Delete {
                rev: self.rev,
                deleted: 0,
            }
        };
        self.record(Op::Delete { key: key.into() }, ret);
    }

    fn get(&mut self, key: &str) {
        let kvs = self.state.get(key).cloned().into_iter().collect();
        self.record(
            Op::Get { key: key.into() },
            Ret::Read { rev: self.rev, kvs },
        );
    }

    fn range(&mut self) {
        let kvs = self.state.values().cloned().collect();
        self.record(
            Op::Range {
                prefix: PREFIX.into(),
            },
            Ret::Read { rev: self.rev, kvs },
        );
    }

    fn progress(&mut self) {
        for log in &mut self.logs {
            log.items.push(Item::Progress { rev: self.rev });
        }
    }

    fn judge(&self) -> Violations {
        let seen = watch::seen(&self.logs);
        let (c, mut v) = lin::check(&self.calls, &seen, 1);
        for l in &self.logs {
            watch::check(l, &c, Some(self.rev), 0, &mut v);
        }
        v
    }
}

fn in_range(spec: &Spec, key: &str) -> bool {
    if spec.range_end.is_empty() {
        key == spec.key
    } else {
        key >= spec.key.as_str() && key < spec.range_end.as_str()
    }
}

/// The index of the history's first put.
fn first_put(s: &Sim) -> usize {
    s.calls
        .iter()
        .position(|c| matches!(c.op, Op::Put { .. }))
        .expect("a put")
}

/// 150 random calls over four keys, a progress notification every
/// seventh, a final range.
fn clean() -> Sim {
    let mut s = Sim::new();
    let mut rng = StdRng::seed_from_u64(7);
    for i in 0..150 {
        let key = format!("{PREFIX}k{}", rng.gen_range(0..4));
        let value = format!("v{i}");
        match rng.gen_range(0..10) {
            0..=2 => s.put(&key, &value),
            3..=4 => {
                let expect = if rng.gen_bool(0.7) {
                    s.state.get(&key).map_or(0, |k| k.modified)
                } else {
                    rng.gen_range(0..s.rev)
                };
                let other = format!("{PREFIX}k{}", rng.gen_range(0..4));
                s.cas(
                    &key,
                    expect,
                    &value,
                    rng.gen_bool(0.5).then_some(other.as_str()),
                );
            }
            5 => s.delete(&key),
            6..=8 => s.get(&key),
            _ => s.range(),
        }
        if i % 7 == 0 {
            s.progress();
        }
    }
    s.range();
    s.progress();
    s
}

fn caught(s: &Sim, kind: Kind) {
    let v = s.judge();
    assert!(
        v.kinds().contains(&kind),
        "{kind:?} not caught; found:\n{}",
        v.summary(10)
    );
    eprintln!("caught: {}", v.all.iter().find(|x| x.kind == kind).unwrap());
}

/// Index of the first Events item in log `l` matching `f`.
fn event_item(s: &Sim, l: usize, f: impl Fn(i64, &[Event]) -> bool) -> usize {
    s.logs[l]
        .items
        .iter()
        .position(|it| matches!(it, Item::Events { rev, events } if f(*rev, events)))
        .expect("such an event in the clean history")
}

#[test]
fn checker_clean_history_passes() {
    let s = clean();
    let v = s.judge();
    assert!(v.all.is_empty(), "{}", v.summary(10));
    // The history has what the planted tests need.
    let two = s.logs[0]
        .items
        .iter()
        .any(|it| matches!(it, Item::Events { events, .. } if events.len() == 2));
    assert!(two, "no two-key txn in the clean history");
}

#[test]
fn checker_catches_a_stale_read() {
    let mut s = clean();
    // A read at a revision older than the last write, invoked after it.
    let key = format!("{PREFIX}k0");
    let last = s.state.get(&key).expect("k0 exists at the end").modified;
    let old = last - 1;
    let kvs = s.states[&old].get(&key).cloned().into_iter().collect();
    s.t += 100;
    s.calls.push(Call {
        client: 1,
        op: Op::Get { key },
        start: s.t,
        end: s.t + 5,
        ret: Ret::Read { rev: old, kvs },
    });
    caught(&s, Kind::Stale);
}

#[test]
fn checker_catches_a_lost_acknowledged_write() {
    let mut s = clean();
    // The final range no longer holds the last write to k1 (its revision
    // still counts: as after a member lost it and kept its numbering).
    let key = format!("{PREFIX}k1");
    let kv = s.state.get(&key).expect("k1 exists at the end").clone();
    let older = s.states[&(kv.modified - 1)].get(&key).cloned();
    let Some(Call {
        ret: Ret::Read { kvs, .. },
        ..
    }) = s.calls.last_mut()
    else {
        unreachable!("the clean history ends with a range")
    };
    kvs.retain(|k| k.key != key);
    kvs.extend(older);
    caught(&s, Kind::ReadMismatch);
}

#[test]
fn checker_catches_a_reused_revision() {
    let mut s = clean();
    // Two acknowledged puts at one revision.
    let puts: Vec<usize> = (0..s.calls.len())
        .filter(|&i| matches!(s.calls[i].op, Op::Put { .. }))
        .collect();
    let Ret::Put { rev } = s.calls[puts[0]].ret else {
        unreachable!()
    };
    s.calls[puts[1]].ret = Ret::Put { rev };
    caught(&s, Kind::RevisionConflict);
}

#[test]
fn checker_catches_a_wrong_txn_outcome() {
    let mut s = clean();
    // A txn that failed though its compare held.
    let i = s
        .calls
        .iter()
        .position(|c| {
            matches!(
                c.ret,
                Ret::Cas {
                    succeeded: false,
                    ..
                }
            )
        })
        .expect("a failed txn");
    let (key, rev) = match (&s.calls[i].op, &s.calls[i].ret) {
        (Op::Cas { key, .. }, Ret::Cas { rev, .. }) => (key.clone(), *rev),
        _ => unreachable!(),
    };
    let held = s.states[&rev].get(&key).map_or(0, |k| k.modified);
    if let Op::Cas { expect, .. } = &mut s.calls[i].op {
        *expect = held;
    }
    caught(&s, Kind::TxnMismatch);
}

#[test]
fn checker_catches_a_read_of_the_future() {
    let mut s = clean();
    // A get answered before the put it shows was invoked.
    let i = first_put(&s);
    let (key, value, rev) = match (&s.calls[i].op, &s.calls[i].ret) {
        (Op::Put { key, value }, Ret::Put { rev }) => (key.clone(), value.clone(), *rev),
        _ => unreachable!(),
    };
    let kv = s.states[&rev][&key].clone();
    assert_eq!(kv.value, value);
    let start = s.calls[i].start;
    s.calls.push(Call {
        client: 2,
        op: Op::Get { key },
        start: start - 4,
        end: start - 2,
        ret: Ret::Read { rev, kvs: vec![kv] },
    });
    caught(&s, Kind::Future);
}

#[test]
fn checker_places_unknown_outcomes_and_drops_unseen_ones() {
    let mut s = clean();
    // Half the writes lost their answers: the events and reads place them.
    for c in s.calls.iter_mut().step_by(2) {
        if c.op.is_write() {
            c.ret = Ret::Unknown;
        }
    }
    // A write that never took effect and was never answered.
    s.calls.push(Call {
        client: 3,
        op: Op::Put {
            key: format!("{PREFIX}k2"),
            value: "never".into(),
        },
        start: 1,
        end: s.t + 100,
        ret: Ret::Unknown,
    });
    let v = s.judge();
    assert!(v.all.is_empty(), "{}", v.summary(10));
}

#[test]
fn checker_catches_a_value_nobody_wrote_and_a_revision_gap() {
    let mut s = clean();
    // The put behind one event is gone from the record: its value comes
    // from nowhere.
    let i = first_put(&s);
    s.calls.remove(i);
    caught(&s, Kind::UnknownValue);
    // A revision no write or event explains.
    let mut s = clean();
    let i = s
        .calls
        .iter()
        .rposition(|c| {
            matches!(c.op, Op::Delete { .. }) && matches!(c.ret, Ret::Delete { deleted: 1, .. })
        })
        .expect("a delete");
    let Ret::Delete { rev, .. } = s.calls[i].ret else {
        unreachable!()
    };
    s.calls.remove(i);
    for l in &mut s.logs {
        l.items
            .retain(|it| !matches!(it, Item::Events { rev: r, .. } if *r == rev));
    }
    caught(&s, Kind::RevisionGap);
}

#[test]
fn checker_catches_a_dropped_event() {
    let mut s = clean();
    let i = event_item(&s, 0, |_, e| e.len() == 1);
    s.logs[0].items.remove(i);
    caught(&s, Kind::MissingEvent);
}

#[test]
fn checker_catches_a_duplicated_event() {
    let mut s = clean();
    let i = event_item(&s, 0, |_, e| e.len() == 1);
    let dup = s.logs[0].items[i].clone();
    s.logs[0].items.insert(i + 1, dup);
    caught(&s, Kind::OutOfOrder);
}

#[test]
fn checker_catches_events_out_of_order() {
    let mut s = clean();
    let i = s.logs[0]
        .items
        .windows(2)
        .position(|w| w.iter().all(|it| matches!(it, Item::Events { .. })))
        .expect("two responses with events in a row");
    s.logs[0].items.swap(i, i + 1);
    caught(&s, Kind::OutOfOrder);
}

#[test]
fn checker_catches_a_wrong_prev_kv() {
    let mut s = clean();
    let i = event_item(&s, 0, |_, e| {
        e.iter().any(|e| e.prev.is_some() && !e.delete)
    });
    if let Item::Events { events, .. } = &mut s.logs[0].items[i] {
        let e = events.iter_mut().find(|e| e.prev.is_some()).unwrap();
        e.prev.as_mut().unwrap().value.push('x');
    }
    caught(&s, Kind::WrongPrevKv);
}

#[test]
fn checker_catches_a_wrong_is_create() {
    let mut s = clean();
    let i = event_item(&s, 0, |_, e| e.iter().any(|e| e.kv.version > 1));
    if let Item::Events { events, .. } = &mut s.logs[0].items[i] {
        let e = events.iter_mut().find(|e| e.kv.version > 1).unwrap();
        e.kv.create = e.kv.modified;
    }
    caught(&s, Kind::WrongIsCreate);
}

#[test]
fn checker_catches_a_split_revision() {
    let mut s = clean();
    let i = event_item(&s, 0, |_, e| e.len() == 2);
    let Item::Events { rev, events } = s.logs[0].items[i].clone() else {
        unreachable!()
    };
    s.logs[0].items[i] = Item::Events {
        rev,
        events: vec![events[0].clone()],
    };
    s.logs[0].items.insert(
        i + 1,
        Item::Events {
            rev,
            events: vec![events[1].clone()],
        },
    );
    caught(&s, Kind::SplitRevision);
}

#[test]
fn checker_catches_an_ignored_filter() {
    let mut s = clean();
    // The no-put watcher (w3, k0..k3) gets a put.
    let i = event_item(&s, 0, |_, e| {
        e.iter().any(|e| !e.delete && e.kv.key.as_str() < "h/k3")
    });
    let Item::Events { rev, events } = s.logs[0].items[i].clone() else {
        unreachable!()
    };
    let put = events.into_iter().find(|e| !e.delete).unwrap();
    let at = s.logs[2]
        .items
        .iter()
        .position(|it| match it {
            Item::Events { rev: r, .. } | Item::Progress { rev: r } => *r >= rev,
            _ => false,
        })
        .unwrap();
    s.logs[2].items.insert(
        at,
        Item::Events {
            rev,
            events: vec![put],
        },
    );
    caught(&s, Kind::FilterIgnored);
}

#[test]
fn checker_catches_an_early_progress_notification() {
    let mut s = clean();
    // Progress at R before the event at R.
    let i = event_item(&s, 0, |_, _| true);
    let Item::Events { rev, .. } = s.logs[0].items[i] else {
        unreachable!()
    };
    s.logs[0].items.insert(i, Item::Progress { rev });
    caught(&s, Kind::BadProgress);
}

#[test]
fn checker_catches_progress_going_back() {
    let mut s = clean();
    // After everything up to the end, a notification 5 revisions lower
    // (a member behind the watcher answering it).
    let back = s.rev - 5;
    s.logs[1].items.push(Item::Progress { rev: back });
    caught(&s, Kind::BadProgress);
    // A watcher created on a future revision told a lower one.
    let mut s = clean();
    let end = s.rev;
    s.logs[1].items.push(Item::Broken);
    s.logs[1].items.push(Item::Created {
        rev: end,
        start: end + 1,
    });
    s.logs[1].items.push(Item::Progress { rev: end - 3 });
    caught(&s, Kind::BadProgress);
}

#[test]
fn checker_catches_a_bad_resumption() {
    let mut s = clean();
    // Created again two revisions too late after a break.
    let i = event_item(&s, 0, |r, _| r > 20);
    let Item::Events { rev, .. } = s.logs[0].items[i] else {
        unreachable!()
    };
    s.logs[0].items.insert(i, Item::Broken);
    s.logs[0].items.insert(
        i + 1,
        Item::Created {
            rev: rev + 5,
            start: rev + 2,
        },
    );
    caught(&s, Kind::BadResume);
}

#[test]
fn checker_catches_a_bad_compaction_error() {
    let mut s = clean();
    // A "compacted" answer naming a revision below the one asked for, and
    // above any compaction asked.
    s.logs[0].items.push(Item::Broken);
    s.logs[0].items.push(Item::Compacted { compact: 3 });
    caught(&s, Kind::BadCompacted);
}

#[test]
fn checker_catches_a_watcher_that_stopped_early() {
    let mut s = clean();
    let n = s.logs[1].items.len();
    s.logs[1].items.truncate(n / 2);
    caught(&s, Kind::NotCaughtUp);
}

// ---------------------------------------------------------------------
// Real clusters under faults.
// ---------------------------------------------------------------------

/// Seconds each run's clients keep going (every fault kind is injected at
/// least once, which may take longer).
const RUN_SECS: f64 = 5.0;

fn under_faults(members: usize, engine: Engine) {
    let t = Instant::now();
    let seed = members as u64 * 10 + (engine == Engine::Rocksdb) as u64;
    let r = runner::run(Plan {
        members,
        engine,
        run_for: Duration::from_secs_f64(RUN_SECS),
        faults: every_fault(true),
        pause_between: Duration::from_millis(400),
        clients: 6,
        seed,
    });
    let v = judge(&r);
    eprintln!(
        "{members} member(s), {engine:?}: {} in {:.1?}; {} violations",
        r.figures(),
        t.elapsed(),
        v.all.len()
    );
    assert!(r.final_rev - r.base > 50, "too few writes: {}", r.figures());
    assert!(r.compactions > 3, "too few compactions: {}", r.figures());
    assert!(
        v.all.is_empty(),
        "{} violations:\n{}",
        v.all.len(),
        v.summary(20)
    );
}

fn one_member_under_faults(engine: Engine) {
    under_faults(1, engine);
}

fn three_members_under_faults(engine: Engine) {
    under_faults(3, engine);
}

fn five_members_under_faults(engine: Engine) {
    under_faults(5, engine);
}

engine_tests!(sync: one_member_under_faults, three_members_under_faults, five_members_under_faults);

/// A longer run by hand: `METASTORE_SOAK_SECS` seconds per cycle (30),
/// `METASTORE_SOAK_CYCLES` cycles (3), `METASTORE_SOAK_MEMBERS` members
/// (3), engines in turn.
#[test]
#[ignore]
fn history_soak() {
    let secs: f64 = std::env::var("METASTORE_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30.0);
    let cycles: u64 = std::env::var("METASTORE_SOAK_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let members: usize = std::env::var("METASTORE_SOAK_MEMBERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    for cycle in 0..cycles {
        let engine = if cycle % 2 == 0 {
            Engine::Memory
        } else {
            Engine::Rocksdb
        };
        let r = runner::run(Plan {
            members,
            engine,
            run_for: Duration::from_secs_f64(secs),
            faults: every_fault(true),
            pause_between: Duration::from_millis(700),
            clients: 8,
            seed: 1000 + cycle,
        });
        let v = judge(&r);
        eprintln!("cycle {cycle} {engine:?}: {}", r.figures());
        assert!(v.all.is_empty(), "{}", v.summary(20));
    }
}

// ---------------------------------------------------------------------
// Shapes of known etcd bugs.
// ---------------------------------------------------------------------

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn no_violations(v: &Violations) {
    assert!(v.all.is_empty(), "{}", v.summary(20));
}

/// etcd#14370: a lone member acknowledged a write and lost it on a crash.
/// Here: puts, each acknowledged, then the power is cut right after the
/// last answer (lossyfs drops everything not fsynced); after the restart a
/// range must hold every acknowledged write (three cycles).
fn lone_member_keeps_acked_writes_across_power_cuts(engine: Engine) {
    let mut f = Faulty::start(1, engine, true, &[]);
    let ep = f.endpoints()[0].clone();
    let rt = rt();
    let rec = Recorder::new();
    let base = rt.block_on(async { current_rev(&mut KvClient::new(channel(&ep))).await.unwrap() });
    for cycle in 0..3 {
        rt.block_on(async {
            let mut kv = KvClient::new(channel(&ep));
            for i in 0..20 {
                let op = Op::Put {
                    key: format!("{PREFIX}k{}", i % 6),
                    value: format!("c{cycle}-{i}"),
                };
                let r = rec.call(0, &mut kv, op).await;
                assert!(matches!(r, Ret::Put { .. }), "put {i}: {r:?}");
            }
        });
        f.disks[0].freeze();
        f.cluster.members[0].kill9();
        let cut = f.disks[0].cut();
        f.restart(0);
        rt.block_on(async {
            let mut kv = KvClient::new(channel(&ep));
            let op = Op::Range {
                prefix: PREFIX.into(),
            };
            let r = rec.call(0, &mut kv, op).await;
            assert!(matches!(r, Ret::Read { .. }), "read after the cut: {r:?}");
        });
        eprintln!("cycle {cycle}: the cut dropped {cut:?}");
    }
    let (_, v) = lin::check(&rec.calls(), &[], base);
    no_violations(&v);
}

/// How the member a watcher moves to fell behind.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Behind {
    /// Cut off from its peers by a blackhole at the proxy.
    Isolated,
    /// Stopped (SIGSTOP); the watch stream is opened while it is, and it
    /// is resumed with the create and a progress request waiting.
    Paused,
}

/// etcd#15271: a watch went back in time after a partition. Here: a
/// watcher on the leader sees revisions up to X; a follower is cut off
/// (isolated, or paused as a stand-in) and falls behind while writes go on
/// to Y; the watcher moves to that follower from Y + 1 (as a client does
/// when its stream breaks). Whatever it is told there must not go below
/// Y: no event at or below Y, no progress notification below Y; after the
/// heal it gets everything after Y without a gap.
fn watch_does_not_go_back_after_a_partition(engine: Engine) {
    watch_does_not_go_back(engine, Behind::Isolated);
}

fn watch_does_not_go_back_after_a_pause(engine: Engine) {
    watch_does_not_go_back(engine, Behind::Paused);
}

fn watch_does_not_go_back(engine: Engine, how: Behind) {
    let mut f = Faulty::start(3, engine, false, &[]);
    let leader = f.cluster.wait_leader(Duration::from_secs(10));
    let follower = (leader + 1) % 3;
    let eps = f.endpoints();
    let rt = rt();
    let rec = Recorder::new();
    let base = rt.block_on(async {
        current_rev(&mut KvClient::new(channel(&eps[leader])))
            .await
            .unwrap()
    });
    let specs = watcher_specs();
    let mut first = rt.block_on(Recorded::open(&eps[leader], &specs, base + 1));
    let puts = |n: usize, tag: &str| {
        rt.block_on(async {
            let mut kv = KvClient::new(channel(&eps[leader]));
            for i in 0..n {
                let op = Op::Put {
                    key: format!("{PREFIX}k{}", i % 6),
                    value: format!("{tag}-{i}"),
                };
                rec.call(0, &mut kv, op).await;
            }
        })
    };
    puts(10, "before");
    match how {
        Behind::Isolated => f.proxy.isolate(follower),
        Behind::Paused => signal(&f, follower, libc::SIGSTOP),
    }
    puts(20, "during");
    let y = rt.block_on(async {
        current_rev(&mut KvClient::new(channel(&eps[leader])))
            .await
            .unwrap()
    });
    assert!(
        rt.block_on(first.drain_to(y, Duration::from_secs(10))),
        "the leader's watchers reach {y}"
    );
    // Moved to the cut-off follower, which is behind Y.
    let mut second = match how {
        Behind::Isolated => rt.block_on(Recorded::open_asking(&eps[follower], &specs, y + 1, true)),
        Behind::Paused => {
            let (ep, specs) = (eps[follower].clone(), specs.clone());
            let opening =
                rt.spawn(async move { Recorded::open_asking(&ep, &specs, y + 1, true).await });
            std::thread::sleep(Duration::from_millis(300));
            signal(&f, follower, libc::SIGCONT);
            rt.block_on(opening).unwrap()
        }
    };
    rt.block_on(async {
        for _ in 0..4 {
            second.request_progress().await;
            second.read_for(Duration::from_millis(300)).await;
        }
    });
    if how == Behind::Isolated {
        f.proxy.heal();
    }
    puts(10, "after");
    let end = rt.block_on(async {
        current_rev(&mut KvClient::new(channel(&eps[leader])))
            .await
            .unwrap()
    });
    assert!(
        rt.block_on(second.drain_to(end, Duration::from_secs(20))),
        "the follower's watchers reach {end}"
    );
    let calls = rec.calls();
    let logs: Vec<Log> = specs
        .iter()
        .map(|(id, spec)| {
            let mut items = first.items(*id);
            items.push(Item::Broken);
            items.extend(second.items(*id));
            Log {
                name: format!("w{id}"),
                spec: spec.clone(),
                items,
            }
        })
        .collect();
    let (c, mut v) = lin::check(&calls, &watch::seen(&logs), base);
    for l in &logs {
        watch::check(l, &c, Some(end), 0, &mut v);
    }
    no_violations(&v);
}

/// etcd#17529: watchers starved by a burst lost events. Here: 40 watchers
/// on one stream that is not read while 1,500 puts of 1 KiB go in, then
/// read: every watcher gets every event once, in order.
async fn starved_watchers_lose_no_events(engine: Engine) {
    let s = crate::harness::Server::start_on(engine);
    let ep = s.endpoint();
    let rec = Recorder::new();
    let base = current_rev(&mut KvClient::new(channel(&ep))).await.unwrap();
    let mut spec = Spec::prefix(PREFIX);
    spec.prev_kv = true;
    let specs: Vec<(i64, Spec)> = (1..=40).map(|id| (id, spec.clone())).collect();
    let mut w = Recorded::open(&ep, &specs, base + 1).await;
    for _ in 0..40 {
        w.next(Duration::from_secs(10)).await.expect("created");
    }
    let big = "x".repeat(1024);
    let mut tasks = Vec::new();
    for c in 0..4 {
        let (rec, ep, big) = (rec.clone(), ep.clone(), big.clone());
        tasks.push(tokio::spawn(async move {
            let mut kv = KvClient::new(channel(&ep));
            for i in 0..375 {
                let op = Op::Put {
                    key: format!("{PREFIX}k{}", i % 6),
                    value: format!("c{c}-{i}-{big}"),
                };
                let r = rec.call(c, &mut kv, op).await;
                assert!(matches!(r, Ret::Put { .. }), "{r:?}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let end = current_rev(&mut KvClient::new(channel(&ep))).await.unwrap();
    assert!(
        w.drain_to(end, Duration::from_secs(60)).await,
        "watchers reach {end}"
    );
    let logs: Vec<Log> = specs
        .iter()
        .map(|(id, spec)| Log {
            name: format!("w{id}"),
            spec: spec.clone(),
            items: w.items(*id),
        })
        .collect();
    let (c, mut v) = lin::check(&rec.calls(), &[], base);
    for l in &logs {
        watch::check(l, &c, Some(end), 0, &mut v);
    }
    no_violations(&v);
}

/// etcd#18089 and #19179: compacting at a delete's revision lost the
/// delete event for watchers from that revision. Here: k0 put twice and
/// deleted at D, k1 put after, compaction at D; watchers from D (before
/// and after a restart, which reloads the compacted store) must get the
/// delete at D with its prev_kv, then the rest.
fn delete_at_the_compaction_revision_is_delivered(engine: Engine) {
    let mut f = Faulty::start(1, engine, false, &[]);
    let ep = f.endpoints()[0].clone();
    let rt = rt();
    let rec = Recorder::new();
    let base = rt.block_on(async { current_rev(&mut KvClient::new(channel(&ep))).await.unwrap() });
    let k0 = format!("{PREFIX}k0");
    let k1 = format!("{PREFIX}k1");
    let d = rt.block_on(async {
        let mut kv = KvClient::new(channel(&ep));
        for (i, op) in [
            Op::Put {
                key: k0.clone(),
                value: "a".into(),
            },
            Op::Put {
                key: k0.clone(),
                value: "b".into(),
            },
            Op::Delete { key: k0.clone() },
        ]
        .into_iter()
        .enumerate()
        {
            let r = rec.call(0, &mut kv, op).await;
            assert!(!matches!(r, Ret::Unknown), "call {i}");
        }
        let d = current_rev(&mut kv).await.unwrap();
        let r = rec
            .call(
                0,
                &mut kv,
                Op::Put {
                    key: k1.clone(),
                    value: "c".into(),
                },
            )
            .await;
        assert!(matches!(r, Ret::Put { .. }));
        kv.compact(CompactionRequest {
            revision: d,
            physical: true,
        })
        .await
        .expect("compact at the delete");
        d
    });
    let end = d + 1;
    let mut key_only = Spec::prefix(&k0);
    key_only.range_end = String::new();
    key_only.prev_kv = true;
    let mut all = Spec::prefix(PREFIX);
    all.prev_kv = true;
    let specs = vec![(1, key_only), (2, all)];
    let mut logs: Vec<Log> = specs
        .iter()
        .map(|(id, spec)| Log {
            name: format!("w{id}"),
            spec: spec.clone(),
            items: Vec::new(),
        })
        .collect();
    for round in 0..2 {
        if round == 1 {
            f.cluster.members[0].kill9();
            f.restart(0);
        }
        let mut w = rt.block_on(Recorded::open(&ep, &specs, d));
        assert!(
            rt.block_on(w.drain_to(end, Duration::from_secs(10))),
            "drained"
        );
        let (c, mut v) = lin::check(&rec.calls(), &[], base);
        for (l, (id, _)) in logs.iter_mut().zip(&specs) {
            l.items = w.items(*id);
            watch::check(l, &c, Some(end), d, &mut v);
        }
        assert!(
            v.all.is_empty(),
            "{} the restart: {}",
            if round == 0 { "before" } else { "after" },
            v.summary(10)
        );
    }
}

/// etcd#20221: a watch on a future revision. Here: a watcher from the
/// current revision + 5 gets no event below its start, and no progress
/// notification below start - 1 (it already knows the revisions before
/// its start); then the events from its start, none lost.
async fn watch_on_a_future_revision(engine: Engine) {
    let s = crate::harness::Server::start_on(engine);
    let ep = s.endpoint();
    let rec = Recorder::new();
    let base = current_rev(&mut KvClient::new(channel(&ep))).await.unwrap();
    let start = base + 5;
    let specs = watcher_specs();
    let mut w = Recorded::open(&ep, &specs, start).await;
    for _ in 0..3 {
        w.next(Duration::from_secs(10)).await.expect("created");
    }
    // Asked before any revision up to the start exists.
    w.request_progress().await;
    w.read_for(Duration::from_millis(500)).await;
    let mut kv = KvClient::new(channel(&ep));
    for i in 0..8 {
        let op = Op::Put {
            key: format!("{PREFIX}k{}", i % 6),
            value: format!("f{i}"),
        };
        rec.call(0, &mut kv, op).await;
        w.request_progress().await;
        w.read_for(Duration::from_millis(100)).await;
    }
    let end = current_rev(&mut kv).await.unwrap();
    assert!(w.drain_to(end, Duration::from_secs(10)).await, "drained");
    let (c, mut v) = lin::check(&rec.calls(), &[], base);
    for (id, spec) in &specs {
        let l = Log {
            name: format!("w{id}"),
            spec: spec.clone(),
            items: w.items(*id),
        };
        watch::check(&l, &c, Some(end), 0, &mut v);
    }
    no_violations(&v);
}

/// etcd#20418: a stale read after a process pause. Here: the leader is
/// stopped (SIGSTOP), the others elect a leader and take a write, the old
/// leader is resumed and at once asked a linearizable read: it must see
/// the write (twice, on whichever member leads each time).
fn no_stale_read_after_a_pause(engine: Engine) {
    let mut f = Faulty::start(3, engine, false, &[]);
    let eps = f.endpoints();
    let rt = rt();
    let rec = Recorder::new();
    let base = rt.block_on(async {
        current_rev(&mut KvClient::new(channel(&eps[0])))
            .await
            .unwrap()
    });
    let key = format!("{PREFIX}k0");
    for round in 0..2 {
        let leader = f.cluster.wait_leader(Duration::from_secs(20));
        let other = (leader + 1) % 3;
        // Connected to the old leader before it stops.
        let mut on_old = rt.block_on(async {
            let mut kv = KvClient::new(channel(&eps[leader]));
            rec.call(1, &mut kv, Op::Get { key: key.clone() }).await;
            kv
        });
        signal(&f, leader, libc::SIGSTOP);
        let wrote = rt.block_on(async {
            let mut kv = KvClient::new(channel(&eps[other]));
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut i = 0;
            loop {
                i += 1;
                let op = Op::Put {
                    key: key.clone(),
                    value: format!("r{round}-{i}"),
                };
                if let Ret::Put { rev } = rec.call(2, &mut kv, op).await {
                    return rev;
                }
                assert!(Instant::now() < deadline, "no write without the old leader");
                kv = KvClient::new(channel(&eps[other]));
            }
        });
        signal(&f, leader, libc::SIGCONT);
        let read = rt.block_on(async {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Ret::Read { rev, .. } =
                    rec.call(1, &mut on_old, Op::Get { key: key.clone() }).await
                {
                    return rev;
                }
                assert!(Instant::now() < deadline, "no read from the resumed member");
                on_old = KvClient::new(channel(&eps[leader]));
            }
        });
        eprintln!("round {round}: write at {wrote}, the resumed member read at {read}");
    }
    let (_, v) = lin::check(&rec.calls(), &[], base);
    no_violations(&v);
}

engine_tests!(sync: lone_member_keeps_acked_writes_across_power_cuts,
    no_stale_read_after_a_pause,
    watch_does_not_go_back_after_a_partition,
    watch_does_not_go_back_after_a_pause,
    delete_at_the_compaction_revision_is_delivered);
engine_tests!(async: starved_watchers_lose_no_events, watch_on_a_future_revision);
