//! The `metastore` daemon: one process is one Raft member.

use clap::Parser;

use metastore::config::{Config, Flags, LogFormat};

/// jemalloc: the gRPC path allocates per request, and glibc's malloc showed up
/// as ~12% of server CPU under a put load.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    // A panic on any thread is a bug; a member with a dead Raft or WAL
    // thread must not go on answering: report it and stop the process.
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        std::process::exit(70);
    }));
    metastore::failpoints::setup();
    raise_open_files_limit();
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
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cfg.log_format {
        LogFormat::Json => logs.json().flatten_event(true).init(),
        LogFormat::Text => logs.init(),
    }
    if let Err(e) = metastore::server::run(cfg) {
        tracing::error!("{e}");
        eprintln!("metastore: {e}");
        // A fatal error (failed fsync, commit, snapshot install) keeps its
        // own code; any other failure to run is 1.
        let code = e
            .downcast_ref::<metastore::error::MemberStopped>()
            .map_or(1, |s| s.code);
        std::process::exit(code);
    }
}

/// Lifts the soft limit on open files to the hard one, as Go's runtime does
/// for etcd: every client connection is a descriptor, and the usual soft
/// limit (1024) would refuse connections long before the member is busy.
fn raise_open_files_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}
