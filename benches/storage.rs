//! Criterion micro-benchmarks of the storage layer: MVCC put and range, WAL
//! append + fsync (group commit of 1 and 64 entries), and the encoding of a
//! LIST page as tonic's prost codec does it and as MetaStore's codec does.
//!
//! `cargo bench --bench storage`

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

use metastore::api::codec::encode_presized;
use metastore::proto::etcdserverpb::RangeResponse;
use metastore::proto::mvccpb::KeyValue;
use metastore::storage::memory::mvcc::MemStore;
use metastore::storage::memory::wal::{Wal, WalOptions};
use metastore::storage::RangeOptions;
use prost::Message as _;

fn filled(keys: usize) -> MemStore {
    let mut s = MemStore::new();
    for i in 0..keys {
        let mut w = s.write();
        w.put(format!("key/{i:08}").as_bytes(), vec![b'v'; 256].into(), 0);
        w.end();
    }
    s
}

fn mvcc(c: &mut Criterion) {
    let mut g = c.benchmark_group("mvcc");
    g.throughput(Throughput::Elements(1));
    g.bench_function("put_new_key_256B", |b| {
        let mut s = MemStore::new();
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            let mut w = s.write();
            w.put(format!("key/{i:012}").as_bytes(), vec![b'v'; 256].into(), 0);
            w.end()
        });
    });
    g.bench_function("put_same_key_256B", |b| {
        let mut s = MemStore::new();
        b.iter(|| {
            let mut w = s.write();
            w.put(b"hot", vec![b'v'; 256].into(), 0);
            w.end()
        });
    });
    let s = filled(100_000);
    g.bench_function("get_one_of_100k", |b| {
        let mut i = 0usize;
        b.iter(|| {
            i = (i + 7919) % 100_000;
            s.range(
                format!("key/{i:08}").as_bytes(),
                &[],
                &RangeOptions::default(),
            )
            .expect("range")
        });
    });
    g.bench_function("range_100_of_100k", |b| {
        b.iter(|| {
            s.range(b"key/00050000", b"key/00050100", &RangeOptions::default())
                .expect("range")
        });
    });
    g.finish();
}

fn wal(c: &mut Criterion) {
    let mut g = c.benchmark_group("wal");
    g.sample_size(20);
    for batch in [1usize, 64] {
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_function(format!("append_sync_{batch}x300B"), |b| {
            let dir = tempfile::tempdir().expect("temp dir");
            let (mut wal, _) = Wal::open(dir.path(), WalOptions::default()).expect("open");
            let payload = vec![7u8; 300];
            let mut index = 0;
            b.iter_batched(
                || (),
                |_| {
                    for _ in 0..batch {
                        index += 1;
                        wal.append(1, &payload, index);
                    }
                    wal.sync().expect("sync")
                },
                BatchSize::PerIteration,
            );
        });
    }
    g.finish();
}

/// A page of the apiserver's LIST: 500 objects of 1-4 KiB (~1.2 MB).
fn list_page() -> RangeResponse {
    RangeResponse {
        kvs: (0..500)
            .map(|i| KeyValue {
                key: format!("/registry/pods/ns-{}/pod-{i}", i % 100).into_bytes(),
                value: vec![b'v'; 1024 + (i * 6151) % 3072].into(),
                create_revision: 10 + i as i64,
                mod_revision: 10 + i as i64,
                version: 1,
                lease: 0,
            })
            .collect(),
        count: 10_000,
        more: true,
        ..Default::default()
    }
}

fn encode(c: &mut Criterion) {
    let page = list_page();
    let mut g = c.benchmark_group("encode");
    g.throughput(Throughput::Bytes(page.encoded_len() as u64));
    // tonic's prost encoder: the message written into the response's
    // 8 KiB buffer, which grows as it fills.
    g.bench_function("list_page_growing", |b| {
        b.iter(|| {
            let mut buf = bytes::BytesMut::with_capacity(8 * 1024);
            page.encode(&mut buf).expect("room");
            buf.freeze()
        });
    });
    g.bench_function("list_page_presized", |b| {
        b.iter(|| {
            let mut buf = bytes::BytesMut::with_capacity(8 * 1024);
            encode_presized(&page, &mut buf);
            buf.freeze()
        });
    });
    g.finish();
}

criterion_group!(benches, mvcc, wal, encode);
criterion_main!(benches);
