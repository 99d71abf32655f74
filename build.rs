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
    // Proto3 JSON (serde) for the etcd messages: the /v3 JSON gateway.
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    pbjson_build::Builder::new()
        .register_descriptors(&prost::Message::encode_to_vec(&fds))?
        .preserve_proto_field_names()
        .out_dir(&out_dir)
        .build(&[
            ".etcdserverpb",
            ".mvccpb",
            ".authpb",
            ".v3lockpb",
            ".v3electionpb",
        ])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Every message is encoded into a buffer reserved for all of it.
        .codec_path("crate::api::codec::PresizedCodec")
        // Shared, not copied, by every watcher a batch of events matches.
        .bytes(".metastorepb.WatchResponseWire.events")
        // A value read goes out shared with the store (a reference count,
        // not a copy of its bytes), and a client decodes it as a slice of
        // the message it came in.
        .bytes(".mvccpb.KeyValue.value")
        .compile_fds(fds)?;
    Ok(())
}
