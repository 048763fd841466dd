#!/usr/bin/env python3
"""bench/run's arithmetic and its page (docs/benchmarks.md). Standard library only.

    report.py verdict RUN.json          one line about one chat-bench run
    report.py sustained RUN.json        exit 0 when the run passed issue 21's rule (see sustained())
    report.py capacity RESULTS SYSTEM [CONNS]
                                        the median over the ladders of SYSTEM's highest passing rate
                                        (on CONNS connections; default: the largest shape run)
    report.py page RESULTS OUT.md       the page, from everything bench/run left in RESULTS
"""
import json
import math
import os
import re
import statistics
import sys

SUSTAINED_P99_MS = 50.0  # a ladder step passes when nothing is lost or refused and p99 delivery is below this
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------ loading

def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def lat(j, which, q):
    try:
        return j["latency_ms"][which][q]
    except (KeyError, TypeError):
        return None


def refused(j):
    """Sends the server refused, even once (rate_limited and unavailable included, though resent)."""
    errs = j["send"].get("errors", {})
    return sum(errs.values()) + j.get("checks", {}).get("refused_sends", 0)


def sustained(j):
    """Issue 21's pass rule for a step: every check passed, 0 lost, 0 refused, p99 send-to-delivery
    under SUSTAINED_P99_MS."""
    if not j or not j.get("ok"):
        return False
    if j["connections"]["failed"] or j["send"]["sent"] == 0 or j["lost"] or refused(j):
        return False
    p99 = lat(j, "send_to_delivery", "p99")
    return p99 is not None and p99 < SUSTAINED_P99_MS


def verdict(j):
    if j is None:
        return "no JSON (chat-bench failed before its report; see its log)"
    s = "PASS" if j.get("ok") else "FAIL"
    parts = ["checks " + s]
    rate = j["params"]["rate"]
    if rate > 0:
        parts.append("offered %g/s acked %.0f/s" % (rate, j["throughput"]["acked_per_s"]))
        parts.append("p50/p99 ack %s/%s ms" % (fmt_ms(lat(j, "send_to_ack", "p50")), fmt_ms(lat(j, "send_to_ack", "p99"))))
        parts.append("delivery %s/%s ms" % (fmt_ms(lat(j, "send_to_delivery", "p50")),
                                            fmt_ms(lat(j, "send_to_delivery", "p99"))))
        parts.append("lost %d refused %d" % (j["lost"], refused(j)))
    c = j["connections"]
    parts.append("conns %d/%d" % (c["open"], c["target"]))
    rss = j.get("gateway_rss", {})
    if "per_connection_kib" in rss:
        parts.append("%.2f KiB/conn" % rss["per_connection_kib"])
    if j.get("reconnect", {}).get("dropped"):
        parts.append("resync %.2f s" % j["reconnect"]["seconds"])
    if not j.get("ok"):
        parts.append("(%s)" % j.get("problem", "")[:120])
    if rate > 0:
        parts.append("; as a ladder step (issue 21): %s" % ("passes" if sustained(j) else "fails"))
    return " ".join(parts)


def fmt_ms(v):
    if v is None:
        return "-"
    if v >= 100:
        return "%.0f" % v
    if v >= 10:
        return "%.1f" % v
    return "%.2f" % v


def fmt_rate(v):
    if v is None:
        return "-"
    return "{:,.0f}".format(v)


def med(values):
    v = [x for x in values if x is not None]
    if not v:
        return None
    return statistics.median(v)


# ------------------------------------------------------------------ the results directory

class Results:
    def __init__(self, d):
        self.dir = d
        self.runs = []
        try:
            with open(os.path.join(d, "runs.jsonl")) as f:
                for line in f:
                    line = line.strip()
                    if line:
                        r = json.loads(line)
                        r["j"] = load(os.path.join(d, r["json"]))
                        self.runs.append(r)
        except OSError:
            pass
        self.machine = {}
        try:
            with open(os.path.join(d, "machine.txt")) as f:
                for line in f:
                    k, _, v = line.rstrip("\n").partition("=")
                    self.machine[k] = v
        except OSError:
            pass

    def of(self, row, system=None):
        return [r for r in self.runs if r["row"] == row and (system is None or r["system"] == system)]

    def systems(self, row):
        seen = []
        for r in self.runs:
            if r["row"] == row and r["system"] not in seen:
                seen.append(r["system"])
        return seen

    def shapes(self, system=None):
        """The connection counts the ladder ran at (of system), smallest first."""
        return sorted({shape_of(r) for r in self.of("ladder", system)})

    def ladder(self, system, shape=None):
        """The ladder runs of system on shape connections (None: the largest shape it ran)."""
        if shape is None:
            sh = self.shapes(system)
            shape = sh[-1] if sh else 0
        return [r for r in self.of("ladder", system) if shape_of(r) == shape]

    def baseline(self, system, rep, shape):
        """The idle baseline taken before that ladder, or None."""
        return next((r for r in self.of("baseline", system) if r["rep"] == rep and r.get("shape", 0) == shape), None)

    def ladder_caps(self, system, shape=None):
        """Highest passing rate of each ladder repetition of system (0: not even the first)."""
        caps = {}
        for r in self.ladder(system, shape):
            rep = r["rep"]
            caps.setdefault(rep, 0)
            if sustained(r["j"]):
                caps[rep] = max(caps[rep], r["rate"])
        return [caps[k] for k in sorted(caps)]

    def capacity(self, system, shape=None):
        caps = self.ladder_caps(system, shape)
        return statistics.median_low(caps) if caps else None

    def _lines(self, run):
        out = []
        try:
            with open(os.path.join(self.dir, run["samples"])) as f:
                for line in f:
                    try:
                        out.append(json.loads(line))
                    except ValueError:
                        pass
        except OSError:
            pass
        return out

    def samples(self, run):
        """The once-a-second samples of a run."""
        return [x for x in self._lines(run) if "mark" not in x]

    def marks(self, run):
        """{"start": sample, "end": sample}, the samples with counters taken at the measured window's
        ends (sample.py), as far as they were taken."""
        return {x["mark"]: x for x in self._lines(run) if "mark" in x}


def shape_of(run):
    """Connections of a ladder run: recorded by bench/run, else from chat-bench's parameters."""
    if run.get("shape"):
        return run["shape"]
    j = run.get("j")
    return j["params"]["connections"] if j else 0


# ------------------------------------------------------------------ CPU and metrics over the send window

def window(j):
    u = j.get("unix_ms") or {}
    start = u.get("send_start")
    end = max([x for x in (u.get("send_end"), u.get("last_ack"), u.get("last_delivery")) if x] or [0])
    if not start or not end or end <= start:
        return None
    return start / 1000.0, end / 1000.0


def nearest(samples, t, after):
    best = None
    for s in samples:
        if after and s["t"] >= t:
            return s
        if not after and s["t"] <= t:
            best = s
    return best if not after else (samples[-1] if samples else None)


def cpu_breakdown(res, run):
    """{group: cores used} over the send window, plus machine busy cores, and seconds."""
    j = run["j"]
    w = window(j) if j else None
    smp = res.samples(run)
    if not w or len(smp) < 2:
        return None
    a, b = nearest(smp, w[0], False) or smp[0], nearest(smp, w[1], True)
    if b is None or b["t"] <= a["t"]:
        return None
    secs = b["t"] - a["t"]
    out = {"seconds": secs, "groups": {}}
    inside = [x for x in smp if a["t"] < x["t"] <= b["t"]]
    for g, t0 in a["cpu"].items():
        # the last sample of the window in which the group was still there (a process group that
        # ends, chat-bench at its end, drops out of the samples rather than count as 0)
        last = None
        for x in inside:
            if x["cpu"].get(g, -1) >= t0:
                last = x
        if last is None or last["t"] <= a["t"]:
            continue
        out["groups"][g] = (last["cpu"][g] - t0) / CLK_TCK / (last["t"] - a["t"])
    for extra in ("gateway1", "gateway2"):  # the extra gateways of a run count as the gateway
        if extra in out["groups"]:
            out["groups"]["gateway"] = out["groups"].get("gateway", 0.0) + out["groups"].pop(extra)
    busy = (b["machine"]["busy"] - a["machine"]["busy"]) / CLK_TCK / secs
    out["machine"] = busy
    out["other"] = max(0.0, busy - sum(out["groups"].values()))
    pend = [s.get("metrics", {}).get("pending") for s in smp if w[0] - 1 <= s["t"] <= w[1] + 1]
    pend = [p for p in pend if p is not None]
    out["pending_max"] = max(pend) if pend else None
    ha, hb = a.get("metrics", {}).get("hist", {}), b.get("metrics", {}).get("hist", {})
    out["hist"] = {}
    for name, buckets in hb.items():
        if name in ha:
            out["hist"][name] = hist_delta(ha[name], buckets)
    ca, cb = a.get("metrics", {}).get("counters", {}), b.get("metrics", {}).get("counters", {})
    out["counters"] = {k: cb[k] - ca.get(k, 0) for k in cb}
    return out


def hist_delta(a, b):
    les = []
    for k in b:
        if k == "sum":
            continue
        les.append((math.inf if k == "+Inf" else float(k), b[k] - a.get(k, 0)))
    les.sort()
    if not les:
        return None
    count = les[-1][1]
    if count <= 0:
        return {"count": 0}
    s = b.get("sum", 0) - a.get("sum", 0)

    def q(p):
        want = p * count
        prev_le, prev_c = 0.0, 0.0
        for le, c in les:
            if c >= want:
                if le == math.inf:
                    return prev_le * 1000
                # linear inside the bucket
                frac = (want - prev_c) / (c - prev_c) if c > prev_c else 1
                return (prev_le + (le - prev_le) * frac) * 1000
            prev_le, prev_c = le, c
        return prev_le * 1000

    return {"count": count, "mean_ms": s / count * 1000, "p50_ms": q(0.5), "p99_ms": q(0.99)}


# ------------------------------------------------------------------ perf

def perf_comm(res, run):
    path = os.path.join(res.dir, run["id"] + ".perf-comm.txt")
    out = []
    try:
        with open(path) as f:
            for line in f:
                m = re.match(r"\s+([\d.]+)%\s+(\S.*?)\s*$", line)
                if m:
                    out.append((float(m.group(1)), m.group(2)))
    except OSError:
        return None
    return out


def perf_syms(res, run, comms, n=8):
    path = os.path.join(res.dir, run["id"] + ".perf-sym.txt")
    out = {}
    try:
        with open(path) as f:
            for line in f:
                m = re.match(r"\s+([\d.]+)%\s+(\S+)\s+(\S+)\s+\[[.k]\]\s+(.*?)\s*$", line)
                if not m:
                    continue
                comm = m.group(2)
                key = next((c for c in comms if comm.startswith(c[:15])), None)
                if key is None:
                    continue
                lst = out.setdefault(key, [])
                if len(lst) < n:
                    lst.append((float(m.group(1)), m.group(3), m.group(4)))
    except OSError:
        return None
    return out


# ------------------------------------------------------------------ the page

LABEL = {
    "platform-always": "this platform, CHAT_NATS_SYNC=always",
    "ejabberd": "ejabberd 23.01 (MAM + offline in PostgreSQL)",
    "socketio": "Socket.IO 4.8 relay (nothing stored)",
}


def label(system):
    if system in LABEL:
        return LABEL[system]
    if system.startswith("platform-"):
        return "this platform, CHAT_NATS_SYNC=" + system[9:]
    return system


def short_cmd(run):
    return "`" + run["cmd"].replace("|", "\\|") + "`"


def page(resdir, out_path):
    res = Results(resdir)
    m = res.machine
    quick = m.get("quick") == "1"
    runs_n = m.get("runs", "3")
    fast = m.get("sync_fast", "1s")
    L = []
    w = L.append
    w("# Benchmarks")
    w("")
    w("Written by `bench/run` (issue 7); do not edit by hand: run `%s` again. The last sections "
      "(\"What to change\") come from `bench/findings.md`, written by hand from measurements." % m.get("argv", "bench/run").strip())
    w("")
    if m.get("incomplete"):
        w("**This run did not finish (%s): the tables hold the rows done before it stopped.**" % m["incomplete"])
        w("")
    if quick:
        w("**This page comes from a `--quick` run: one run of each row, short phases and fewer connections "
          "than the targets name (shown in each command). It shows that the bench works end to end and the "
          "order of magnitude; the targets are judged only by a full `bench/run`.**")
        w("")
    w("## The machine and the run")
    w("")
    w("| | |")
    w("| --- | --- |")
    w("| date | %s |" % m.get("date", "?"))
    w("| CPU | %s, **%s cores** (%s) |" % (m.get("cpu", "?"), m.get("cores", "?"),
                                           "virtual machine" if m.get("virt", "none") not in ("none", "") else "bare metal"))
    w("| memory | %s GiB; kernel %s; %s |" % (m.get("memory_gib", "?"), m.get("kernel", "?"), m.get("os", "?")))
    w("| load average | %s at the start, %s at the end |" % (m.get("loadavg_start", "?"), m.get("loadavg_end", "?")))
    w("| software | %s; %s; Redis %s; ejabberd %s (Erlang %s, erlang-p1-pgsql %s); node %s, socket.io %s |" % (
        m.get("nats", "?"), m.get("postgres", "?"), m.get("redis", "?"), m.get("ejabberd", "?"), m.get("erlang", "?"),
        m.get("p1_pgsql", "?"), m.get("node", "?"), m.get("socketio", "?")))
    w("| code | git %s, built RelWithDebInfo (-O2 -g) into build-bench |" % m.get("git", "?"))
    w("| runs | %s of each row%s; the tables show medians |" % (runs_n, " (quick)" if quick else ""))
    w("| profiler | perf, cpu-clock sampling of every process (hardware counters: %s) |" % (
        "available" if m.get("perf_counters") == "yes" else "not available in this VM"))
    w("")
    others = []
    for r in res.runs:
        cb = cpu_breakdown(res, r) if r["j"] else None
        if cb:
            others.append(cb["other"])
    w("Everything runs on this one machine: broker, database, Redis, gateway, workers, the peers and the "
      "load generator (chat-bench), on loopback. **The machine was shared with other engineers' work while "
      "this ran**: over the send phases, processes that were not part of the bench used a median of %s "
      "cores (max %s) of the %s, measured from /proc/stat minus every process of the bench. The numbers are "
      "therefore noisy and lower than on an idle machine; ratios between systems are measured within the "
      "same run, systems interleaved (the ladder runs each system once per round), so they share that noise." % (
          "%.2f" % med(others) if others else "?", "%.2f" % max(others) if others else "?", m.get("cores", "?")))
    w("")

    w("## How the systems were set up")
    w("")
    w("- **This platform**: `scripts/up` stacks of bench/run's own (`bench/lib/stacks.sh`): nats-server "
      "with JetStream on disk, `sync_interval` from `CHAT_NATS_SYNC` (`always` and `%s`, the default, both "
      "measured in this run), PostgreSQL 15 with `fsync=on`, `synchronous_commit=on`, Redis, one worker with "
      "every role, 16 partitions, one gateway (two for the 20,000-connection rows, three for reconnect). The "
      "gateway's abuse limits `CHAT_WS_RATE` and `CHAT_WS_USER_RATE` are raised to 100,000 so that they do not "
      "throttle the load; everything else is the default." % fast)
    w("- **ejabberd 23.01** (Debian 12 package) with its own `ejabberdctl.cfg` (`--ctl-config`: node name, a fixed "
      "distribution port, no epmd), config, spool and log directories, run as the ejabberd user through "
      "`setpriv` (not `su`, whose PAM limits leave it 1,024 open files; it gets 20,000). XMPP over WebSocket "
      "(RFC 7395) on `/ws`, no TLS (neither side uses TLS here). Everything in PostgreSQL through Debian's "
      "erlang-p1-pgsql (`default_db: sql`, a cluster set up by the same code as the platform's, fsync on, "
      "`synchronous_commit=on`): users (SASL PLAIN), roster, offline storage, and MAM with `default: always` "
      "(every message archived for both parties). **Its c2s traffic shaper is off** (`c2s_shaper: none`; "
      "Debian's configuration shapes each user to 3,000 bytes/s, which throttles a load test), and its "
      "caches are sized for the users (`cache_size`; the default 1,000 entries thrash with more users). "
      "Acks are XEP-0198 (`<r/>` after each message, the server's `<a h/>`).")
    w("- **Socket.IO 4.8.x** (npm, `bench/peers/socketio`): one node process, a room per conversation, "
      "`io.to(conv).emit` and an ack; nothing stored, nothing checked but membership.")
    w("- **chat-bench** drives all three with the same engine (`--proto chat|xmpp|socketio`): the same "
      "connections, the same open-loop schedule, the same checks (`bench/README.md`).")
    w("")

    # ---------------- capacity ladder
    ladder_systems = res.systems("ladder")
    caps = {s: res.capacity(s) for s in ladder_systems}
    w("## Sustained throughput: the ladder")
    w("")
    lr = res.of("ladder")
    if lr:
        ladder_section(res, w, ladder_systems, runs_n, quick)
        cost_section(res, w, ladder_systems)
    else:
        w("(not run)")
        w("")

    # ---------------- memory per connection
    pm = res.of("peermem")
    if pm:
        w("## Memory per idle connection")
        w("")
        n = pm[0]["j"]["params"]["connections"] if pm[0]["j"] else "?"
        w("%s idle connections, opened on a freshly started server; the server's RSS growth over the ramp "
          "divided by the connections (VmRSS of the gateway / ejabberd's beam.smp / node)." % fmt_rate(n))
        w("")
        w("| system | KiB per connection | connect p50 / p99 (ms) | command |")
        w("| --- | --- | --- | --- |")
        per = {}
        for s in res.systems("peermem"):
            rs = [r for r in res.of("peermem", s) if r["j"]]
            per[s] = med([r["j"]["gateway_rss"].get("per_connection_kib") for r in rs])
            w("| %s | **%s** | %s / %s | %s |" % (
                label(s), "%.2f" % per[s] if per[s] is not None else "-",
                fmt_ms(med([r["j"]["connections"]["connect_ms"]["p50"] for r in rs])),
                fmt_ms(med([r["j"]["connections"]["connect_ms"]["p99"] for r in rs])),
                short_cmd(rs[0]) if rs else "-"))
        w("")
        if per.get("ejabberd") and per.get("platform-always"):
            w("The platform's gateway holds a connection in %.1f%% of ejabberd's memory (1/%.0f)." % (
                100 * per["platform-always"] / per["ejabberd"], per["ejabberd"] / per["platform-always"]))
            w("")

    # ---------------- target rows
    w("## The targets")
    w("")
    w("| target | measured (median of %s) | met? |" % runs_n)
    w("| --- | --- | --- |")
    targets(res, caps, w, fast)
    w("")
    rows_detail(res, w)
    import_section(res, w)
    where_time(res, w, fast)
    durability(w, fast)
    findings = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "findings.md")
    try:
        with open(findings) as f:
            w(f.read().rstrip("\n"))
            w("")
    except OSError:
        pass
    w("## Raw results")
    w("")
    w("`%s` holds each run's chat-bench JSON and log, one sample a second of every process's CPU and RSS and "
      "of the platform's metrics (`*.samples.jsonl`), the perf reports and the stacks' logs." % resdir)
    w("")
    with open(out_path, "w") as f:
        f.write("\n".join(L))


def ladder_section(res, w, ladder_systems, runs_n, quick):
    lr = res.of("ladder")
    shapes = res.shapes()
    dur = next((r["j"]["params"]["duration"] for r in lr if r["j"]), "?")
    warm = next((r["j"]["params"].get("warmup", 0) for r in lr if r["j"]), 0)
    w("1:1 conversations on %s connections (one per user, half as many conversations), open-loop sends at "
      "rising rates, %s s per step%s%s; a step **passes** (issue 21) when every message is acked and delivered "
      "within the drain, no send is refused even once (`rate_limited` or `unavailable`, though chat-bench "
      "resends those) and p99 send-to-delivery is under %d ms. A step that does not pass is run once more "
      "(a burst of other load on the shared machine is not the system's capacity); the ladder stops at the "
      "first step that fails twice; each system starts fresh for each ladder. "
      "Sustained rate = the highest passing step, median of %s ladders." % (
          " and ".join(fmt_rate(x) for x in shapes), fmt_dur(dur),
          " after %s s of warm-up at the same rate (its messages checked, kept out of latencies and throughput)" %
          fmt_dur(warm) if warm else "",
          " (**a `--quick` run: the full `bench/run` holds each step 20 s**)" if quick else "",
          SUSTAINED_P99_MS, runs_n))
    w("")
    rates = sorted({r["rate"] for r in lr})
    w("| system | connections | sustained (msg/s) | ladders | " + " | ".join(fmt_rate(x) for x in rates) + " |")
    w("| --- | --- | --- | --- | " + " | ".join("---" for _ in rates) + " |")
    for s in ladder_systems:
        for shape in res.shapes(s):
            cells = []
            for rate in rates:
                rs = [r for r in res.ladder(s, shape) if r["rate"] == rate and r["j"]]
                if not rs:
                    cells.append("")
                    continue
                ok = sum(1 for r in rs if sustained(r["j"]))
                acked = med([r["j"]["throughput"]["acked_per_s"] for r in rs])
                p99 = med([lat(r["j"], "send_to_delivery", "p99") for r in rs])
                nref = med([refused(r["j"]) for r in rs])
                nlost = med([r["j"]["lost"] for r in rs])
                why = ""
                if nlost:
                    why += " lost %s" % fmt_rate(nlost)
                if nref:
                    why += " refused %s" % fmt_rate(nref)
                cells.append("%s %s/s p99 %s%s" % ("ok" if ok == len(rs) else "%d/%d ok" % (ok, len(rs)) if ok else "**no**",
                                                   fmt_rate(acked), fmt_ms(p99), why))
            cap = res.capacity(s, shape)
            top = ">= " if cap and cap == rates[-1] else ""  # the ladder's last step passed: no ceiling seen
            w("| %s | %s | **%s%s** | %s | %s |" % (label(s), fmt_rate(shape), top, fmt_rate(cap),
                                                ", ".join(fmt_rate(c) for c in res.ladder_caps(s, shape)), " | ".join(cells)))
    w("")
    w("Each cell: passed or not, acked messages/s achieved, p99 send-to-delivery in ms, and what was lost or "
      "refused (medians of the runs of that step: both tries of a step that failed once; an empty cell: the "
      "ladders stopped before it). The command of a step, ejabberd: " +
      next((short_cmd(r) for r in lr if r["system"] == "ejabberd"), "-") + "; the platform's: " +
      next((short_cmd(r) for r in lr if r["system"].startswith("platform")), "-") + ".")
    w("")
    for shape in shapes:
        ej = res.capacity("ejabberd", shape) if "ejabberd" in ladder_systems else None
        if ej:
            w("Ratios against ejabberd on %s connections, measured in the same run: " % fmt_rate(shape) + ", ".join(
                "%s %.1fx" % (label(s), res.capacity(s, shape) / ej) for s in ladder_systems
                if s != "ejabberd" and res.capacity(s, shape)) + ".")
            w("")
    # equal load: highest rate every system passed in every ladder of the largest shape
    common = None
    for rate in rates:
        if all(any(r["rate"] == rate and sustained(r["j"]) for r in res.ladder(s)) for s in ladder_systems):
            common = rate
    if common:
        w("### Same load: %s msg/s (the highest rate every system passed on %s connections)" % (
            fmt_rate(common), fmt_rate(shapes[-1])))
        w("")
        w("| system | send-to-ack p50 / p99 (ms) | send-to-delivery p50 / p99 / p99.9 (ms) | what the ack means |")
        w("| --- | --- | --- | --- |")
        meaning = {"ejabberd": "XEP-0198 `<a/>`: the stanza was handled (archived by MAM in PostgreSQL and routed)",
                   "socketio": "Socket.IO ack: relayed (nothing stored)"}
        for s in ladder_systems:
            rs = [r["j"] for r in res.ladder(s) if r["rate"] == common and r["j"]]
            w("| %s | %s / %s | %s / %s / %s | %s |" % (
                label(s), fmt_ms(med([lat(j, "send_to_ack", "p50") for j in rs])),
                fmt_ms(med([lat(j, "send_to_ack", "p99") for j in rs])),
                fmt_ms(med([lat(j, "send_to_delivery", "p50") for j in rs])),
                fmt_ms(med([lat(j, "send_to_delivery", "p99") for j in rs])),
                fmt_ms(med([lat(j, "send_to_delivery", "p99_9") for j in rs])),
                meaning.get(s, "committed to PostgreSQL (synchronous_commit=on), then fanned out")))
        w("")


def fmt_dur(v):
    return "%g" % v if isinstance(v, (int, float)) else str(v)


# ------------------------------------------------------------------ cost per message (issue 21)

SERVER_GROUPS = ["gateway", "worker", "nats", "postgres", "redis", "ejabberd", "relay"]
COUNTERS = [("nats_in_msgs", "NATS in"), ("nats_out_msgs", "NATS out"), ("pg_xact_commit", "PG commits"),
            ("pg_xids", "PG writing transactions"), ("pg_statements", "PG statements"), ("pg_wal_bytes", "WAL bytes")]


def marked_window(res, run):
    """Over the marks of a run (or of a baseline): {"seconds", "cpu": {group: CPU seconds, the extra
    gateways added to the gateway, chat-bench left out}, "counters": {name: delta}}, or None."""
    m = res.marks(run)
    a, b = m.get("start"), m.get("end")
    if not a or not b or b["t"] <= a["t"]:
        return None
    out = {"seconds": b["t"] - a["t"], "t0": a["t"], "cpu": {}, "counters": {}}
    for g, t0 in a.get("cpu", {}).items():
        if g == "bench" or g not in b.get("cpu", {}):
            continue
        key = "gateway" if g.startswith("gateway") else g
        out["cpu"][key] = out["cpu"].get(key, 0.0) + (b["cpu"][g] - t0) / CLK_TCK
    ca, cb = a.get("counters") or {}, b.get("counters") or {}
    for k in cb:
        if k in ca:
            out["counters"][k] = cb[k] - ca[k]
    return out


def idle_cores(res, system, rep, shape):
    """{group: cores} the baseline before that ladder measured, or None."""
    base = res.baseline(system, rep, shape)
    bw = marked_window(res, base) if base else None
    if not bw:
        return None
    return {g: v / bw["seconds"] for g, v in bw["cpu"].items()}


def run_cost(res, run):
    """One run's cost per acked message: {"us": {group: CPU µs less idle}, "total_us", "cores": cores
    less idle, "per_msg": {counter: per message}, "acked", "idle": whether a baseline was there}."""
    j = run["j"]
    mw = marked_window(res, run)
    # the window starts after the warm-up (its messages acked inside the window are a few), and the
    # start mark comes a little (50-120 ms, at times more) after the measured sends began: the
    # messages counted are those of the share of the measured send phase after the mark
    acked = j["send"]["acked"] - j["send"].get("acked_warm", 0) if j else 0
    if not mw or acked <= 0:
        return None
    u = j.get("unix_ms") or {}
    s0, s1 = u.get("send_start"), u.get("send_end")
    if s0 and s1 and s1 > s0:
        acked *= max(0.0, 1.0 - max(0.0, mw["t0"] * 1000 - s0) / (s1 - s0))
    if acked <= 0:
        return None
    idle = idle_cores(res, run["system"], run["rep"], shape_of(run))
    us = {}
    for g, cpu in mw["cpu"].items():
        used = cpu - (idle or {}).get(g, 0.0) * mw["seconds"]
        us[g] = used * 1e6 / acked
    total = sum(us.values())
    return {"us": us, "total_us": total, "cores": total * acked / 1e6 / mw["seconds"], "acked": acked,
            "per_msg": {k: v / acked for k, v in mw["counters"].items()}, "idle": idle is not None}


def cost_points(res, system, shape):
    """The loads of the cost tables: [(name, [runs])]: 100 msg/s, 1,000 msg/s, the highest passing step
    (one run per ladder: the passing try of a step when there is one)."""
    lad = [r for r in res.ladder(system, shape) if r["j"]]

    def at(rate):
        out = []
        for rep in sorted({r["rep"] for r in lad}):
            rs = [r for r in lad if r["rep"] == rep and r["rate"] == rate]
            ok = [r for r in rs if sustained(r["j"])]
            if rs:
                out.append((ok or rs)[0])
        return out

    pts = [("100 msg/s", at(100)), ("1,000 msg/s", at(1000))]
    top = []
    for rep in sorted({r["rep"] for r in lad}):
        ok = sorted([r for r in lad if r["rep"] == rep and sustained(r["j"])], key=lambda r: r["rate"])
        if ok:
            top.append(ok[-1])
    if top:
        pts.append(("highest passing, %s msg/s" % "/".join(fmt_rate(r["rate"]) for r in top), top))
    return [(n, rs) for n, rs in pts if rs]


def cost_section(res, w, ladder_systems):
    """Issue 21's "cost per message" and "work per message" tables, from the ladder's runs."""
    rows = []
    for s in ladder_systems:
        for shape in res.shapes(s):
            idle = [x for x in (idle_cores(res, s, rep, shape) for rep in sorted({r["rep"] for r in res.ladder(s, shape)}))
                    if x is not None]
            bases = [marked_window(res, b) for b in res.of("baseline", s) if b.get("shape", 0) == shape]
            bases = [b for b in bases if b]
            pts = []
            for name, rs in cost_points(res, s, shape):
                costs = [c for c in (run_cost(res, r) for r in rs) if c]
                if costs:
                    pts.append((name, rs, costs))
            rows.append((s, shape, idle, bases, pts))
    if not any(r[4] or r[2] for r in rows):
        return
    groups = [g for g in SERVER_GROUPS if any(g in c["us"] for r in rows for _, _, cs in r[4] for c in cs)
              or any(g in i for r in rows for i in r[2])]
    w("### Cost per message")
    w("")
    w("CPU of each server process over the measured window of a ladder step (from chat-bench's \"measuring\", the "
      "end of the warm-up, to its \"drained\", every ack and delivery in; `/proc/<pid>/stat`; PostgreSQL is the postmaster and all "
      "its backends, the gateway every gateway, chat-bench left out), **less what the process used idle** "
      "(its cores in the baseline taken before the ladder, with the stack up and no client, times the "
      "window), divided by the messages acked after the start of the window. At 100 msg/s, at 1,000 msg/s (passed or not) and at the "
      "highest passing step; medians over the ladders.")
    w("")
    w("| system | connections | load | passed | cores (less idle) | µs per message | " + " | ".join(groups) + " |")
    w("| --- | --- | --- | --- | --- | --- | " + " | ".join("---" for _ in groups) + " |")
    for s, shape, idle, bases, pts in rows:
        if idle:
            tot = med([sum(i.values()) for i in idle])
            w("| %s | %s | idle (cores) | | %.3f | | %s |" % (
                label(s), fmt_rate(shape), tot, " | ".join(fmt_cores(med([i.get(g) for i in idle])) for g in groups)))
        for name, rs, costs in pts:
            ok = sum(1 for r in rs if sustained(r["j"]))
            w("| %s | %s | %s | %s | %.2f | **%s** | %s |" % (
                label(s), fmt_rate(shape), name, "yes" if ok == len(rs) else "%d/%d" % (ok, len(rs)),
                med([c["cores"] for c in costs]), fmt_us(med([c["total_us"] for c in costs])),
                " | ".join(fmt_us(med([c["us"].get(g) for c in costs])) for g in groups)))
    w("")
    w("Columns: *load* the ladder step (the idle row: the baseline, in cores); *passed* whether the step passed "
      "(ladders passed / ran); *cores (less idle)* the server processes' cores over the window less their idle "
      "cores; *µs per message* their CPU per acked message, less idle, in µs; then the same per process "
      "(the idle row: cores per process). Issue 21's targets: <= 300 µs at 100 msg/s, <= 100 µs near "
      "capacity, idle below 0.02 cores.")
    w("")
    keys = [k for k, _ in COUNTERS if any(k in c["per_msg"] for r in rows for _, _, cs in r[4] for c in cs)]
    if not keys:
        return
    names = dict(COUNTERS)
    w("### Broker and database work per message")
    w("")
    w("Read at the same two marks of each step (and of the idle baseline): nats-server's monitoring `/varz` "
      "(`in_msgs`, `out_msgs`: every message the broker took in from a client and handed out, JetStream's "
      "own API and acks included) and the chat database's `pg_stat_database` and WAL position; the deltas "
      "divided by the messages acked (the idle row: per second).")
    w("")
    w("| system | connections | load | " + " | ".join(names[k] for k in keys) + " |")
    w("| --- | --- | --- | " + " | ".join("---" for _ in keys) + " |")
    for s, shape, idle, bases, pts in rows:
        if bases and any(b["counters"] for b in bases):
            w("| %s | %s | idle (per second) | %s |" % (label(s), fmt_rate(shape), " | ".join(
                fmt_count(med([b["counters"].get(k) / b["seconds"] if k in b["counters"] else None for b in bases]))
                for k in keys)))
        for name, rs, costs in pts:
            if not any(c["per_msg"] for c in costs):
                continue
            w("| %s | %s | %s | %s |" % (label(s), fmt_rate(shape), name, " | ".join(
                fmt_count(med([c["per_msg"].get(k) for c in costs])) for k in keys)))
    w("")
    w("Columns: *NATS in* / *NATS out* messages nats-server received from / sent to its clients (the "
      "platform's processes; no chat-bench traffic goes through NATS during the step); *PG commits* "
      "`xact_commit` of the chat database, read-only transactions included (PostgreSQL publishes a "
      "busy backend's counts up to a second late, and those of its last second before it goes idle up to "
      "10 s late, so the last transactions of a step's set-up can fall inside its window: close, not exact); *PG writing transactions* "
      "transaction ids handed out (exact: transactions that wrote, in any database of the cluster); "
      "*PG statements* the calls `pg_stat_statements` counted (only when that extension is loaded); *WAL "
      "bytes* write-ahead log written. ejabberd's database is read the same way; Socket.IO has neither.")
    w("")


def fmt_us(v):
    if v is None:
        return "-"
    return "{:,.0f}".format(v) if abs(v) >= 10 else "%.1f" % v


def fmt_cores(v):
    return "-" if v is None else "%.3f" % v


def fmt_count(v):
    if v is None:
        return "-"
    if abs(v) >= 100:
        return "{:,.0f}".format(v)
    return "%.2f" % v


def row_med(runs, f):
    return med([f(r["j"]) for r in runs if r["j"]])


def passed(runs):
    return sum(1 for r in runs if r["j"] and r["j"].get("ok")), len(runs)


def step_failed(res, r):
    """A ladder run that was not sustained, and neither was the other try of its step."""
    if not r["j"] or sustained(r["j"]):
        return False
    return not any(o["rep"] == r["rep"] and o["rate"] == r["rate"] and sustained(o["j"])
                   for o in res.ladder(r["system"], shape_of(r)))


def evidence(res, system):
    """What the first failing ladder step of system measured: where the CPU went, the broker."""
    fails = sorted([r for r in res.ladder(system) if step_failed(res, r)], key=lambda r: r["rate"])
    for r in fails:
        cb = cpu_breakdown(res, r)
        if not cb:
            continue
        top = sorted(cb["groups"].items(), key=lambda kv: -kv[1])[:3]
        s = "at the first step not sustained (%s msg/s offered, %s acked/s): machine busy %.2f of %s cores " \
            "(others %.2f), most CPU: %s" % (
                fmt_rate(r["rate"]), fmt_rate(r["j"]["throughput"]["acked_per_s"]), cb["machine"],
                res.machine.get("cores", "?"), cb["other"], ", ".join("%s %.2f" % kv for kv in top))
        pa = cb["hist"].get("chat_gateway_publish_ack_seconds")
        if pa and pa.get("count"):
            s += "; broker PubAck p99 %s ms" % fmt_ms(pa["p99_ms"])
        fc = cb["hist"].get("chat_ingest_fetch_to_commit_seconds")
        if fc and fc.get("count"):
            s += ", fetch→commit p99 %s ms" % fmt_ms(fc["p99_ms"])
        if cb.get("pending_max") is not None:
            s += ", CHAT_IN backlog up to %s" % fmt_rate(cb["pending_max"])
        return s
    return None


def ceiling(res, system):
    """What CPU allows: at the highest sustained step of each ladder of system, the CPU of every process
    of the bench (chat-bench included) per acked message; medians over the ladders. Returns
    {"us": µs per message, "groups": {group: µs}, "rate": messages/s the machine's cores carry at that
    cost} or None."""
    per = {}
    for r in res.ladder(system):
        if not r["j"] or not sustained(r["j"]):
            continue
        if r["rep"] not in per or r["rate"] > per[r["rep"]]["rate"]:
            per[r["rep"]] = r
    rows = []
    for r in per.values():
        cb = cpu_breakdown(res, r)
        acked = r["j"]["throughput"]["acked_per_s"]
        if cb and acked:
            rows.append({g: v * 1e6 / acked for g, v in cb["groups"].items()})
    if not rows:
        return None
    groups = {g: med([x.get(g, 0.0) for x in rows]) for g in rows[0]}
    us = med([sum(x.values()) for x in rows])
    cores = float(res.machine.get("cores") or 2)
    return {"us": us, "groups": groups, "rate": cores * 1e6 / us if us else None}


def first_failed_busy(res, system):
    """Machine busy cores over the send phase of system's first ladder step that was not sustained."""
    for r in sorted([r for r in res.ladder(system) if step_failed(res, r)], key=lambda r: r["rate"]):
        cb = cpu_breakdown(res, r)
        if cb:
            return cb["machine"]
    return None


def ceiling_text(res, system, need=None):
    """One sentence: the CPU cost of a message at the highest sustained step, the rate the cores would
    carry at that cost, and whether the first step not sustained was short of CPU at all."""
    c = ceiling(res, system)
    if not c or not c["rate"]:
        return None
    cores = float(res.machine.get("cores") or 2)
    top = sorted(c["groups"].items(), key=lambda kv: -kv[1])[:5]
    s = "at the highest sustained step the whole stack used %.0f µs of CPU per acked message (%s): at that cost " \
        "the %s cores carry about %s msg/s with everything on them (the cost per message falls a little as " \
        "batches grow)" % (c["us"], ", ".join("%s %.0f" % kv for kv in top), res.machine.get("cores", "?"),
                           fmt_rate(c["rate"]))
    if need:
        s += "; %s msg/s needs under %.0f µs" % (fmt_rate(need), cores * 1e6 / need)
    busy = first_failed_busy(res, system)
    if system == "platform-always" and busy is not None and busy < 0.75 * cores:
        s += "; but the first step not sustained left %.0f%% of the cores idle: what stops this system first is " \
             "waiting, not CPU (the broker's PubAcks above: nats-server fsyncs every JetStream write, " \
             "bench/findings.md item 11)" % (100 * (1 - busy / cores))
    return s


def targets(res, caps, w, fast):
    for s in res.systems("sustained"):
        rs = res.of("sustained", s)
        ok, n = passed(rs)
        rate = rs[0]["rate"]
        acked = row_med(rs, lambda j: j["throughput"]["acked_per_s"])
        p99 = row_med(rs, lambda j: lat(j, "send_to_delivery", "p99"))
        lost = row_med(rs, lambda j: j["lost"])
        ooo = row_med(rs, lambda j: j["checks"]["out_of_order"])
        dur = rs[0]["j"]["params"]["duration"] if rs[0]["j"] else "?"
        conns = rs[0]["j"]["params"]["connections"] if rs[0]["j"] else "?"
        met = rate >= 20000 and ok == n and p99 is not None and p99 < 50 and acked >= 19800
        why = ""
        if not met:
            ev = evidence(res, s)
            ct = ceiling_text(res, s, 20000)
            why = (" — not met: the ladder's sustained capacity is %s msg/s, so this row ran at that rate; %s%s" % (
                fmt_rate(caps.get(s)), ev or "see \"Where the time goes\"", "; " + ct if ct else "")
                   if rate < 20000 else " — not met")
        w("| 1:1 sustained %s s, >= 20,000 msg/s, 0 lost, 0 out of order, p99 < 50 ms (%s) | %s msg/s offered on %s "
          "connections: %s acked/s, p99 delivery %s ms, lost %s, out of order %s; %d/%d runs passed the checks | %s%s |" % (
              dur, label(s), fmt_rate(rate), fmt_rate(conns), fmt_rate(acked), fmt_ms(p99), fmt_rate(lost),
              fmt_rate(ooo), ok, n, "**yes**" if met else "**no**", why))
    for s in res.systems("latency7k"):
        rs = res.of("latency7k", s)
        ok, n = passed(rs)
        p50 = row_med(rs, lambda j: lat(j, "send_to_delivery", "p50"))
        p99 = row_med(rs, lambda j: lat(j, "send_to_delivery", "p99"))
        acked = row_med(rs, lambda j: j["throughput"]["acked_per_s"])
        met = p50 is not None and p50 < 5 and p99 < 25 and ok == n
        why = ""
        if not met:
            c = ceiling(res, s)
            if caps.get(s) and caps[s] < 7000:
                why = " (above the sustained capacity, %s msg/s)" % fmt_rate(caps.get(s))
            elif c and c["rate"]:
                why = " — 7,000 msg/s is %.0f%% of what CPU allows (%s msg/s at %.0f µs per message, from the " \
                      "ladder): the latency there is queueing for the cores" % (700000.0 / c["rate"], fmt_rate(c["rate"]), c["us"])
        w("| 1:1 at 7,000 msg/s: p50 < 5 ms, p99 < 25 ms (%s) | p50 %s ms, p99 %s ms, %s acked/s; %d/%d passed | %s |" % (
            label(s), fmt_ms(p50), fmt_ms(p99), fmt_rate(acked), ok, n, "**yes**" if met else "**no**" + why))
    for s in res.systems("idle"):
        rs = res.of("idle", s)
        ok, n = passed(rs)
        kib = row_med(rs, lambda j: j["gateway_rss"].get("per_connection_kib"))
        opened = row_med(rs, lambda j: j["connections"]["open"])
        target = row_med(rs, lambda j: j["connections"]["target"])
        met = kib is not None and kib <= 4 and opened == target and target >= 18000
        w("| idle: 18,000 held on one gateway, RSS growth <= 4 KiB per connection | %s/%s held, %s KiB per connection; "
          "%d/%d passed | %s |" % (fmt_rate(opened), fmt_rate(target), "%.2f" % kib if kib is not None else "-", ok, n,
                                  "**yes**" if met else "**no**"))
    for s in res.systems("reconnect"):
        rs = res.of("reconnect", s)
        ok, n = passed(rs)
        j0 = rs[0]["j"]
        secs = row_med(rs, lambda j: j["reconnect"]["seconds"])
        held = row_med(rs, lambda j: j["connections"]["open"])
        dropped = row_med(rs, lambda j: j["reconnect"]["dropped"])
        lost = row_med(rs, lambda j: j["lost"])
        gws = len(j0["gateways"]) if j0 else 0
        met = ok == n and secs is not None and secs <= 15 and held >= 50000 and dropped >= 10000
        w("| 50,000 across 3 gateways, 10,000 dropped reconnect and sync within 15 s, nothing lost | %s held on %d "
          "gateway%s, %s dropped, all synced in %s s, lost %s; %d/%d passed | %s |" % (
              fmt_rate(held), gws, "" if gws == 1 else "s", fmt_rate(dropped),
              "%.2f" % secs if secs is not None else "-", fmt_rate(lost), ok, n, "**yes**" if met else "**no**"))
    for s in res.systems("groups"):
        rs = res.of("groups", s)
        ok, n = passed(rs)
        p99 = row_med(rs, lambda j: lat(j, "send_to_delivery", "p99"))
        dps = row_med(rs, lambda j: j["throughput"]["deliveries_per_s"])
        j0 = rs[0]["j"]
        shape = "%d groups of %d" % (j0["params"]["conversations"], j0["params"]["group_size"]) if j0 else "?"
        met = ok == n and p99 is not None and p99 < 100 and j0 and j0["params"]["group_size"] >= 1000
        w("| groups: 10 of 1,000, 1 msg/s each, p99 < 100 ms for 10,000 deliveries/s | %s: %s deliveries/s, p99 %s ms; "
          "%d/%d passed | %s |" % (shape, fmt_rate(dps), fmt_ms(p99), ok, n, "**yes**" if met else "**no**"))
    if res.of("import-beside"):
        rs = res.of("import-beside")
        ok = sum(1 for r in rs if r["j"] and r["j"].get("ok") and not r["j"]["lost"] and not refused(r["j"]))
        p99 = row_med(rs, lambda j: lat(j, "send_to_delivery", "p99"))
        alone = row_med(res.of("import"), lambda j: lat(j, "send_to_delivery", "p99"))
        imp = [import_of(res, r) for r in rs]
        n = med([i.get("accepted") for i in imp if i])
        j0 = next((r["j"] for r in rs if r["j"]), None)
        met = ok == len(rs) and p99 is not None and p99 < IMPORT_P99_MS
        w("| 1:1 beside a backend bulk import: p99 < %.0f ms (issue 21 asks it at 1,000 msg/s beside a 5,000-member "
          "group and an import of 100,000; this row: %s msg/s and an import alone) | p99 %s ms beside %s imported posts "
          "(%s ms alone); %d/%d passed | %s |" % (
              IMPORT_P99_MS, fmt_rate(j0["params"]["rate"]) if j0 else "?", fmt_ms(p99), fmt_rate(n), fmt_ms(alone),
              ok, len(rs), "**yes**" if met else "**no**"))
    ej = caps.get("ejabberd")
    for s in [x for x in caps if x.startswith("platform")]:
        if not ej or not caps.get(s):
            continue
        ratio = caps[s] / ej
        ev = evidence(res, "ejabberd")
        ct = ceiling_text(res, s, 20 * ej) if ratio < 20 else None
        w("| against ejabberd: >= 20x its sustained msg/s at equal or better p99 (%s) | %s vs %s msg/s: %.1fx "
          "(ejabberd %s)%s | %s |" % (label(s), fmt_rate(caps[s]), fmt_rate(ej), ratio, ev or "",
                                     "; this platform: " + ct if ct else "", "**yes**" if ratio >= 20 else "**no**"))
    pm = {s: med([r["j"]["gateway_rss"].get("per_connection_kib") for r in res.of("peermem", s) if r["j"]])
          for s in res.systems("peermem")}
    if pm.get("ejabberd") and pm.get("platform-always"):
        ratio = pm["ejabberd"] / pm["platform-always"]
        w("| against ejabberd: <= 1/20 of its memory per connection | %.2f vs %.2f KiB: 1/%.0f | %s |" % (
            pm["platform-always"], pm["ejabberd"], ratio, "**yes**" if ratio >= 20 else "**no**"))


IMPORT_P99_MS = 25.0  # issue 21, step 6: 1:1 keeps p99 < 25 ms beside heavy work


def import_of(res, run):
    """The importer's summary line of an import-beside run (chatctl import's JSON), or None."""
    return load(os.path.join(res.dir, run["id"] + ".import.json"))


def import_section(res, w):
    """The import row: 1:1 alone and beside a bulk import (bench/run, IMPORT_*)."""
    alone, beside = res.of("import"), res.of("import-beside")
    if not alone and not beside:
        return
    j0 = next((r["j"] for r in alone + beside if r["j"]), None)
    rate = fmt_rate(j0["params"]["rate"]) if j0 else "?"
    w("## A bulk import beside 1:1 traffic")
    w("")
    w("1:1 at %s msg/s on 2,000 connections (1,000 conversations), the default stack, alone and with a backend "
      "importing through `chatctl import` (the bulk lane, `CHAT_BULK`; stored after the live posts, at most "
      "`CHAT_INGEST_BULK_RATE` a second) started a few seconds into the send phase; the two alternate. The "
      "latencies are the 1:1 messages' send-to-delivery (issue 21, step 6: p99 < %.0f ms beside heavy work)." % (
          rate, IMPORT_P99_MS))
    w("")
    w("| run | 1:1 alone p50 / p90 / p99 (ms) | 1:1 beside the import p50 / p90 / p99 (ms) | import: posts, "
      "accepted in, stored after | lost, refused |")
    w("| --- | --- | --- | --- | --- |")
    reps = sorted({r["rep"] for r in alone + beside})
    for rep_ in reps:
        a = next((r for r in alone if r["rep"] == rep_), None)
        b = next((r for r in beside if r["rep"] == rep_), None)

        def trio(r):
            if not r or not r["j"]:
                return "-"
            return " / ".join(fmt_ms(lat(r["j"], "send_to_delivery", q)) for q in ("p50", "p90", "p99"))

        imp = import_of(res, b) if b else None
        imp_txt = "-"
        if imp:
            imp_txt = "%s, %.1f s, %.1f s" % (fmt_rate(imp.get("accepted")), imp.get("seconds") or 0,
                                              imp.get("stored_after_seconds") or 0)
        lr = [r["j"] for r in (a, b) if r and r["j"]]
        w("| %d | %s | %s | %s | %s, %s |" % (rep_, trio(a), trio(b), imp_txt,
                                            fmt_rate(sum(j["lost"] for j in lr)), fmt_rate(sum(refused(j) for j in lr))))
    w("")


def rows_detail(res, w):
    rows = [("sustained", "1:1 sustained"), ("latency7k", "1:1 at 7,000 msg/s"), ("idle", "Idle connections"),
            ("groups", "Groups"), ("reconnect", "Reconnect and sync")]
    w("## Each row")
    w("")
    w("Medians of the runs; the exact command of each run (from `bench/scenarios/` with the flags that "
      "win over the file; the stack's settings are those of `bench/lib/stacks.sh`).")
    w("")
    w("| row | system | runs passed | acked/s | deliveries/s | ack p50 / p99 | delivery p50 / p99 / max (ms) | other | command |")
    w("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for row, name in rows:
        for s in res.systems(row):
            rs = res.of(row, s)
            ok, n = passed(rs)
            other = ""
            if row == "idle":
                other = "%s KiB/conn, ramp %s s" % (
                    "%.2f" % (row_med(rs, lambda j: j["gateway_rss"].get("per_connection_kib")) or 0),
                    "%.1f" % (row_med(rs, lambda j: j["connections"]["ramp_s"]) or 0))
            elif row == "reconnect":
                other = "resync %s s (p99 per connection %s ms)" % (
                    "%.2f" % (row_med(rs, lambda j: j["reconnect"]["seconds"]) or 0),
                    fmt_ms(row_med(rs, lambda j: j["reconnect"]["per_connection_ms"]["p99"])))
            else:
                other = "late sends %s" % fmt_rate(row_med(rs, lambda j: j["send"]["late"]))
            w("| %s | %s | %d/%d | %s | %s | %s / %s | %s / %s / %s | %s | %s |" % (
                name, label(s), ok, n, fmt_rate(row_med(rs, lambda j: j["throughput"]["acked_per_s"])),
                fmt_rate(row_med(rs, lambda j: j["throughput"]["deliveries_per_s"])),
                fmt_ms(row_med(rs, lambda j: lat(j, "send_to_ack", "p50"))),
                fmt_ms(row_med(rs, lambda j: lat(j, "send_to_ack", "p99"))),
                fmt_ms(row_med(rs, lambda j: lat(j, "send_to_delivery", "p50"))),
                fmt_ms(row_med(rs, lambda j: lat(j, "send_to_delivery", "p99"))),
                fmt_ms(row_med(rs, lambda j: lat(j, "send_to_delivery", "max"))), other, short_cmd(rs[0])))
    w("")
    fails = [r for r in res.runs if r["j"] and not r["j"].get("ok") and r["row"] != "ladder"]
    if fails:
        w("Runs that failed a check (outside the ladder, where the failing step is the point):")
        w("")
        for r in fails:
            w("- `%s`: %s" % (r["id"], r["j"].get("problem", "")))
        w("")


def where_time(res, w, fast):
    w("## Where the time goes")
    w("")
    prof = res.of("profile")
    cands = prof + [r for r in res.runs if r["row"] in ("sustained", "ladder") and r["system"].startswith("platform")]
    w("CPU of each process over the send phase (from `/proc/<pid>/stat`, once a second; PostgreSQL is the "
      "postmaster and all its backends), as cores used and as CPU microseconds per message acked. The last "
      "columns are the platform's own metrics over the same window (deltas of its histograms): fetch to "
      "commit and commit to fanout (`chat_ingest_*_seconds`), the broker's PubAck to the gateway "
      "(`chat_gateway_publish_ack_seconds`), and the largest CHAT_IN backlog seen "
      "(`chat_ingest_consumer_pending`, summed over partitions).")
    w("")
    groups = ["gateway", "worker", "nats", "postgres", "redis", "bench", "ejabberd", "relay"]
    w("| run | msg/s acked | " + " | ".join(groups) + " | machine busy | others (not the bench) | fetch→commit mean/p99 ms | "
      "commit→fanout mean/p99 ms | publish ack p99 ms | backlog max |")
    w("| --- | --- | " + " | ".join("---" for _ in groups) + " | --- | --- | --- | --- | --- | --- |")
    picked = []
    for s in ["platform-always", "platform-" + fast, "ejabberd", "socketio"]:
        # the profile run, and the highest sustained ladder step of each system
        p = [r for r in prof if r["system"] == s and r["j"]]
        lad = [r for r in res.ladder(s) if r["j"] and sustained(r["j"])]
        lad.sort(key=lambda r: r["rate"])
        fail = [r for r in res.ladder(s) if step_failed(res, r)]
        fail.sort(key=lambda r: r["rate"])
        sus = [r for r in res.of("sustained", s) if r["j"]]
        for r in p[:1] + lad[-1:] + fail[:1] + sus[:1]:
            picked.append(r)
    for r in picked:
        cb = cpu_breakdown(res, r)
        if not cb:
            continue
        acked = r["j"]["throughput"]["acked_per_s"] or 1
        cells = []
        for g in groups:
            v = cb["groups"].get(g)
            cells.append("" if v is None else "%.2f (%.0f µs)" % (v, v * 1e6 / acked))
        h = cb["hist"]

        def hm(name, k):
            x = h.get(name)
            return fmt_ms(x[k]) if x and x.get("count") else "-"
        w("| %s %s @%s on %s connections%s | %s | %s | %.2f | %.2f | %s / %s | %s / %s | %s | %s |" % (
            r["row"], label(r["system"]), fmt_rate(r["rate"]), fmt_rate(r["j"]["params"]["connections"]),
            "" if sustained(r["j"]) else " (did not pass)",
            fmt_rate(acked), " | ".join(cells), cb["machine"], cb["other"],
            hm("chat_ingest_fetch_to_commit_seconds", "mean_ms"), hm("chat_ingest_fetch_to_commit_seconds", "p99_ms"),
            hm("chat_ingest_commit_to_fanout_seconds", "mean_ms"), hm("chat_ingest_commit_to_fanout_seconds", "p99_ms"),
            hm("chat_gateway_publish_ack_seconds", "p99_ms"),
            fmt_rate(cb["pending_max"]) if cb.get("pending_max") is not None else "-"))
    w("")
    w("Cells: cores used (CPU µs per acked message). `bench` is chat-bench itself (it sends, receives and checks "
      "every message). \"Machine busy\" counts every process on the machine; \"others\" is what was not the bench "
      "(the other engineers' work on this shared machine).")
    w("")
    for r in prof:
        pc = perf_comm(res, r)
        if not pc:
            continue
        w("### perf: %s at %s msg/s" % (label(r["system"]), fmt_rate(r["rate"])))
        w("")
        w("`perf record -a -F 499` for %s s in the middle of the send phase (cpu-clock samples of every process); "
          "share of all samples by process:" % r["perf"])
        w("")
        w(", ".join("%s %.1f%%" % (c, p) for p, c in pc[:10]) + ".")
        w("")
        syms = perf_syms(res, r, ["chat-gateway", "chat-worker", "nats-server", "postgres"])
        if syms:
            w("| process | top symbols (share of all samples, shared object, symbol) |")
            w("| --- | --- |")
            for c, lst in syms.items():
                w("| %s | %s |" % (c, "; ".join("%.1f%% %s `%s`" % (p, os.path.basename(d), s.replace("|", "\\|")[:60])
                                                  for p, d, s in lst)))
            w("")


def durability(w, fast):
    w("## CHAT_NATS_SYNC: what each setting means for durability")
    w("")
    w("- `always`: nats-server fsyncs every JetStream write before it acknowledges it. A "
      "message in CHAT_IN survives a power loss of the broker's machine as soon as the gateway has its PubAck.")
    w("- `%s` (the default of `scripts/up` since 2026-12-07): nats-server writes at once but fsyncs every %s; a PubAck can come before the bytes are on the "
      "disk, so a power loss (not a crash of nats-server alone: the page cache survives that) can lose up to "
      "%s of broker writes. **What a client was acked is not at risk**: the platform acks a send only after the "
      "PostgreSQL commit (`synchronous_commit=on`, fsync), and delivers only committed messages. What can be "
      "lost is (a) a post the gateway published whose ack the client never got (the client resends it with the "
      "same cmid; dedupe makes that safe), (b) CHAT_EVENTS entries of committed messages (the ingest reads "
      "back the newest it had acknowledged once the interval has passed and republishes what is missing from "
      "PostgreSQL; the notify role may skip pushes of the republished ones), (c) a revocation (`chatctl revoke` "
      "reads it back and writes it again). The fault scenario `nats_power_loss` checks it. A replicated JetStream "
      "(`CHAT_JS_REPLICAS=3`) keeps a copy on other machines in any case." % (fast, fast, fast))
    w("")


def main():
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    cmd = sys.argv[1]
    if cmd == "verdict":
        print(verdict(load(sys.argv[2])))
        return 0
    if cmd == "sustained":
        return 0 if sustained(load(sys.argv[2])) else 1
    if cmd == "capacity":
        c = Results(sys.argv[2]).capacity(sys.argv[3], int(sys.argv[4]) if len(sys.argv) > 4 else None)
        print(c if c is not None else 0)
        return 0
    if cmd == "page":
        page(sys.argv[2], sys.argv[3])
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
