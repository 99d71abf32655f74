//! A TCP proxy in front of each member's peer port, driven by the test: real
//! network faults between real daemons, per directed pair of members.
//!
//! Each member listens for peers on its own loopback address
//! ([`member_ip`]: 127.0.0.11, .12, ...) and dials its peers from it
//! (MetaStore binds the host of its first listen peer URL before it
//! connects). Every member's advertised peer URL is its proxy's port on
//! 127.0.0.1, so all Raft traffic crosses the proxy, which knows the callee
//! by the port it accepted on and the caller by the connection's source IP.
//!
//! A member sends its Raft messages and snapshots to a peer only over the
//! connections it dials to that peer; the answers coming back on them are
//! transport-level (HTTP/2 acks, the stream's end). So a rule on `from → to`
//! acts on the connections `from` dialed to `to`, in both byte directions:
//! - blackhole: nothing is read or forwarded either way, and a new
//!   connection is accepted and held (nothing forwarded, the callee not even
//!   dialed) until the rule goes; then what is held flows on, as TCP would
//!   retransmit it. Keep blackholes under ~8 s or expect the caller's HTTP/2
//!   keepalive (5 s + 5 s) to give up on the connection and dial a new one;
//!   [`NetProxy::expire_blackholed`] does that at once (what a long outage
//!   does: the bytes in flight are lost).
//! - loss: each chunk the caller sends is, with the given probability,
//!   dropped and its connection cut both ways (a byte stream cannot lose a
//!   message and go on): the messages in flight are lost and the caller
//!   redials.
//! - delay: every chunk is held for mean ± jitter (uniform), in order.
//!
//! Connections from an address that is not a member's (a member that did not
//! bind its source) match no rule: partition tests then fail, which is how
//! they guard the source binding.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// The loopback address member `i` (0-based) listens and dials from.
pub fn member_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 11 + i as u8)
}

/// The member a source address belongs to.
fn member_of(ip: IpAddr, members: usize) -> Option<usize> {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            let i = (d as usize).checked_sub(11)?;
            (a == 127 && b == 0 && c == 0 && i < members).then_some(i)
        }
        IpAddr::V6(_) => None,
    }
}

/// The faults in force, by directed pair (caller, callee).
#[derive(Default)]
struct Rules {
    blackhole: HashSet<(usize, usize)>,
    loss: HashMap<(usize, usize), f64>,
    delay: HashMap<(usize, usize), (Duration, Duration)>,
}

/// A live proxied connection: its pair (None: a stranger's) and one handle
/// on each end.
type Proxied = (Option<(usize, usize)>, [TcpStream; 2]);

struct Shared {
    rules: Mutex<Rules>,
    stop: AtomicBool,
    /// Every proxied socket, shut down when the proxy goes (wakes writers
    /// blocked on a stopped member).
    sockets: Mutex<HashMap<u64, Proxied>>,
    next_id: AtomicU64,
    /// Bytes forwarded caller → callee, per pair.
    forwarded: Mutex<HashMap<(usize, usize), u64>>,
    /// Connections accepted from addresses that are no member's.
    strangers: AtomicU64,
    /// Connections cut by the loss rule.
    cuts: AtomicU64,
    rng: Mutex<u64>,
}

impl Shared {
    fn blackholed(&self, pair: Option<(usize, usize)>) -> bool {
        pair.is_some_and(|p| self.rules.lock().blackhole.contains(&p))
    }

    fn loss(&self, pair: Option<(usize, usize)>) -> f64 {
        pair.and_then(|p| self.rules.lock().loss.get(&p).copied())
            .unwrap_or(0.0)
    }

    fn delay(&self, pair: Option<(usize, usize)>) -> Duration {
        let Some((mean, jitter)) = pair.and_then(|p| self.rules.lock().delay.get(&p).copied())
        else {
            return Duration::ZERO;
        };
        // Uniform in [mean - jitter, mean + jitter].
        let u = self.uniform();
        let low = mean.saturating_sub(jitter);
        low + (mean + jitter - low).mul_f64(u)
    }

    /// A uniform number in [0, 1) (xorshift; good enough for fault rolls).
    fn uniform(&self) -> f64 {
        let mut s = self.rng.lock();
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        (*s >> 11) as f64 / (1u64 << 53) as f64
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// One proxy port per member; faults set on it act at once, on live and
/// new connections alike. Stops (and cuts every connection) on drop.
pub struct NetProxy {
    shared: Arc<Shared>,
    /// The port in front of member `i`, on 127.0.0.1.
    pub ports: Vec<u16>,
    acceptors: Vec<JoinHandle<()>>,
}

impl NetProxy {
    /// Proxies in front of `targets` (member `i`'s real peer address).
    pub fn start(targets: &[SocketAddr]) -> NetProxy {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1;
        let shared = Arc::new(Shared {
            rules: Mutex::default(),
            stop: AtomicBool::new(false),
            sockets: Mutex::default(),
            next_id: AtomicU64::new(0),
            forwarded: Mutex::default(),
            strangers: AtomicU64::new(0),
            cuts: AtomicU64::new(0),
            rng: Mutex::new(seed),
        });
        let members = targets.len();
        let mut ports = Vec::new();
        let mut acceptors = Vec::new();
        for (to, &target) in targets.iter().enumerate() {
            let (listener, port) = loop {
                let port = crate::harness::free_port();
                if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
                    break (l, port);
                }
            };
            listener.set_nonblocking(true).unwrap();
            ports.push(port);
            let shared = shared.clone();
            acceptors.push(std::thread::spawn(move || {
                accept_loop(listener, to, target, members, shared)
            }));
        }
        NetProxy {
            shared,
            ports,
            acceptors,
        }
    }

    /// The URL member `i`'s peers reach it at.
    pub fn url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.ports[i])
    }

    /// Blackholes every pair of members in different groups, both ways.
    pub fn partition(&self, groups: &[&[usize]]) {
        let mut rules = self.shared.rules.lock();
        for (g, group) in groups.iter().enumerate() {
            for (h, other) in groups.iter().enumerate() {
                if g == h {
                    continue;
                }
                for &a in group.iter() {
                    for &b in other.iter() {
                        rules.blackhole.insert((a, b));
                    }
                }
            }
        }
    }

    /// Blackholes member `m` from every other, both ways.
    pub fn isolate(&self, m: usize) {
        let others: Vec<usize> = (0..self.ports.len()).filter(|&i| i != m).collect();
        self.partition(&[&[m], &others]);
    }

    /// Blackholes what `from` sends to `to` only (its connections to `to`).
    pub fn one_way(&self, from: usize, to: usize) {
        self.shared.rules.lock().blackhole.insert((from, to));
    }

    /// Drops `fraction` of the chunks `from` sends to `to`, each drop
    /// cutting its connection.
    pub fn loss(&self, from: usize, to: usize, fraction: f64) {
        self.shared.rules.lock().loss.insert((from, to), fraction);
    }

    /// Holds every chunk between `from` and `to` (on `from`'s connections)
    /// for `mean` ± `jitter`.
    pub fn delay(&self, from: usize, to: usize, mean: Duration, jitter: Duration) {
        self.shared
            .rules
            .lock()
            .delay
            .insert((from, to), (mean, jitter));
    }

    /// Resets every connection a blackhole holds, as the caller's keepalive
    /// would once the fault outlasts it: what was in flight is lost, and
    /// the caller must dial again (its new connections are held until the
    /// blackhole goes).
    pub fn expire_blackholed(&self) {
        let rules = self.shared.rules.lock();
        for (pair, ends) in self.shared.sockets.lock().values() {
            if pair.is_some_and(|p| rules.blackhole.contains(&p)) {
                for s in ends {
                    let _ = s.shutdown(Shutdown::Both);
                }
            }
        }
    }

    /// Removes every fault; held connections flow again.
    pub fn heal(&self) {
        *self.shared.rules.lock() = Rules::default();
    }

    /// Bytes forwarded so far from `from` to `to`.
    pub fn forwarded(&self, from: usize, to: usize) -> u64 {
        self.shared
            .forwarded
            .lock()
            .get(&(from, to))
            .copied()
            .unwrap_or(0)
    }

    /// Connections that came from no member's address.
    pub fn strangers(&self) -> u64 {
        self.shared.strangers.load(Ordering::Relaxed)
    }

    /// Connections the loss rule cut.
    pub fn cuts(&self) -> u64 {
        self.shared.cuts.load(Ordering::Relaxed)
    }
}

impl Drop for NetProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for (_, (_, ends)) in self.shared.sockets.lock().drain() {
            for s in ends {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
        for a in self.acceptors.drain(..) {
            let _ = a.join();
        }
    }
}

fn accept_loop(
    listener: TcpListener,
    to: usize,
    target: SocketAddr,
    members: usize,
    shared: Arc<Shared>,
) {
    while !shared.stopped() {
        match listener.accept() {
            Ok((caller, addr)) => {
                let from = member_of(addr.ip(), members);
                if from.is_none() {
                    shared.strangers.fetch_add(1, Ordering::Relaxed);
                }
                let pair = from.map(|f| (f, to));
                let shared = shared.clone();
                std::thread::spawn(move || serve(caller, target, pair, shared));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// One proxied connection: held while blackholed, then piped both ways.
fn serve(caller: TcpStream, target: SocketAddr, pair: Option<(usize, usize)>, shared: Arc<Shared>) {
    let _ = caller.set_nonblocking(false);
    let _ = caller.set_nodelay(true);
    // A new connection under a blackhole is accepted and held: the callee
    // is not dialed until the rule goes.
    while shared.blackholed(pair) {
        if shared.stopped() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let Ok(callee) = TcpStream::connect_timeout(&target, Duration::from_secs(2)) else {
        let _ = caller.shutdown(Shutdown::Both);
        return;
    };
    let _ = callee.set_nodelay(true);
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let (Ok(c1), Ok(c2), Ok(e1), Ok(e2)) = (
        caller.try_clone(),
        caller.try_clone(),
        callee.try_clone(),
        callee.try_clone(),
    ) else {
        return;
    };
    {
        let mut sockets = shared.sockets.lock();
        if shared.stopped() {
            return;
        }
        sockets.insert(id, (pair, [c1, e1]));
    }
    let back = {
        let shared = shared.clone();
        std::thread::spawn(move || pump(e2, c2, pair, false, shared))
    };
    pump(caller, callee, pair, true, shared.clone());
    let _ = back.join();
    shared.sockets.lock().remove(&id);
}

/// Copies `src` to `dst` under the pair's rules until either end closes.
/// `forward`: the caller's bytes (the ones loss acts on and that count as
/// forwarded).
fn pump(
    mut src: TcpStream,
    mut dst: TcpStream,
    pair: Option<(usize, usize)>,
    forward: bool,
    shared: Arc<Shared>,
) {
    let mut held: VecDeque<(Instant, Vec<u8>)> = VecDeque::new();
    let mut last_due = Instant::now();
    let mut buf = vec![0u8; 64 << 10];
    let cut = |src: &TcpStream, dst: &TcpStream| {
        let _ = src.shutdown(Shutdown::Both);
        let _ = dst.shutdown(Shutdown::Both);
    };
    loop {
        if shared.stopped() {
            return cut(&src, &dst);
        }
        if shared.blackholed(pair) {
            // Nothing read, nothing forwarded: the sender's TCP backs up.
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        let now = Instant::now();
        while held.front().is_some_and(|(due, _)| *due <= now) {
            let (_, chunk) = held.pop_front().unwrap();
            if dst.write_all(&chunk).is_err() {
                return cut(&src, &dst);
            }
            if forward {
                if let Some(p) = pair {
                    *shared.forwarded.lock().entry(p).or_default() += chunk.len() as u64;
                }
            }
        }
        let wait = held
            .front()
            .map_or(Duration::from_millis(20), |(due, _)| {
                due.saturating_duration_since(now)
            })
            .clamp(Duration::from_millis(1), Duration::from_millis(20));
        let _ = src.set_read_timeout(Some(wait));
        match src.read(&mut buf) {
            Ok(0) => {
                // Deliver what is held, in its time, then pass the close on.
                for (due, chunk) in held.drain(..) {
                    std::thread::sleep(due.saturating_duration_since(Instant::now()));
                    if dst.write_all(&chunk).is_err() {
                        break;
                    }
                }
                let _ = dst.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => {
                if forward && shared.uniform() < shared.loss(pair) {
                    shared.cuts.fetch_add(1, Ordering::Relaxed);
                    return cut(&src, &dst);
                }
                let due = (Instant::now() + shared.delay(pair)).max(last_due);
                last_due = due;
                held.push_back((due, buf[..n].to_vec()));
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return cut(&src, &dst),
        }
    }
}

/// Connects to `port` on 127.0.0.1 from `source` (as a member dials).
fn dial_from(source: Ipv4Addr, port: u16) -> TcpStream {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind((source, 0).into()).unwrap();
        let s = socket.connect(([127, 0, 0, 1], port).into()).await.unwrap();
        let s = s.into_std().unwrap();
        s.set_nonblocking(false).unwrap();
        s
    })
}

/// A blackhole holds a new connection without dialing the callee and
/// forwards nothing; healed, the bytes flow both ways. A connection from a
/// stranger's address matches no rule and is counted.
#[test]
fn a_blackhole_holds_new_connections_and_forwards_nothing() {
    let port = crate::harness::free_port();
    let callee = TcpListener::bind((member_ip(1), port)).unwrap();
    callee.set_nonblocking(true).unwrap();
    let targets: [SocketAddr; 2] = [
        (member_ip(0), crate::harness::free_port()).into(),
        (member_ip(1), port).into(),
    ];
    let proxy = NetProxy::start(&targets);
    proxy.one_way(0, 1);
    let mut caller = dial_from(member_ip(0), proxy.ports[1]);
    caller.write_all(b"ping").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        matches!(callee.accept(), Err(e) if e.kind() == ErrorKind::WouldBlock),
        "the callee was dialed under a blackhole"
    );
    assert_eq!(proxy.forwarded(0, 1), 0);
    proxy.heal();
    let deadline = Instant::now() + Duration::from_secs(5);
    let (mut inside, from) = loop {
        match callee.accept() {
            Ok(c) => break c,
            Err(_) => {
                assert!(Instant::now() < deadline, "not dialed after the heal");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    };
    assert!(from.ip().is_loopback());
    inside.set_nonblocking(false).unwrap();
    inside
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 4];
    inside.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping", "held bytes arrive after the heal");
    inside.write_all(b"pong").unwrap();
    caller
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    caller.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"pong");
    assert_eq!(proxy.forwarded(0, 1), 4);
    // A caller from no member's address passes under any rule.
    proxy.isolate(1);
    let _stranger = dial_from(Ipv4Addr::LOCALHOST, proxy.ports[1]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while callee.accept().is_err() {
        assert!(
            Instant::now() < deadline,
            "a stranger's connection was held"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(proxy.strangers(), 1);
}
