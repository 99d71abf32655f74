//! Generated code for the etcd v3 API (packages `etcdserverpb`, `mvccpb`,
//! `authpb`, `v3lockpb`, `v3electionpb`) and MetaStore's own messages
//! (`metastorepb`).

#![allow(missing_docs, clippy::all, clippy::pedantic)]

/// etcd's key-value messages.
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
    include!(concat!(env!("OUT_DIR"), "/mvccpb.serde.rs"));
}

/// etcd's auth messages.
pub mod authpb {
    tonic::include_proto!("authpb");
    include!(concat!(env!("OUT_DIR"), "/authpb.serde.rs"));
}

/// etcd's v3 services and their messages.
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.serde.rs"));
}

/// What a Raft log entry carries.
pub mod metastorepb {
    tonic::include_proto!("metastorepb");
}

/// etcd's lock service.
pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
    include!(concat!(env!("OUT_DIR"), "/v3lockpb.serde.rs"));
}

/// etcd's election service.
pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
    include!(concat!(env!("OUT_DIR"), "/v3electionpb.serde.rs"));
}

/// The standard gRPC health checking service.
pub mod health {
    tonic::include_proto!("grpc.health.v1");
}
