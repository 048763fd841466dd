#!/usr/bin/env python3
"""bench/run's sampler: once a second, one JSON line with the CPU time (utime + stime, in clock
ticks) of each watched process group, the whole machine's busy and idle ticks (so that the load of
other users of a shared machine shows), their RSS, and optionally the platform's metrics
(chat_ingest_consumer_pending summed over partitions, and the cumulative buckets of the
platform's latency histograms), until it is sent SIGTERM.

    sample.py OUT.jsonl [--metrics URL ...] NAME=SPEC ...

SPEC is a pid (that process and, recursively, its children), or "postmaster:PIDFILE" (the
PostgreSQL postmaster whose pid is the first line of PIDFILE, and all its backends), or
"self-tree:PID". Processes are matched again at every sample (backends come and go).

Marks: two more lines, {"mark": "start"} and {"mark": "end"}, each a sample taken at that moment
plus "counters": nats-server's /varz in_msgs and out_msgs (--varz URL), and of the PostgreSQL
database DB on 127.0.0.1:PORT (--pg PSQL,PORT,DB; read through psql as the postgres superuser,
from the postgres database so that the reading adds nothing to DB's own counters): xact_commit and
xact_rollback (pg_stat_database; PostgreSQL flushes a busy backend's counts up to a second late,
and its last second's up to 10 s late when it goes idle, so these are close, not exact), xids (transactions that wrote, from the next transaction id: exact),
wal_bytes, and statements (the sum of pg_stat_statements calls, only when the extension is
already loaded). With --mark-log LOG the marks are taken when chat-bench writes "chat-bench:
sending" (its sends start 200 ms later; with --warmup, "chat-bench: measuring" again when the
warm-up ends) and "chat-bench: drained" (every ack and delivery is in; its connections stay open
--linger seconds more) to LOG; without it, at the first sample and at
SIGTERM (an idle baseline).

    sample.py OUT.jsonl [--metrics URL ...] [--varz URL] [--pg PSQL,PORT,DB] [--mark-log LOG] NAME=SPEC ...
"""
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

HIST = (
    "chat_ingest_fetch_to_commit_seconds",
    "chat_ingest_commit_to_fanout_seconds",
    "chat_ingest_broker_to_commit_seconds",
    "chat_gateway_publish_ack_seconds",
    "chat_delivery_latency_seconds",
)
COUNTERS = ("chat_ingest_events_total", "chat_ingest_batches_total", "chat_gateway_frames_out_total",
            "chat_gateway_frames_in_total", "chat_gateway_acks_total")

stop = False


def on_term(*_):
    global stop
    stop = True


def children_map():
    kids = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                s = f.read()
        except OSError:
            continue
        rest = s[s.rfind(")") + 2:].split()
        kids.setdefault(int(rest[1]), []).append(int(d))
    return kids


def tree(pid, kids):
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def stat(pid, reaped=False):
    """(cpu ticks, rss KiB) of one process, or None. reaped: also the time of its children that
    ended and were waited for (so that a group's CPU does not drop when a worker process exits)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
        rest = s[s.rfind(")") + 2:].split()
        ticks = int(rest[11]) + int(rest[12])
        if reaped:
            ticks += int(rest[13]) + int(rest[14])
        rss = int(rest[21]) * (os.sysconf("SC_PAGE_SIZE") // 1024)
        return ticks, rss
    except (OSError, IndexError, ValueError):
        return None


def machine():
    """(busy, idle, irq + softirq, steal) ticks of the whole machine."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    return sum(v[:8]) - idle, idle, v[5] + v[6], v[7]


def scrape(url):
    try:
        with urllib.request.urlopen(url, timeout=0.8) as r:
            text = r.read().decode("utf-8", "replace")
    except Exception:
        return None
    out = {"pending": 0, "hist": {}, "counters": {}}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        name, _, value = line.rpartition(" ")
        try:
            val = float(value)
        except ValueError:
            continue
        base = name.split("{", 1)[0]
        if base == "chat_ingest_consumer_pending":
            out["pending"] += val
        elif base in COUNTERS:
            out["counters"][base] = out["counters"].get(base, 0) + val
        elif base.endswith("_bucket") and base[:-7] in HIST:
            le = name.split('le="', 1)[1].split('"', 1)[0]
            out["hist"].setdefault(base[:-7], {})[le] = val
        elif base.endswith("_sum") and base[:-4] in HIST:
            out["hist"].setdefault(base[:-4], {})["sum"] = val
    return out


def varz(url):
    """nats-server's message counters, or None."""
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            v = json.loads(r.read().decode("utf-8", "replace"))
        return {"nats_in_msgs": v["in_msgs"], "nats_out_msgs": v["out_msgs"]}
    except Exception:
        return None


PG_QUERY = """SELECT d.xact_commit, d.xact_rollback, pg_snapshot_xmax(pg_current_snapshot())::text,
       pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint,
       current_setting('shared_preload_libraries') LIKE '%%pg_stat_statements%%'
  FROM pg_stat_database d WHERE d.datname = '%s'"""


def psql(spec, db, sql):
    exe, port = spec
    try:
        r = subprocess.run([exe, "-X", "-A", "-t", "-q", "-F", " ", "-h", "127.0.0.1", "-p", port, "-U", "postgres",
                            "-d", db, "-c", sql], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.split() if r.returncode == 0 else None


def pg_counters(pg):
    """PostgreSQL's counters of one database (see the top), or None."""
    exe, port, db = pg
    v = psql((exe, port), "postgres", PG_QUERY % db.replace("'", "''"))
    if not v or len(v) < 5:
        return None
    try:
        out = {"pg_xact_commit": int(v[0]), "pg_xact_rollback": int(v[1]), "pg_xids": int(v[2]),
               "pg_wal_bytes": int(v[3])}
    except ValueError:
        return None
    if v[4] == "t":
        # the view is where the extension was created: the database itself (one more commit there)
        c = psql((exe, port), db, "SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_statements "
                                  "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())")
        if c and c[0].isdigit():
            out["pg_statements"] = int(c[0])
    return out


def counters(varz_url, pg):
    out = {}
    if varz_url:
        out.update(varz(varz_url) or {})
    if pg:
        out.update(pg_counters(pg) or {})
    return out


class LogWatch:
    """The lines chat-bench writes to its log, read as they come."""

    def __init__(self, path):
        self.path, self.pos, self.buf = path, 0, ""

    def lines(self):
        try:
            with open(self.path, errors="replace") as f:
                f.seek(self.pos)
                data = f.read()
                self.pos = f.tell()
        except OSError:
            return []
        self.buf += data
        *done, self.buf = self.buf.split("\n")
        return done


def root_of(spec):
    if spec.startswith("postmaster:"):
        try:
            with open(spec[11:]) as f:
                return int(f.readline())
        except (OSError, ValueError):
            return None
    try:
        return int(spec)
    except ValueError:
        return None


def sample(groups, urls):
    """One sample: CPU ticks and RSS of each group, the machine, the platform's metrics."""
    t = time.time()
    kids = children_map()
    rec = {"t": round(t, 3), "cpu": {}, "rss": {}}
    busy, idle, irq, steal = machine()
    rec["machine"] = {"busy": busy, "idle": idle, "irq": irq, "steal": steal}
    for name, spec in groups.items():
        root = root_of(spec)
        if root is None or stat(root) is None:
            continue  # gone: left out rather than counted as 0
        ticks = rss = 0
        for p in tree(root, kids):
            st = stat(p, p == root)
            if st:
                ticks += st[0]
                rss += st[1]
        rec["cpu"][name] = ticks
        rec["rss"][name] = rss
    metrics = {}
    for u in urls:
        m = scrape(u)
        if m:
            metrics["pending"] = metrics.get("pending", 0) + m["pending"]
            metrics.setdefault("hist", {}).update(m["hist"])
            for k, v in m["counters"].items():
                metrics.setdefault("counters", {})[k] = metrics.get("counters", {}).get(k, 0) + v
    if metrics:
        rec["metrics"] = metrics
    return rec


def main():
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    out_path = sys.argv[1]
    urls, groups = [], {}
    varz_url = pg = log = None
    args = sys.argv[2:]
    i = 0
    while i < len(args):
        if args[i] in ("--metrics", "--varz", "--pg", "--mark-log"):
            v = args[i + 1]
            if args[i] == "--metrics":
                urls.append(v)
            elif args[i] == "--varz":
                varz_url = v
            elif args[i] == "--pg":
                pg = tuple(v.split(",", 2))
            else:
                log = LogWatch(v)
            i += 2
            continue
        name, _, spec = args[i].partition("=")
        groups[name] = spec
        i += 1
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    with open(out_path, "a") as out:

        def put(rec):
            out.write(json.dumps(rec, separators=(",", ":")) + "\n")
            out.flush()

        def mark(name):
            # the CPU inside the counters, so that reading them (a PostgreSQL backend for psql,
            # nats-server's /varz) stays out of the window: at the start the counters first (and
            # 30 ms for the postmaster to reap psql's backend), at the end the CPU first
            t0 = time.time()
            if name == "start":
                c = counters(varz_url, pg)
                time.sleep(0.03)
                rec = sample(groups, [])
            else:
                rec = sample(groups, [])
                c = counters(varz_url, pg)
            rec["mark"] = name
            rec["counters"] = c
            rec["took_ms"] = round((time.time() - t0) * 1000, 1)
            put(rec)

        # with --warmup, "measuring" comes after "sending" and moves the start (the last one counts)
        marks = {"chat-bench: sending": "start", "chat-bench: measuring": "start", "chat-bench: drained": "end"}
        if log is None:
            mark("start")
        while not stop:
            t = time.time()
            put(sample(groups, urls))
            left = 1.0 - (time.time() - t)
            while left > 0 and not stop:
                time.sleep(min(left, 0.05 if log else 0.2))
                for line in log.lines() if log else []:
                    m = next((v for k, v in marks.items() if line.startswith(k)), None)
                    if m:
                        mark(m)
                left = 1.0 - (time.time() - t)
        if log is None:
            mark("end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
