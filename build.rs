//! Compiles the etcd v3 API protos and MetaStore's own with protox, so no
//! system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(
        [
            "etcdserverpb/rpc.proto",
            "metastore/internal.proto",
            "metastore/peer.proto",
            "v3lockpb/v3lock.proto",
            "v3electionpb/v3election.proto",
            "grpc/health/v1/health.proto",
        ],
        ["proto"],
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Shared, not copied, by every watcher a batch of events matches.
        .bytes(".metastorepb.WatchResponseWire.events")
        .compile_fds(fds)?;
    Ok(())
}
