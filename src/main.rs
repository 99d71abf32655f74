//! The `metastore` daemon: one process is one Raft member.

use clap::Parser;

use metastore::config::{Config, Flags};

/// jemalloc: the gRPC path allocates per request, and glibc's malloc showed up
/// as ~12% of server CPU under a put load.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    let flags = Flags::parse();
    let cfg = match Config::load(flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("metastore: {e}");
            std::process::exit(2);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cfg.log_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = metastore::server::run(cfg) {
        tracing::error!("{e}");
        eprintln!("metastore: {e}");
        std::process::exit(1);
    }
}
