#!/usr/bin/env python3
"""Issue 16, item 6: how long a restarted member of a 3-member cluster takes
to be healthy and to agree on the leader, etcd 3.4 and MetaStore side by side.

For each server (etcd first, then MetaStore, one cluster at a time on
loopback), ROUNDS times: SIGKILL a follower, leave it down DOWN seconds
(long enough for the leader's reconnect backoff to grow), start it again and
time, from the start, until (a) `GET /health` on it answers
{"health":"true"} and (b) its Status names the same leader as the other two.
Both are polled every 20 ms with 250 ms timeouts over HTTP (/health and the
JSON gateway's Maintenance.Status). Prints one line per restart and a
summary; writes restart.csv next to it.

Usage: docs/bench/issue16/restart.py [ROUNDS] [DOWN_S]
METASTORE_BIN (default $CARGO_TARGET_DIR/release/metastore), etcd on PATH.
"""
import json, os, signal, socket, statistics, subprocess, sys, tempfile, time, urllib.request

ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 10
DOWN = float(sys.argv[2]) if len(sys.argv) > 2 else 3.0
HERE = os.path.dirname(os.path.abspath(__file__))
MS = os.environ.get("METASTORE_BIN") or os.path.join(
    os.environ.get("CARGO_TARGET_DIR", "target"), "release", "metastore")


def port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Member:
    def __init__(self, binary, name, root, cport, pport, cluster):
        self.binary, self.name, self.cport = binary, name, cport
        self.args = [binary, "--name", name, "--data-dir", os.path.join(root, name),
                     "--listen-client-urls", f"http://127.0.0.1:{cport}",
                     "--advertise-client-urls", f"http://127.0.0.1:{cport}",
                     "--listen-peer-urls", f"http://127.0.0.1:{pport}",
                     "--initial-advertise-peer-urls", f"http://127.0.0.1:{pport}",
                     "--initial-cluster", cluster, "--initial-cluster-state", "new"]
        self.log = open(os.path.join(root, name + ".log"), "ab")
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(self.args, stdout=self.log, stderr=self.log)

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        self.proc.terminate()
        self.proc.wait()

    def healthy(self):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.cport}/health", timeout=0.25) as r:
                return json.load(r).get("health") == "true"
        except Exception:
            return False

    def leader(self):
        """(leader id, own id) from Maintenance.Status through the JSON
        gateway (etcdctl would wait out its dial timeout on a member that is
        not listening yet, hiding when it came up)."""
        req = urllib.request.Request(f"http://127.0.0.1:{self.cport}/v3/maintenance/status",
                                     data=b"{}", method="POST")
        try:
            with urllib.request.urlopen(req, timeout=0.25) as r:
                st = json.load(r)
            return int(st.get("leader", 0)), int(st["header"]["member_id"])
        except Exception:
            return None, None


def run(label, binary):
    root = tempfile.mkdtemp(prefix=f"restart-{label}-")
    ports = [(port(), port()) for _ in range(3)]
    cluster = ",".join(f"m{i}=http://127.0.0.1:{p}" for i, (_, p) in enumerate(ports))
    ms = [Member(binary, f"m{i}", root, c, p, cluster) for i, (c, p) in enumerate(ports)]
    for m in ms:
        m.start()
    deadline = time.time() + 30
    while not all(m.healthy() for m in ms):
        assert time.time() < deadline, f"{label}: the cluster did not come up"
        time.sleep(0.1)
    times = []
    try:
        for r in range(ROUNDS):
            lead = next(l for l, _ in (m.leader() for m in ms) if l)
            follower = next(m for m in ms if m.leader()[1] != lead)
            follower.kill()
            time.sleep(DOWN)
            t0 = time.time()
            follower.start()
            healthy = agreed = None
            while healthy is None or agreed is None:
                assert time.time() - t0 < 30, f"{label}: the member did not recover"
                # Each time is taken when its check has answered.
                if healthy is None and follower.healthy():
                    healthy = time.time() - t0
                if agreed is None:
                    l, _ = follower.leader()
                    if l and all(m.leader()[0] == l for m in ms if m is not follower):
                        agreed = time.time() - t0
                time.sleep(0.02)
            times.append((healthy, agreed))
            print(f"{label} restart {r}: healthy {healthy:.2f} s, same leader {agreed:.2f} s", flush=True)
            time.sleep(1)
    finally:
        for m in ms:
            if m.proc and m.proc.poll() is None:
                m.stop()
        subprocess.run(["rm", "-rf", root])
    return times


def main():
    rows = []
    results = {}
    for label, binary in (("etcd", "etcd"), ("metastore", MS)):
        results[label] = run(label, binary)
        rows += [(label, i, h, a) for i, (h, a) in enumerate(results[label])]
    with open(os.path.join(HERE, "restart.csv"), "w") as f:
        f.write("server,restart,healthy_s,same_leader_s\n")
        for row in rows:
            f.write("%s,%d,%.3f,%.3f\n" % row)
    for label, times in results.items():
        h = [t[0] for t in times]
        a = [t[1] for t in times]
        print(f"{label}: healthy median {statistics.median(h):.2f} s (max {max(h):.2f}), "
              f"same leader median {statistics.median(a):.2f} s (max {max(a):.2f})")


if __name__ == "__main__":
    main()
