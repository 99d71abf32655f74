//! Integration tests: real daemons on loopback, real clients (the etcd-client
//! crate and etcdctl), and etcd 3.4 itself where its answers are the reference.

mod diff;
mod durability;
mod errors;
mod etcdctl;
mod harness;
mod kv;
mod smoke;
