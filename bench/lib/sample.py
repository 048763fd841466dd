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
"""
import json
import os
import signal
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


def main():
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    out_path = sys.argv[1]
    urls, groups = [], {}
    args = sys.argv[2:]
    i = 0
    while i < len(args):
        if args[i] == "--metrics":
            urls.append(args[i + 1])
            i += 2
            continue
        name, _, spec = args[i].partition("=")
        groups[name] = spec
        i += 1
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    with open(out_path, "a") as out:
        while not stop:
            t = time.time()
            kids = children_map()
            rec = {"t": round(t, 3), "cpu": {}, "rss": {}}
            busy, idle, irq, steal = machine()
            rec["machine"] = {"busy": busy, "idle": idle, "irq": irq, "steal": steal}
            ours = set()
            for name, spec in groups.items():
                if spec.startswith("postmaster:"):
                    try:
                        with open(spec[11:]) as f:
                            root = int(f.readline())
                    except (OSError, ValueError):
                        continue
                else:
                    try:
                        root = int(spec)
                    except ValueError:
                        continue
                if stat(root) is None:
                    continue  # gone: left out rather than counted as 0
                pids = tree(root, kids)
                ticks = rss = 0
                for p in pids:
                    s = stat(p, p == root)
                    if s:
                        ticks += s[0]
                        rss += s[1]
                        ours.add(p)
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
            out.write(json.dumps(rec, separators=(",", ":")) + "\n")
            out.flush()
            left = 1.0 - (time.time() - t)
            while left > 0 and not stop:
                time.sleep(min(left, 0.2))
                left = 1.0 - (time.time() - t)
    return 0


if __name__ == "__main__":
    sys.exit(main())
