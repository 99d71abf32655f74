//! The linearizability checker. etcd gives every change a revision of its
//! own, so the order of the writes need not be searched for: each write is
//! placed at its revision (an acknowledged write at the one its answer
//! names; a write whose answer never came where a read or a watch event
//! shows its value or its delete, else nowhere), the writes are replayed in
//! revision order into a model, and every answer is checked against it:
//!
//! - one write per revision, every revision since the start accounted for
//!   (a revision no write explains is allowed only while unplaced writes of
//!   unknown outcome remain to explain it);
//! - real time: a call invoked after another completed sees it (a write
//!   gets a higher revision, a read a revision at least as high); no answer
//!   shows a write that was invoked after the answer came;
//! - reads return exactly the model's keys at their header revision; a
//!   txn's compare and a delete's count agree with the model at theirs.

use std::collections::{BTreeMap, HashMap};

use super::{Call, Kind, Kv, Op, Ret, Violations};

/// A change a watch event shows: `key` set to `value` (None: deleted) at
/// `rev`.
#[derive(Clone, Debug)]
pub(crate) struct Seen {
    pub rev: i64,
    pub key: String,
    pub value: Option<String>,
}

/// One key's committed change at a revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Change {
    pub key: String,
    /// The key's state after the change (None: deleted).
    pub after: Option<Kv>,
    /// Its state before.
    pub before: Option<Kv>,
}

/// The committed history the checker rebuilt.
#[derive(Default)]
pub(crate) struct Committed {
    /// Revision → its changes, in key order.
    pub changes: BTreeMap<i64, Vec<Change>>,
    /// Key → (revision, state after) in revision order.
    keys: HashMap<String, Vec<(i64, Option<Kv>)>>,
    /// Revisions no placed write accounts for (only while writes of
    /// unknown outcome remain unplaced).
    pub gaps: Vec<i64>,
    /// The highest revision any write or answer showed.
    pub max_rev: i64,
}

impl Committed {
    /// `key`'s state at `rev`.
    pub fn at(&self, key: &str, rev: i64) -> Option<&Kv> {
        let h = self.keys.get(key)?;
        let i = h.partition_point(|(r, _)| *r <= rev);
        h.get(i.checked_sub(1)?)?.1.as_ref()
    }

    /// Every key starting with `prefix` at `rev`, in key order.
    pub fn range_at(&self, prefix: &str, rev: i64) -> Vec<Kv> {
        let mut out: Vec<Kv> = self
            .keys
            .keys()
            .filter(|k| k.starts_with(prefix))
            .filter_map(|k| self.at(k, rev).cloned())
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out
    }

    /// Whether a revision strictly between `lo` and `hi` is unexplained.
    pub fn gap_in(&self, lo: i64, hi: i64) -> bool {
        let i = self.gaps.partition_point(|g| *g <= lo);
        self.gaps.get(i).is_some_and(|g| *g < hi)
    }
}

/// Whether `op` writes `key`.
fn writes_key(op: &Op, key: &str) -> bool {
    match op {
        Op::Put { key: k, .. } | Op::Delete { key: k } => k == key,
        Op::Cas { key: k, also, .. } => k == key || also.as_deref() == Some(key),
        _ => false,
    }
}

struct Placement<'a> {
    calls: &'a [Call],
    slots: BTreeMap<i64, usize>,
    placed: Vec<Option<i64>>,
}

impl Placement<'_> {
    fn place(&mut self, i: usize, rev: i64, why: &str, v: &mut Violations) {
        if let Some(p) = self.placed[i] {
            if p != rev {
                v.add(
                    Kind::RevisionConflict,
                    format!(
                        "{:?} is at revision {p} and {why} at {rev}",
                        self.calls[i].op
                    ),
                );
            }
            return;
        }
        match self.slots.get(&rev) {
            Some(&j) if j != i => v.add(
                Kind::RevisionConflict,
                format!(
                    "revision {rev}: {:?} ({:?}) and {:?} ({why})",
                    self.calls[j].op, self.calls[j].ret, self.calls[i].op
                ),
            ),
            Some(_) => {}
            None => {
                self.slots.insert(rev, i);
                self.placed[i] = Some(rev);
            }
        }
    }
}

/// Checks `calls` (and the changes watchers saw) against one another from
/// revision `base` on (the watched keys were absent at `base`); returns the
/// committed history it rebuilt and what it found.
pub(crate) fn check(calls: &[Call], seen: &[Seen], base: i64) -> (Committed, Violations) {
    let mut v = Violations::default();
    let mut p = Placement {
        calls,
        slots: BTreeMap::new(),
        placed: vec![None; calls.len()],
    };
    let mut by_value: HashMap<&str, usize> = HashMap::new();
    for (i, c) in calls.iter().enumerate() {
        if let Some(val) = c.op.written_value() {
            let dup = by_value.insert(val, i);
            assert!(dup.is_none(), "the history writes {val:?} twice");
        }
    }
    // Acknowledged writes sit at the revision their answer names.
    for (i, c) in calls.iter().enumerate() {
        let rev = match (&c.op, &c.ret) {
            (Op::Put { .. }, Ret::Put { rev }) => *rev,
            (
                Op::Cas { .. },
                Ret::Cas {
                    rev,
                    succeeded: true,
                },
            ) => *rev,
            (Op::Delete { .. }, Ret::Delete { rev, deleted }) if *deleted > 0 => *rev,
            _ => continue,
        };
        p.place(i, rev, "as acknowledged", &mut v);
    }
    // What reads and watchers saw places the rest, and must agree.
    let mut obs: Vec<Seen> = seen.to_vec();
    for c in calls {
        if let Ret::Read { kvs, .. } = &c.ret {
            obs.extend(kvs.iter().map(|kv| Seen {
                rev: kv.modified,
                key: kv.key.clone(),
                value: Some(kv.value.clone()),
            }));
        }
    }
    obs.sort_by_key(|o| o.rev);
    for o in &obs {
        match &o.value {
            Some(val) => {
                let Some(&i) = by_value.get(val.as_str()) else {
                    v.add(
                        Kind::UnknownValue,
                        format!("{}={val} at {}: no call wrote it", o.key, o.rev),
                    );
                    continue;
                };
                if !writes_key(&calls[i].op, &o.key) {
                    v.add(
                        Kind::UnknownValue,
                        format!("{}={val} at {}: written to another key", o.key, o.rev),
                    );
                    continue;
                }
                if let Ret::Cas {
                    succeeded: false, ..
                } = calls[i].ret
                {
                    v.add(
                        Kind::TxnMismatch,
                        format!(
                            "{}={val} at {}: its txn answered not succeeded",
                            o.key, o.rev
                        ),
                    );
                    continue;
                }
                p.place(i, o.rev, "as seen", &mut v);
            }
            None => match p.slots.get(&o.rev) {
                Some(&i) => {
                    if !matches!(&calls[i].op, Op::Delete { key } if *key == o.key) {
                        v.add(
                            Kind::RevisionConflict,
                            format!(
                                "revision {}: delete of {} seen, {:?} placed",
                                o.rev, o.key, calls[i].op
                            ),
                        );
                    }
                }
                None => {
                    let cand = calls
                        .iter()
                        .enumerate()
                        .filter(|(j, c)| {
                            p.placed[*j].is_none()
                                && matches!(c.ret, Ret::Unknown)
                                && matches!(&c.op, Op::Delete { key } if *key == o.key)
                        })
                        .min_by_key(|(_, c)| c.start)
                        .map(|(j, _)| j);
                    match cand {
                        Some(j) => p.place(j, o.rev, "as seen", &mut v),
                        None => v.add(
                            Kind::RevisionConflict,
                            format!(
                                "delete of {} at {}: no delete call explains it",
                                o.key, o.rev
                            ),
                        ),
                    }
                }
            },
        }
    }

    let mut c = Committed {
        max_rev: base,
        ..Default::default()
    };
    if let Some((&r, _)) = p.slots.last_key_value() {
        c.max_rev = c.max_rev.max(r);
    }
    for call in calls {
        if let Ret::Read { rev, .. } | Ret::Cas { rev, .. } | Ret::Delete { rev, .. } = call.ret {
            c.max_rev = c.max_rev.max(rev);
        }
    }
    c.gaps = (base + 1..=c.max_rev)
        .filter(|r| !p.slots.contains_key(r))
        .collect();
    let unplaced = calls
        .iter()
        .enumerate()
        .filter(|(i, call)| {
            call.op.is_write() && matches!(call.ret, Ret::Unknown) && p.placed[*i].is_none()
        })
        .count();
    if c.gaps.len() > unplaced {
        v.add(
            Kind::RevisionGap,
            format!(
                "{} revisions no write explains ({:?}...), {unplaced} writes of unknown outcome left",
                c.gaps.len(),
                &c.gaps[..c.gaps.len().min(8)]
            ),
        );
    }

    replay(&mut c, &p, &mut v);
    check_real_time(calls, &p, &mut v);
    check_answers(calls, &c, &mut v);
    (c, v)
}

/// Replays the placed writes in revision order into the model.
fn replay(c: &mut Committed, p: &Placement<'_>, v: &mut Violations) {
    let mut state: HashMap<String, Kv> = HashMap::new();
    let mut last_change: HashMap<String, i64> = HashMap::new();
    for (&rev, &i) in &p.slots {
        let call = &p.calls[i];
        let mut keys: Vec<(&str, Option<&str>)> = Vec::new();
        match &call.op {
            Op::Put { key, value } => keys.push((key, Some(value))),
            Op::Cas {
                key,
                expect,
                value,
                also,
            } => {
                let cur = state.get(key).map_or(0, |kv| kv.modified);
                let since = last_change.get(key).copied().unwrap_or(0);
                if cur != *expect && !c.gap_in(since, rev) {
                    v.add(
                        Kind::TxnMismatch,
                        format!(
                            "txn at {rev} succeeded comparing {key} mod {expect}, but it was {cur}"
                        ),
                    );
                }
                keys.push((key, Some(value)));
                if let Some(a) = also.as_deref().filter(|a| a != key) {
                    keys.push((a, Some(value)));
                }
            }
            Op::Delete { key } => {
                let since = last_change.get(key).copied().unwrap_or(0);
                if !state.contains_key(key) && !c.gap_in(since, rev) {
                    v.add(
                        Kind::DeleteMismatch,
                        format!("delete of {key} at {rev}, absent then"),
                    );
                }
                keys.push((key, None));
            }
            _ => continue,
        }
        keys.sort();
        let mut changes = Vec::new();
        for (key, value) in keys {
            let before = state.get(key).cloned();
            let after = value.map(|val| Kv {
                key: key.to_owned(),
                value: val.to_owned(),
                create: before.as_ref().map_or(rev, |b| b.create),
                modified: rev,
                version: before.as_ref().map_or(1, |b| b.version + 1),
            });
            match &after {
                Some(kv) => state.insert(key.to_owned(), kv.clone()),
                None => state.remove(key),
            };
            last_change.insert(key.to_owned(), rev);
            c.keys
                .entry(key.to_owned())
                .or_default()
                .push((rev, after.clone()));
            changes.push(Change {
                key: key.to_owned(),
                after,
                before,
            });
        }
        c.changes.insert(rev, changes);
    }
}

/// The revision an answered call stands at and whether it wrote there.
fn position(call: &Call, p: &Placement<'_>, i: usize) -> Option<(i64, bool)> {
    match call.ret {
        Ret::Unknown => None,
        Ret::Read { rev, .. } => Some((rev, false)),
        Ret::Cas {
            rev,
            succeeded: false,
        } => Some((rev, false)),
        Ret::Delete { rev, deleted: 0 } => Some((rev, false)),
        _ => p.placed[i].map(|r| (r, true)),
    }
}

fn check_real_time(calls: &[Call], p: &Placement<'_>, v: &mut Violations) {
    // Completed calls by end time, with the highest revision any of them
    // stood at so far.
    let mut done: Vec<(u64, i64)> = calls
        .iter()
        .enumerate()
        .filter_map(|(i, c)| position(c, p, i).map(|(r, _)| (c.end, r)))
        .collect();
    done.sort();
    let mut high = Vec::with_capacity(done.len());
    let mut m = i64::MIN;
    for (_, r) in &done {
        m = m.max(*r);
        high.push(m);
    }
    // Placed writes by revision, with the latest invocation so far.
    let mut starts: Vec<(i64, u64)> = p.slots.iter().map(|(&r, &i)| (r, calls[i].start)).collect();
    let mut latest = 0;
    for s in &mut starts {
        latest = latest.max(s.1);
        s.1 = latest;
    }
    for (i, c) in calls.iter().enumerate() {
        let Some((rev, wrote)) = position(c, p, i).or_else(|| p.placed[i].map(|r| (r, true)))
        else {
            continue;
        };
        let before = done.partition_point(|(end, _)| *end < c.start);
        if before > 0 {
            let seen = high[before - 1];
            if (wrote && rev <= seen) || (!wrote && rev < seen) {
                v.add(
                    Kind::Stale,
                    format!(
                        "client {}: {:?} invoked at {} ns answered at revision {rev}, but revision {seen} was answered before",
                        c.client, c.op, c.start
                    ),
                );
            }
        }
        if matches!(c.ret, Ret::Unknown) {
            continue;
        }
        let k = starts.partition_point(|(r, _)| *r <= rev);
        if k > 0 && starts[k - 1].1 >= c.end {
            v.add(
                Kind::Future,
                format!(
                    "{:?} answered at {} ns at revision {rev}, which holds a write invoked at {} ns",
                    c.op,
                    c.end,
                    starts[k - 1].1
                ),
            );
        }
    }
}

fn check_answers(calls: &[Call], c: &Committed, v: &mut Violations) {
    for call in calls {
        match (&call.op, &call.ret) {
            (Op::Get { key }, Ret::Read { rev, kvs }) => {
                let want: Vec<Kv> = c.at(key, *rev).cloned().into_iter().collect();
                compare_read(c, &call.op, *rev, &want, kvs, v);
            }
            (Op::Range { prefix }, Ret::Read { rev, kvs }) => {
                let want = c.range_at(prefix, *rev);
                compare_read(c, &call.op, *rev, &want, kvs, v);
            }
            (
                Op::Cas { key, expect, .. },
                Ret::Cas {
                    rev,
                    succeeded: false,
                },
            ) => {
                let cur = c.at(key, *rev).map_or(0, |kv| kv.modified);
                if cur == *expect && !c.gap_in(cur, *rev + 1) {
                    v.add(
                        Kind::TxnMismatch,
                        format!("txn comparing {key} mod {expect} failed at {rev}, where it held"),
                    );
                }
            }
            (Op::Delete { key }, Ret::Delete { rev, deleted: 0 }) => {
                if let Some(kv) = c.at(key, *rev) {
                    if !c.gap_in(kv.modified, *rev + 1) {
                        v.add(
                            Kind::DeleteMismatch,
                            format!("delete of {key} at {rev} deleted nothing; it held {kv:?}"),
                        );
                    }
                }
            }
            _ => {}
        }
    }
}

fn compare_read(c: &Committed, op: &Op, rev: i64, want: &[Kv], got: &[Kv], v: &mut Violations) {
    let mut bad = Vec::new();
    let want_map: BTreeMap<&str, &Kv> = want.iter().map(|k| (k.key.as_str(), k)).collect();
    let got_map: BTreeMap<&str, &Kv> = got.iter().map(|k| (k.key.as_str(), k)).collect();
    for (key, g) in &got_map {
        if g.modified > rev {
            bad.push(format!(
                "{key} modified at {} after the read's revision",
                g.modified
            ));
            continue;
        }
        match want_map.get(key) {
            None => bad.push(format!("{key}={} present, absent in the model", g.value)),
            Some(w) => {
                if (w.value.as_str(), w.modified) != (g.value.as_str(), g.modified)
                    || ((w.create, w.version) != (g.create, g.version) && !c.gap_in(0, g.modified))
                {
                    bad.push(format!("{key}: got {g:?}, model {w:?}"));
                }
            }
        }
    }
    for (key, w) in &want_map {
        if !got_map.contains_key(key) && !c.gap_in(w.modified, rev + 1) {
            bad.push(format!("{key}={} (at {}) missing", w.value, w.modified));
        }
    }
    if !bad.is_empty() {
        v.add(
            Kind::ReadMismatch,
            format!("{op:?} at revision {rev}: {}", bad.join("; ")),
        );
    }
}
