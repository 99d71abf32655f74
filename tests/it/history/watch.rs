//! The watch checker: one watcher's responses, in the order they came,
//! against the committed history [`super::lin`] rebuilt. A watcher is one
//! logical watch across reconnections: after a broken stream the client
//! creates it again from the revision after the last one it knows complete
//! (the last event's or the last progress notification's), after a
//! compaction error from the compaction revision.
//!
//! Per watcher: events in revision order, none twice, every event of one
//! revision in one response; between the start and the last revision
//! delivered (or notified), exactly the committed changes in the key range
//! the filters let through, each with the key's state after the change,
//! prev_kv (if asked) equal to the state before, and IsCreate (create ==
//! mod revision) true exactly when the key did not exist before. A
//! progress notification at R comes only once every event up to R was
//! delivered, never lower than a revision the watcher already knew (its
//! start - 1, its last event, its last notification) and never above the
//! last committed revision. A compaction error names a compaction above
//! the revision the watcher asked for.

use std::collections::BTreeMap;

use super::lin::{Change, Committed, Seen};
use super::{Kind, Kv, Violations};

/// What a watcher asked for.
#[derive(Clone, Debug)]
pub(crate) struct Spec {
    pub key: String,
    /// Empty: the one key.
    pub range_end: String,
    pub prev_kv: bool,
    pub no_put: bool,
    pub no_delete: bool,
}

impl Spec {
    /// Every key starting with `p`.
    pub fn prefix(p: &str) -> Spec {
        let mut end = p.as_bytes().to_vec();
        *end.last_mut().expect("non-empty prefix") += 1;
        Spec {
            key: p.to_owned(),
            range_end: String::from_utf8(end).expect("ASCII prefix"),
            prev_kv: false,
            no_put: false,
            no_delete: false,
        }
    }

    fn covers(&self, key: &str) -> bool {
        if self.range_end.is_empty() {
            key == self.key
        } else {
            key >= self.key.as_str() && key < self.range_end.as_str()
        }
    }

    fn lets_through(&self, ch: &Change) -> bool {
        self.covers(&ch.key)
            && match ch.after {
                Some(_) => !self.no_put,
                None => !self.no_delete,
            }
    }
}

/// One event as delivered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Event {
    /// For a delete: key and mod revision set, the rest zero.
    pub kv: Kv,
    pub delete: bool,
    pub prev: Option<Kv>,
}

/// One response (or a reconnection) as the watcher saw it.
#[derive(Clone, Debug)]
pub(crate) enum Item {
    /// Created, asking to start at `start` (0: after `rev`, the header).
    Created { rev: i64, start: i64 },
    /// Events, with the response's header revision.
    Events { rev: i64, events: Vec<Event> },
    /// A progress notification at `rev`.
    Progress { rev: i64 },
    /// Canceled: `compact` was compacted.
    Compacted { compact: i64 },
    /// The stream broke; a `Created` follows to resume.
    Broken,
}

/// One watcher's record.
#[derive(Clone, Debug)]
pub(crate) struct Log {
    pub name: String,
    pub spec: Spec,
    pub items: Vec<Item>,
}

/// Changes the events of `logs` show, for the linearizability checker.
pub(crate) fn seen(logs: &[Log]) -> Vec<Seen> {
    let mut out = Vec::new();
    for l in logs {
        for it in &l.items {
            if let Item::Events { events, .. } = it {
                out.extend(events.iter().map(|e| Seen {
                    rev: e.kv.modified,
                    key: e.kv.key.clone(),
                    value: (!e.delete).then(|| e.kv.value.clone()),
                }));
            }
        }
    }
    out
}

/// The event a watcher must get for `ch` at `rev`.
fn expected(spec: &Spec, rev: i64, ch: &Change) -> Event {
    Event {
        kv: ch.after.clone().unwrap_or(Kv {
            key: ch.key.clone(),
            value: String::new(),
            create: 0,
            modified: rev,
            version: 0,
        }),
        delete: ch.after.is_none(),
        prev: if spec.prev_kv {
            ch.before.clone()
        } else {
            None
        },
    }
}

/// Checks one watcher; `final_rev`: the revision every watcher was
/// drained to at the end (None: not required); `max_compacted`: the
/// highest compaction asked for.
pub(crate) fn check(
    log: &Log,
    c: &Committed,
    final_rev: Option<i64>,
    max_compacted: i64,
    v: &mut Violations,
) {
    let name = &log.name;
    let spec = &log.spec;
    // Expected events of this watcher by revision.
    let mut due: BTreeMap<i64, Vec<Event>> = BTreeMap::new();
    for (&rev, chs) in &c.changes {
        let evs: Vec<Event> = chs
            .iter()
            .filter(|ch| spec.lets_through(ch))
            .map(|ch| expected(spec, rev, ch))
            .collect();
        if !evs.is_empty() {
            due.insert(rev, evs);
        }
    }
    // The next revision the watcher must deliver, the highest it knows
    // complete, and whether it is between a break and its resumption.
    let mut next: Option<i64> = None;
    let mut known = 0;
    let mut broken = false;
    let mut compacted_to: Option<i64> = None;
    let missing = |from: i64, to: i64, why: &str, v: &mut Violations| {
        if from > to {
            return;
        }
        for (r, evs) in due.range(from..=to) {
            for e in evs {
                v.add(
                    Kind::MissingEvent,
                    format!(
                        "{name}: {} {} at {r} never delivered ({why})",
                        if e.delete { "delete of" } else { "put of" },
                        e.kv.key
                    ),
                );
            }
        }
    };
    for it in &log.items {
        match it {
            Item::Created { rev, start } => {
                let s = if *start <= 0 { rev + 1 } else { *start };
                match (next, broken, compacted_to) {
                    (None, _, _) => {}
                    (Some(_), _, Some(cr)) if s == cr => {}
                    (Some(n), true, None) if s == n => {}
                    (Some(n), _, _) => v.add(
                        Kind::BadResume,
                        format!("{name}: created again from {s}, the next due was {n}"),
                    ),
                }
                broken = false;
                compacted_to = None;
                next = Some(s);
                known = known.max(s - 1);
            }
            Item::Broken => broken = true,
            Item::Compacted { compact } => {
                let n = next.unwrap_or(0);
                if *compact <= n || *compact > max_compacted {
                    v.add(
                        Kind::BadCompacted,
                        format!(
                            "{name}: compacted at {compact} for a watch from {n} (highest compaction asked: {max_compacted})"
                        ),
                    );
                }
                compacted_to = Some(*compact);
                next = Some(*compact);
                known = known.max(compact - 1);
            }
            Item::Progress { rev } => {
                let n = next.unwrap_or(1);
                if *rev < known {
                    v.add(
                        Kind::BadProgress,
                        format!("{name}: progress at {rev} after the watcher knew {known}"),
                    );
                }
                if *rev > c.max_rev {
                    v.add(
                        Kind::BadProgress,
                        format!(
                            "{name}: progress at {rev}, above the last committed revision {}",
                            c.max_rev
                        ),
                    );
                }
                if *rev >= n && due.range(n..=*rev).next().is_some() {
                    v.add(
                        Kind::BadProgress,
                        format!("{name}: progress at {rev} before the events from {n} came"),
                    );
                    missing(n, *rev, "a progress notification passed it", v);
                }
                next = Some(n.max(rev + 1));
                known = known.max(*rev);
            }
            Item::Events { events, .. } => {
                let mut n = next.unwrap_or(1);
                let mut by_rev: BTreeMap<i64, Vec<&Event>> = BTreeMap::new();
                let mut last = 0;
                for e in events {
                    let r = e.kv.modified;
                    if r < last || r < n {
                        v.add(
                            Kind::OutOfOrder,
                            format!(
                                "{name}: event {} at {r} after revision {}",
                                e.kv.key,
                                last.max(n - 1)
                            ),
                        );
                        continue;
                    }
                    last = r;
                    by_rev.entry(r).or_default().push(e);
                }
                for (r, got) in by_rev {
                    if !due.contains_key(&r) || got.iter().any(|e| !spec.covers(&e.kv.key)) {
                        for e in &got {
                            let excluded = !spec.covers(&e.kv.key)
                                || (e.delete && spec.no_delete)
                                || (!e.delete && spec.no_put);
                            if excluded {
                                v.add(
                                    Kind::FilterIgnored,
                                    format!("{name}: event {e:?} at {r} is filtered out"),
                                );
                            } else if !due.contains_key(&r) {
                                v.add(
                                    Kind::WrongEvent,
                                    format!("{name}: event {e:?} at {r}: no such change committed"),
                                );
                            }
                        }
                        if !due.contains_key(&r) {
                            n = r + 1;
                            continue;
                        }
                    }
                    missing(n, r - 1, "a later event came first", v);
                    let want = &due[&r];
                    let mut got_sorted: Vec<&Event> =
                        got.into_iter().filter(|e| spec.covers(&e.kv.key)).collect();
                    got_sorted.sort_by(|a, b| a.kv.key.cmp(&b.kv.key));
                    compare_revision(name, r, want, &got_sorted, max_compacted, v);
                    n = r + 1;
                    known = known.max(r);
                }
                next = Some(n);
            }
        }
    }
    if let Some(f) = final_rev {
        let n = next.unwrap_or(1);
        if n <= f {
            v.add(
                Kind::NotCaughtUp,
                format!("{name}: delivered only up to {} of {f}", n - 1),
            );
            missing(n, f, "the watcher stopped before it", v);
        }
    }
}

/// A committed change of revision `r` missing from the response that held
/// the rest of it.
fn split(v: &mut Violations, name: &str, r: i64, key: &str) {
    v.add(
        Kind::SplitRevision,
        format!("{name}: {key} at {r} not in the response with the rest of revision {r}"),
    );
}

fn compare_revision(
    name: &str,
    r: i64,
    want: &[Event],
    got: &[&Event],
    max_compacted: i64,
    v: &mut Violations,
) {
    let mut wi = want.iter().peekable();
    let mut gi = got.iter().peekable();
    loop {
        match (wi.peek(), gi.peek()) {
            (None, None) => break,
            (Some(w), Some(g)) if w.kv.key == g.kv.key => {
                let (w, g) = (wi.next().unwrap(), gi.next().unwrap());
                if w.delete != g.delete {
                    v.add(
                        Kind::WrongEvent,
                        format!("{name}: at {r} got {g:?}, committed {w:?}"),
                    );
                } else if w.kv.create != g.kv.create && w.kv.value == g.kv.value {
                    v.add(
                        Kind::WrongIsCreate,
                        format!(
                            "{name}: {} at {r}: create revision {} (IsCreate {}), committed {} (IsCreate {})",
                            g.kv.key,
                            g.kv.create,
                            g.kv.create == g.kv.modified,
                            w.kv.create,
                            w.kv.create == w.kv.modified
                        ),
                    );
                } else if w.kv != g.kv {
                    v.add(
                        Kind::WrongEvent,
                        format!("{name}: at {r} got {:?}, committed {:?}", g.kv, w.kv),
                    );
                } else if w.prev != g.prev && !(g.prev.is_none() && r <= max_compacted) {
                    // (The state before an event at or below a compaction
                    // may be gone: no prev_kv then, as etcd sends none.)
                    v.add(
                        Kind::WrongPrevKv,
                        format!(
                            "{name}: {} at {r}: prev_kv {:?}, the state before was {:?}",
                            g.kv.key, g.prev, w.prev
                        ),
                    );
                }
            }
            // A committed change this response lacks (the rest of its
            // revision came in another).
            (Some(w), Some(g)) if w.kv.key < g.kv.key => {
                let w = wi.next().unwrap();
                split(v, name, r, &w.kv.key);
            }
            (Some(_), None) => {
                let w = wi.next().unwrap();
                split(v, name, r, &w.kv.key);
            }
            (_, Some(_)) => {
                let g = gi.next().unwrap();
                v.add(
                    Kind::OutOfOrder,
                    format!(
                        "{name}: {} at {r} delivered twice or not committed",
                        g.kv.key
                    ),
                );
            }
        }
    }
}
