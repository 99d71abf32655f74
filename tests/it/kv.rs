//! KV behaviour through the etcd-client crate, differential: every script runs
//! on a real etcd 3.4 and on MetaStore and the normalised answers must be
//! identical (see `diff`). A few absolute checks per test make sure both are
//! not wrong in the same trivial way.

use etcd_client::{
    Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp,
};

use crate::diff::{
    compact, del, del_with, get, get_with, put, put_with, txn, Both, Op, Out, COMPACTED, FUTURE,
    KEY_NOT_FOUND, LEASE_NOT_FOUND,
};
use crate::harness::{Engine, Pair};

fn opts() -> GetOptions {
    GetOptions::new()
}

async fn put_get_prev_kv_ignore_flags_and_leases(engine: Engine) {
    let pair = Pair::start(engine);
    let mut both = Both::to(&pair).await;
    let ops = vec![
        /* 0 */ put("foo", "bar"),
        /* 1 */ get("foo"),
        /* 2 */ put_with("foo", "baz", PutOptions::new().with_prev_key()),
        /* 3 */ put_with("new", "v", PutOptions::new().with_prev_key()),
        /* 4 */ put_with("foo", "", PutOptions::new().with_ignore_value()),
        /* 5 */ get("foo"),
        // ignore_value / ignore_lease on a key that does not exist.
        /* 6 */
        put_with("missing", "", PutOptions::new().with_ignore_value()),
        /* 7 */ put_with("missing", "", PutOptions::new().with_ignore_lease()),
        /* 8 */
        put_with(
            "missing",
            "",
            PutOptions::new()
                .with_ignore_value()
                .with_ignore_lease()
                .with_prev_key(),
        ),
        /* 9 */
        put_with(
            "foo",
            "qux",
            PutOptions::new().with_ignore_lease().with_prev_key(),
        ),
        /* 10 */
        put_with(
            "foo",
            "",
            PutOptions::new()
                .with_ignore_value()
                .with_ignore_lease()
                .with_prev_key(),
        ),
        // Leases do not exist (no Lease service yet, and none granted on etcd).
        /* 11 */
        put_with("foo", "v", PutOptions::new().with_lease(12345)),
        /* 12 */ put_with("fresh", "v", PutOptions::new().with_lease(12345)),
        // The lease is looked up before ignore_value's key check.
        /* 13 */
        put_with(
            "missing",
            "",
            PutOptions::new().with_lease(12345).with_ignore_value(),
        ),
        /* 14 */ get("foo"),
        /* 15 */ get("fresh"),
        /* 16 */ put("empty", ""),
        /* 17 */ put(vec![0xff, 0x00, b'k'], vec![0u8, 1, 2, 0xff]),
        /* 18 */ get("empty"),
        /* 19 */ get(vec![0xff, 0x00, b'k']),
        // History of foo: bar@2, baz@3, baz@5 (ignore_value), qux@6, qux@7.
        /* 20 */
        get_with("foo", opts().with_revision(2)),
        /* 21 */ get_with("foo", opts().with_revision(4)),
        /* 22 */ get_with("foo", opts().with_revision(6)),
        /* 23 */ get_with("foo", opts().with_revision(0)),
        /* 24 */ get_with("foo", opts().with_revision(-1)),
        /* 25 */ get_with("new", opts().with_revision(3)),
        /* 26 */ get_with("foo", opts().with_revision(1)),
        /* 27 */ get("missing"),
        /* 28 */ get_with("foo", opts().with_serializable()),
        /* 29 */ get_with("foo", opts().with_keys_only()),
        /* 30 */ get_with("foo", opts().with_count_only()),
        /* 31 */ put_with("foo", "last", PutOptions::new().with_prev_key()),
        /* 32 */ get_with("foo", opts().with_revision(100)),
    ];
    let out = both.run(&ops).await;
    assert_eq!(out[0].rev(), 2);
    assert_eq!(out[2].rev(), 3);
    let Out::Put {
        prev: Some(prev), ..
    } = &out[2]
    else {
        panic!("prev_kv expected: {:?}", out[2]);
    };
    assert!(
        prev.value == "bar" && prev.ver == 1 && prev.modr == 2,
        "{prev:?}"
    );
    assert!(matches!(&out[3], Out::Put { prev: None, .. }));
    assert_eq!(out[5].pairs(), vec![("foo".into(), "baz".into())]);
    for i in [6, 7, 8] {
        assert_eq!(out[i].err(), KEY_NOT_FOUND, "step {i}");
    }
    for i in [11, 12, 13] {
        assert_eq!(out[i].err(), LEASE_NOT_FOUND, "step {i}");
    }
    // Failed writes consumed no revision and left nothing behind.
    assert_eq!(out[14].rev(), 7);
    assert_eq!(out[15].count(), 0);
    assert_eq!(out[20].pairs(), vec![("foo".into(), "bar".into())]);
    assert_eq!(out[26].count(), 0);
    assert_eq!(out[32].err(), FUTURE);
}

/// Keys for range tests, in put order (revisions 2..=11).
const KEYS: [&[u8]; 10] = [
    b"a",
    b"ab",
    b"abc",
    b"abd",
    b"b",
    b"ba",
    b"c",
    b"d\xff",
    b"\xff",
    b"\xff\xff",
];

fn setup_keys() -> Vec<Op> {
    let mut ops: Vec<Op> = KEYS
        .iter()
        .enumerate()
        .map(|(i, k)| put(k.to_vec(), format!("v{i}")))
        .collect();
    // 12: ab v2; 13, 14: b v2, v3; 15: delete ba; 16: ba again (new generation).
    ops.push(put("ab", "v1-again"));
    ops.push(put("b", "v4-again"));
    ops.push(put("b", "v4-third"));
    ops.push(del("ba"));
    ops.push(put("ba", "v5-reborn"));
    ops
}

async fn ranges_limits_counts_and_history(engine: Engine) {
    let pair = Pair::start(engine);
    let mut both = Both::to(&pair).await;
    let setup = both.run(&setup_keys()).await;
    assert_eq!(setup.last().unwrap().rev(), 16);
    let ops = vec![
        // Prefixes (etcd-client computes range_end like clientv3).
        /* 0 */
        get_with("a", opts().with_prefix()),
        /* 1 */ get_with("ab", opts().with_prefix()),
        /* 2 */ get_with("", opts().with_prefix()),
        /* 3 */ get_with(b"\xff".to_vec(), opts().with_prefix()),
        /* 4 */ get_with(b"d\xff".to_vec(), opts().with_prefix()),
        /* 5 */ get_with("zzz", opts().with_prefix()),
        // From-key and all keys.
        /* 6 */ get_with("b", opts().with_from_key()),
        /* 7 */ get_with("", opts().with_from_key()),
        /* 8 */ get_with("", opts().with_all_keys()),
        /* 9 */ get_with(b"\xff\xff\xff".to_vec(), opts().with_from_key()),
        // Explicit ranges, including empty and inverted ones.
        /* 10 */
        get_with("a", opts().with_range("b")),
        /* 11 */ get_with("abc", opts().with_range("abd")),
        /* 12 */ get_with("a", opts().with_range("a")),
        /* 13 */ get_with("b", opts().with_range("a")),
        /* 14 */ get_with("a", opts().with_range(b"\xff".to_vec())),
        /* 15 */ get_with("a", opts().with_range(vec![0u8, 0])),
        // Limits: more and count.
        /* 16 */
        get_with("a", opts().with_prefix().with_limit(1)),
        /* 17 */ get_with("a", opts().with_prefix().with_limit(3)),
        /* 18 */ get_with("a", opts().with_prefix().with_limit(4)),
        /* 19 */ get_with("a", opts().with_prefix().with_limit(5)),
        /* 20 */ get_with("a", opts().with_prefix().with_limit(-1)),
        /* 21 */ get_with("", opts().with_all_keys().with_limit(2)),
        /* 22 */ get_with("b", opts().with_limit(1)),
        // count_only / keys_only, alone and with limits.
        /* 23 */
        get_with("", opts().with_all_keys().with_count_only()),
        /* 24 */ get_with("a", opts().with_prefix().with_count_only().with_limit(1)),
        /* 25 */ get_with("a", opts().with_prefix().with_keys_only()),
        /* 26 */ get_with("a", opts().with_prefix().with_keys_only().with_limit(2)),
        /* 27 */
        get_with("a", opts().with_prefix().with_keys_only().with_count_only()),
        // History: the whole key space at several revisions.
        /* 28 */
        get_with("", opts().with_all_keys().with_revision(1)),
        /* 29 */ get_with("", opts().with_all_keys().with_revision(2)),
        /* 30 */ get_with("", opts().with_all_keys().with_revision(7)),
        /* 31 */ get_with("", opts().with_all_keys().with_revision(14)),
        /* 32 */ get_with("", opts().with_all_keys().with_revision(15)),
        /* 33 */ get_with("", opts().with_all_keys().with_revision(16)),
        /* 34 */ get_with("b", opts().with_prefix().with_revision(15).with_limit(1)),
        /* 35 */
        get_with(
            "b",
            opts().with_prefix().with_revision(15).with_count_only(),
        ),
        /* 36 */ get_with("b", opts().with_prefix().with_revision(17)),
        // Revision filters, alone, combined, with limits (etcd filters first,
        // then limits, and `more` is about the filtered list; count is not).
        /* 37 */
        get_with("", opts().with_all_keys().with_min_mod_revision(10)),
        /* 38 */ get_with("", opts().with_all_keys().with_max_mod_revision(5)),
        /* 39 */ get_with("", opts().with_all_keys().with_min_create_revision(12)),
        /* 40 */ get_with("", opts().with_all_keys().with_max_create_revision(3)),
        /* 41 */
        get_with(
            "",
            opts()
                .with_all_keys()
                .with_min_mod_revision(4)
                .with_max_mod_revision(12),
        ),
        /* 42 */
        get_with(
            "",
            opts()
                .with_all_keys()
                .with_min_create_revision(3)
                .with_max_create_revision(8)
                .with_limit(2),
        ),
        /* 43 */
        get_with(
            "",
            opts()
                .with_all_keys()
                .with_min_mod_revision(12)
                .with_limit(2),
        ),
        /* 44 */
        get_with(
            "",
            opts()
                .with_all_keys()
                .with_min_mod_revision(12)
                .with_limit(3),
        ),
        /* 45 */
        get_with(
            "",
            opts()
                .with_all_keys()
                .with_max_mod_revision(3)
                .with_revision(3),
        ),
        /* 46 */
        get_with("", opts().with_all_keys().with_min_mod_revision(100)),
        /* 47 */
        get_with(
            "",
            opts()
                .with_all_keys()
                .with_min_mod_revision(10)
                .with_count_only(),
        ),
        /* 48 */
        get_with(
            "",
            opts()
                .with_all_keys()
                .with_min_mod_revision(10)
                .with_keys_only()
                .with_limit(1),
        ),
        /* 49 */ get_with("a", opts().with_prefix().with_serializable().with_limit(2)),
    ];
    let out = both.run(&ops).await;
    let keys = |o: &Out| o.pairs().into_iter().map(|(k, _)| k).collect::<Vec<_>>();
    assert_eq!(keys(&out[0]), ["a", "ab", "abc", "abd"]);
    assert_eq!(out[8].count(), 10);
    assert_eq!(keys(&out[3]), ["\\xff", "\\xff\\xff"]);
    assert_eq!(out[13].count(), 0);
    let Out::Get {
        more, count, kvs, ..
    } = &out[17]
    else {
        panic!()
    };
    assert_eq!((kvs.len(), *count, *more), (3, 4, true));
    let Out::Get { more, .. } = &out[18] else {
        panic!()
    };
    assert!(!more);
    assert_eq!(out[28].count(), 0);
    assert_eq!(out[31].pairs().len(), 10);
    assert_eq!(out[32].pairs().len(), 9);
    assert!(matches!(&out[36], Out::Err { .. }));
    assert_eq!(keys(&out[37]), ["ab", "b", "ba", "\\xff", "\\xff\\xff"]);
    let Out::Get {
        more, count, kvs, ..
    } = &out[43]
    else {
        panic!()
    };
    assert_eq!((kvs.len(), *count, *more), (2, 10, true));
    let Out::Get { more, .. } = &out[44] else {
        panic!()
    };
    assert!(!more, "three keys have mod revision >= 12");
}

async fn sort_targets_orders_and_the_default_ascend_rule(engine: Engine) {
    let pair = Pair::start(engine);
    let mut both = Both::to(&pair).await;
    // Six keys with ties in every target but KEY: values repeat, versions
    // repeat, and create/mod orders differ from key order.
    let setup = vec![
        put("k5", "b"), // 2
        put("k2", "a"), // 3
        put("k4", "c"), // 4
        put("k1", "b"), // 5
        put("k6", "a"), // 6
        put("k3", "c"), // 7
        put("k4", "a"), // 8: k4 v2
        put("k1", "c"), // 9: k1 v2
        put("k1", "b"), // 10: k1 v3
        put("k6", "b"), // 11: k6 v2
        put("other", "zz"),
    ];
    both.run(&setup).await;
    let targets = [
        SortTarget::Key,
        SortTarget::Version,
        SortTarget::Create,
        SortTarget::Mod,
        SortTarget::Value,
    ];
    let orders = [SortOrder::None, SortOrder::Ascend, SortOrder::Descend];
    let mut ops = Vec::new();
    for t in targets {
        for o in orders {
            ops.push(get_with("k", opts().with_prefix().with_sort(t, o)));
            ops.push(get_with(
                "k",
                opts().with_prefix().with_sort(t, o).with_limit(3),
            ));
            ops.push(get_with(
                "k",
                opts()
                    .with_prefix()
                    .with_sort(t, o)
                    .with_keys_only()
                    .with_min_mod_revision(5)
                    .with_limit(2),
            ));
            ops.push(get_with(
                "k",
                opts().with_prefix().with_sort(t, o).with_revision(7),
            ));
        }
    }
    let out = both.run(&ops).await;
    let keys = |o: &Out| o.pairs().into_iter().map(|(k, _)| k).collect::<Vec<_>>();
    let at = |t: usize, o: usize| &out[(t * 3 + o) * 4];
    // Plain key order when nothing asks for a sort.
    assert_eq!(keys(at(0, 0)), ["k1", "k2", "k3", "k4", "k5", "k6"]);
    assert_eq!(keys(at(0, 2)), ["k6", "k5", "k4", "k3", "k2", "k1"]);
    // VERSION with order NONE sorts ascending (etcd's default-ascend rule).
    assert_eq!(keys(at(1, 0)), ["k2", "k3", "k5", "k4", "k6", "k1"]);
    assert_eq!(keys(at(1, 0)), keys(at(1, 1)));
    // Descending keeps ties in key order, as etcd's (insertion) sort does.
    assert_eq!(keys(at(1, 2)), ["k1", "k4", "k6", "k2", "k3", "k5"]);
    assert_eq!(keys(at(2, 0)), ["k5", "k2", "k4", "k1", "k6", "k3"]);
    assert_eq!(keys(at(3, 2)), ["k6", "k1", "k4", "k3", "k2", "k5"]);
    assert_eq!(keys(at(4, 2)), ["k3", "k1", "k5", "k6", "k2", "k4"]);
}

async fn deletes_single_range_prefix_and_missing(engine: Engine) {
    let pair = Pair::start(engine);
    let mut both = Both::to(&pair).await;
    both.run(&setup_keys()).await; // revision 16
    let ops = vec![
        /* 0 */ del_with("a", DeleteOptions::new().with_prev_key()),
        /* 1 */ del("a"),
        /* 2 */ del_with("nope", DeleteOptions::new().with_prev_key()),
        /* 3 */ get("a"),
        /* 4 */ del_with("ab", DeleteOptions::new().with_range("abd").with_prev_key()),
        /* 5 */ del_with("b", DeleteOptions::new().with_range("a")),
        /* 6 */ del_with("b", DeleteOptions::new().with_range("b")),
        /* 7 */ del_with("abd", DeleteOptions::new().with_prefix()),
        /* 8 */ del_with("b", DeleteOptions::new().with_prefix().with_prev_key()),
        /* 9 */ del_with("zz", DeleteOptions::new().with_prefix()),
        /* 10 */ del_with(b"d\xff".to_vec(), DeleteOptions::new().with_from_key()),
        /* 11 */ get_with("", opts().with_all_keys()),
        /* 12 */ get_with("", opts().with_all_keys().with_revision(16)),
        /* 13 */ get_with("", opts().with_all_keys().with_revision(18)),
        /* 14 */ put("a", "again"),
        /* 15 */ get("a"),
        /* 16 */ put("b", "again"),
        /* 17 */ del_with("", DeleteOptions::new().with_all_keys().with_prev_key()),
        /* 18 */ del_with("", DeleteOptions::new().with_all_keys()),
        /* 19 */ get_with("", opts().with_all_keys()),
        /* 20 */ get_with("b", opts().with_revision(13)),
    ];
    let out = both.run(&ops).await;
    assert_eq!(out[0].rev(), 17);
    let Out::Del { deleted, prev, .. } = &out[0] else {
        panic!()
    };
    assert_eq!((*deleted, prev.len()), (1, 1));
    // Deleting what does not exist consumes no revision.
    assert_eq!(out[1].rev(), 17);
    assert_eq!(out[2].rev(), 17);
    assert!(matches!(&out[2], Out::Del { deleted: 0, prev, .. } if prev.is_empty()));
    let Out::Del { deleted, .. } = &out[4] else {
        panic!()
    };
    assert_eq!(*deleted, 2, "ab and abc");
    assert_eq!(out[5].rev(), 18);
    assert_eq!(out[6].rev(), 18);
    assert_eq!(out[12].pairs().len(), 10);
    assert_eq!(out[15].pairs(), vec![("a".into(), "again".into())]);
    let Out::Get { kvs, .. } = &out[15] else {
        panic!()
    };
    assert_eq!((kvs[0].ver, kvs[0].create), (1, kvs[0].modr));
    assert_eq!(out[19].count(), 0);
}

fn if_then_else(cmp: Compare) -> Op {
    txn(Txn::new()
        .when(vec![cmp])
        .and_then(vec![TxnOp::get("a", None)])
        .or_else(vec![TxnOp::get("b", None)]))
}

async fn txn_compare_every_target_and_result(engine: Engine) {
    let pair = Pair::start(engine);
    let mut both = Both::to(&pair).await;
    // a: "m" v2 create 2 mod 3; b: "x" v1 create 4 mod 4; c: "z" create 5.
    both.run(&[put("a", "1"), put("a", "m"), put("b", "x"), put("c", "z")])
        .await;
    use CompareOp::{Equal, Greater, Less, NotEqual};
    let results = [Equal, NotEqual, Greater, Less];
    let mut cmps: Vec<Compare> = Vec::new();
    for key in ["a", "zz"] {
        for r in results {
            for v in ["", "a", "m", "mm", "z"] {
                cmps.push(Compare::value(key, r, v));
            }
            for n in [0, 1, 2, 3, 10] {
                cmps.push(Compare::version(key, r, n));
                cmps.push(Compare::create_revision(key, r, n));
                cmps.push(Compare::mod_revision(key, r, n));
            }
            for n in [-1, 0, 1] {
                cmps.push(Compare::lease(key, r, n));
            }
        }
    }
    // Compares over ranges: every key in the range must satisfy it; an empty
    // range compares as one missing key.
    for r in results {
        cmps.push(Compare::version("a", r, 1).with_range("c"));
        cmps.push(Compare::version("a", r, 0).with_range("d"));
        cmps.push(Compare::create_revision("a", r, 3).with_prefix());
        cmps.push(Compare::mod_revision("a", r, 5).with_range(vec![0u8]));
        cmps.push(Compare::value("a", r, "n").with_range("c"));
        cmps.push(Compare::value("q", r, "n").with_prefix());
        cmps.push(Compare::version("q", r, 0).with_prefix());
        cmps.push(Compare::version("c", r, 1).with_range("a"));
        cmps.push(Compare::lease(vec![0u8], r, 0).with_range(vec![0u8]));
    }
    let mut ops: Vec<Op> = cmps.iter().cloned().map(if_then_else).collect();
    // Several compares: all must hold.
    ops.push(txn(Txn::new()
        .when(vec![
            Compare::value("a", Equal, "m"),
            Compare::version("b", Equal, 1),
        ])
        .and_then(vec![TxnOp::get("c", None)])));
    ops.push(txn(Txn::new()
        .when(vec![
            Compare::value("a", Equal, "m"),
            Compare::version("b", Equal, 2),
        ])
        .and_then(vec![TxnOp::get("c", None)])));
    let out = both.run(&ops).await;
    let ok = |c: &Compare| {
        let i = cmps
            .iter()
            .position(|x| format!("{x:?}") == format!("{c:?}"))
            .unwrap();
        out[i].succeeded()
    };
    assert!(ok(&Compare::value("a", Equal, "m")));
    assert!(
        !ok(&Compare::value("zz", NotEqual, "m")),
        "value compare on a missing key fails"
    );
    assert!(ok(&Compare::version("zz", Equal, 0)));
    assert!(ok(&Compare::mod_revision("a", Equal, 3)));
    assert!(ok(&Compare::create_revision("a", Less, 3)));
    assert!(ok(&Compare::lease("a", Equal, 0)));
    assert!(!ok(&Compare::version("a", Greater, 2)));
    assert!(out[out.len() - 2].succeeded());
    assert!(!out[out.len() - 1].succeeded());
    // A read-only txn never moves the revision.
    assert!(out.iter().all(|o| o.rev() == 5));
}

async fn txn_branches_responses_nesting_and_revisions(engine: Engine) {
    let pair = Pair::start(engine);
    let mut both = Both::to(&pair).await;
    both.run(&[put("a", "1"), put("b", "2")]).await; // revision 3
    use CompareOp::{Equal, Greater};
    let prefix = || Some(GetOptions::new().with_prefix());
    let write = Txn::new()
        .when(vec![Compare::version("a", Equal, 1)])
        .and_then(vec![
            TxnOp::put("a", "then", Some(PutOptions::new().with_prev_key())),
            TxnOp::put("d", "new", Some(PutOptions::new().with_prev_key())),
            TxnOp::get("a", None),
            TxnOp::delete("b", Some(DeleteOptions::new().with_prev_key())),
            TxnOp::delete("nothing", None),
            TxnOp::get("", Some(GetOptions::new().with_all_keys())),
            TxnOp::get("a", Some(GetOptions::new().with_revision(2))),
        ])
        .or_else(vec![TxnOp::put("e", "else", None), TxnOp::get("a", None)]);
    // Nested txns: the inner compares are evaluated against the state before
    // the outer txn applies anything.
    let inner_then = Txn::new()
        .when(vec![Compare::version("x", Equal, 0)])
        .and_then(vec![
            TxnOp::put("y", "inner-then", None),
            TxnOp::get("x", None),
        ])
        .or_else(vec![TxnOp::put("y", "inner-else", None)]);
    let inner_else = Txn::new()
        .when(vec![Compare::value("a", Equal, "nope")])
        .and_then(vec![TxnOp::put("z", "deep-then", None)])
        .or_else(vec![
            TxnOp::put("z", "deep-else", None),
            TxnOp::txn(
                Txn::new()
                    .when(vec![Compare::version("z", Equal, 0)])
                    .and_then(vec![TxnOp::get("z", None)])
                    // Not taken; etcd's overlap check still sees the
                    // delete of y (put by the sibling txn before) as fine.
                    .or_else(vec![TxnOp::delete("y", None)]),
            ),
        ]);
    let nested = Txn::new()
        .when(vec![Compare::version("a", Greater, 0)])
        .and_then(vec![
            TxnOp::put("x", "outer", None),
            TxnOp::txn(inner_then),
            TxnOp::get("x", None),
            TxnOp::txn(inner_else),
            TxnOp::get("", prefix()),
        ])
        .or_else(vec![TxnOp::put("never", "", None)]);
    let ops = vec![
        /* 0 */ txn(write.clone()),
        /* 1 */ txn(write),
        // Read-only txns: success and failure branch.
        /* 2 */
        txn(Txn::new()
            .when(vec![Compare::value("a", Equal, "then")])
            .and_then(vec![TxnOp::get("a", None), TxnOp::get("", prefix())])
            .or_else(vec![TxnOp::get("b", None)])),
        /* 3 */
        txn(Txn::new()
            .when(vec![Compare::value("a", Equal, "else")])
            .and_then(vec![TxnOp::get("a", None)])
            .or_else(vec![TxnOp::get(
                "b",
                Some(GetOptions::new().with_revision(3)),
            )])),
        // Empty txns.
        /* 4 */ txn(Txn::new()),
        /* 5 */ txn(Txn::new().when(vec![Compare::version("a", Equal, 99)])),
        // Write txn that changes nothing; then delete-nothing before and after a put.
        /* 6 */
        txn(Txn::new().and_then(vec![TxnOp::delete("nothing", None)])),
        /* 7 */
        txn(Txn::new().and_then(vec![
            TxnOp::delete("nothing", None),
            TxnOp::put("f", "1", None),
            TxnOp::delete("nothing2", None),
            TxnOp::get("f", None),
        ])),
        // A branch whose write is not taken still makes it a write txn.
        /* 8 */
        txn(Txn::new()
            .when(vec![Compare::version("a", Equal, 99)])
            .and_then(vec![TxnOp::put("g", "1", None)])
            .or_else(vec![TxnOp::get("a", None)])),
        /* 9 */ txn(nested.clone()),
        /* 10 */ get_with("", GetOptions::new().with_all_keys()),
        // Errors inside txns, and nothing applied afterwards.
        /* 11 */
        txn(Txn::new().and_then(vec![
            TxnOp::put("h", "1", None),
            TxnOp::put("i", "1", Some(PutOptions::new().with_lease(12345))),
        ])),
        /* 12 */
        txn(Txn::new().and_then(vec![
            TxnOp::put("h", "1", None),
            TxnOp::put("missing", "", Some(PutOptions::new().with_ignore_value())),
        ])),
        /* 13 */
        txn(Txn::new().and_then(vec![
            TxnOp::put("h", "1", None),
            TxnOp::get("a", Some(GetOptions::new().with_revision(1000))),
        ])),
        // The same bad ops in the branch not taken are fine.
        /* 14 */
        txn(Txn::new()
            .when(vec![Compare::version("a", Equal, 99)])
            .and_then(vec![
                TxnOp::put("i", "1", Some(PutOptions::new().with_lease(12345))),
                TxnOp::put("missing", "", Some(PutOptions::new().with_ignore_value())),
                TxnOp::get("a", Some(GetOptions::new().with_revision(1000))),
            ])
            .or_else(vec![TxnOp::put("h", "2", None)])),
        // ignore_value / ignore_lease on an existing key inside a txn.
        /* 15 */
        txn(Txn::new().and_then(vec![
            TxnOp::put(
                "a",
                "",
                Some(PutOptions::new().with_ignore_value().with_prev_key()),
            ),
            TxnOp::put(
                "d",
                "kept-lease",
                Some(PutOptions::new().with_ignore_lease()),
            ),
        ])),
        // Lease not found in a nested txn's taken branch.
        /* 16 */
        txn(
            Txn::new().and_then(vec![TxnOp::txn(Txn::new().and_then(vec![TxnOp::put(
                "j",
                "1",
                Some(PutOptions::new().with_lease(12345)),
            )]))]),
        ),
        /* 17 */ get_with("", GetOptions::new().with_all_keys()),
    ];
    let out = both.run(&ops).await;
    assert!(out[0].succeeded());
    assert_eq!(out[0].rev(), 4, "one revision for the whole txn");
    assert_eq!(out[0].ops().len(), 7);
    assert!(out[0].ops()[..6].iter().all(|o| o.rev() == 4));
    assert!(!out[1].succeeded());
    assert_eq!(out[1].rev(), 5);
    assert_eq!(out[2].rev(), 5);
    assert_eq!(out[4].rev(), 5);
    assert!(out[4].succeeded());
    assert_eq!(
        out[6].rev(),
        5,
        "a write txn without changes keeps the revision"
    );
    assert_eq!(
        out[7].ops().iter().map(Out::rev).collect::<Vec<_>>(),
        [5, 6, 6, 6]
    );
    assert_eq!(out[8].rev(), 6);
    let inner = &out[9].ops()[1];
    assert!(inner.succeeded(), "x did not exist before the outer txn");
    assert_eq!(inner.rev(), 0, "etcd leaves nested txn headers empty");
    assert_eq!(out[11].err(), LEASE_NOT_FOUND);
    assert_eq!(out[12].err(), KEY_NOT_FOUND);
    assert_eq!(out[13].err(), FUTURE);
    assert_eq!(out[16].err(), LEASE_NOT_FOUND);
    assert!(!out[17].pairs().iter().any(|(k, _)| k == "i" || k == "j"));
}

async fn compaction_and_reads_around_it(engine: Engine) {
    let pair = Pair::start(engine);
    let mut both = Both::to(&pair).await;
    let read_at = |rev: i64| {
        txn(Txn::new().and_then(vec![TxnOp::get(
            "k",
            Some(GetOptions::new().with_revision(rev)),
        )]))
    };
    let ops = vec![
        // A fresh store was never compacted: a negative revision reads the
        // current state, in and outside a txn.
        /* 0 */
        read_at(-1),
        /* 1 */ get_with("k", opts().with_revision(-1)),
        // Compacting at 0 is allowed once on a fresh store.
        /* 2 */ compact(0),
        /* 3 */ compact(0),
        /* 4 */ read_at(-1),
        /* 5 */ get_with("k", opts().with_revision(-1)),
        /* 6 */ put("k", "v1"), // 2
        /* 7 */ put("k", "v2"), // 3
        /* 8 */ put("k", "v3"), // 4
        /* 9 */ put("other", "o"), // 5
        /* 10 */ del("other"), // 6
        /* 11 */ compact(3),
        /* 12 */ get_with("k", opts().with_revision(2)),
        /* 13 */ get_with("k", opts().with_revision(3)),
        /* 14 */ get_with("k", opts().with_revision(4)),
        /* 15 */ get_with("k", opts().with_revision(0)),
        /* 16 */ get_with("", opts().with_all_keys().with_revision(5)),
        /* 17 */ compact(3),
        /* 18 */ compact(2),
        /* 19 */ compact(7),
        /* 20 */ compact(-5),
        /* 21 */ read_at(2),
        /* 22 */ read_at(3),
        /* 23 */ read_at(7),
        /* 24 */ read_at(-1),
        // Compacting at the delete keeps nothing of `other`.
        /* 25 */
        Op::Compact(6, true),
        /* 26 */ get_with("", opts().with_all_keys().with_revision(6)),
        /* 27 */ get_with("", opts().with_all_keys().with_revision(5)),
        /* 28 */ put("k", "v4"), // 7
        /* 29 */ get_with("k", opts().with_revision(6)),
        /* 30 */ get("k"),
        /* 31 */ compact(7),
        /* 32 */ get_with("k", opts().with_count_only().with_revision(7)),
        /* 33 */ del_with("k", DeleteOptions::new().with_prev_key()),
        /* 34 */ compact(8),
        /* 35 */ get_with("", opts().with_all_keys()),
    ];
    let out = both.run(&ops).await;
    assert_eq!(out[2].rev(), 1);
    assert_eq!(out[3].err(), COMPACTED);
    assert_eq!(
        out[11].rev(),
        6,
        "compaction answers with the current revision"
    );
    assert_eq!(out[12].err(), COMPACTED);
    assert_eq!(out[13].pairs(), vec![("k".into(), "v2".into())]);
    assert_eq!(out[17].err(), COMPACTED);
    assert_eq!(out[18].err(), COMPACTED);
    assert_eq!(out[19].err(), FUTURE);
    assert_eq!(out[21].err(), COMPACTED);
    assert_eq!(out[23].err(), FUTURE);
    assert_eq!(out[27].err(), COMPACTED);
    assert_eq!(out[29].pairs(), vec![("k".into(), "v3".into())]);
    assert_eq!(out[35].count(), 0);
}

async fn sorting_many_ties_leaves_them_where_etcd_does(engine: Engine) {
    // Over 12 items Go's sort.Sort (etcd's) is an unstable pdqsort: the order
    // among equal elements, and with a limit the keys returned, follow it.
    let pair = Pair::start(engine);
    let mut both = Both::to(&pair).await;
    let batch = |prefix: &str, n: usize, m: usize| {
        txn(Txn::new().and_then(
            (0..n)
                .map(|i| TxnOp::put(format!("{prefix}{i:02}"), format!("{}", i % m), None))
                .collect::<Vec<_>>(),
        ))
    };
    let mut setup = vec![batch("s", 40, 3)];
    setup.extend(
        (0..40)
            .step_by(4)
            .map(|i| put(format!("s{i:02}"), format!("{}", i % 3))),
    );
    setup.push(batch("t", 100, 2));
    setup.extend((0..100).step_by(7).map(|i| put(format!("t{i:02}"), "x")));
    setup.push(batch("t", 30, 5));
    both.run(&setup).await;
    let targets = [
        SortTarget::Version,
        SortTarget::Create,
        SortTarget::Mod,
        SortTarget::Value,
        SortTarget::Key,
    ];
    let mut ops = Vec::new();
    for prefix in ["s", "t", ""] {
        for t in targets {
            for o in [SortOrder::None, SortOrder::Ascend, SortOrder::Descend] {
                let base = || opts().with_prefix().with_sort(t, o).with_keys_only();
                ops.push(get_with(prefix, base()));
                ops.push(get_with(prefix, base().with_limit(7)));
                ops.push(get_with(
                    prefix,
                    base().with_min_mod_revision(5).with_limit(20),
                ));
            }
        }
    }
    let out = both.run(&ops).await;
    assert_eq!(out[0].count(), 40);
    assert!(out.iter().all(|o| matches!(o, Out::Get { .. })));
}

engine_tests!(async: put_get_prev_kv_ignore_flags_and_leases, ranges_limits_counts_and_history, sort_targets_orders_and_the_default_ascend_rule, deletes_single_range_prefix_and_missing, txn_compare_every_target_and_result, txn_branches_responses_nesting_and_revisions, compaction_and_reads_around_it, sorting_many_ties_leaves_them_where_etcd_does);
