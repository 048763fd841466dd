#!/usr/bin/env python3
"""The Grafana dashboard of the chat platform, as code: prints deploy/grafana/dashboards/chat.json.

    python3 deploy/grafana/dashboard.py > deploy/grafana/dashboards/chat.json

deploy/check.sh checks that the committed JSON is what this prints, and parses every query with
promtool. The metrics and recording rules are described in docs/operations.md."""
import json
DS = {"type": "prometheus", "uid": "prometheus"}
panels = []
pid = [0]
y = [0]

def nid():
    pid[0] += 1
    return pid[0]

def row(title):
    panels.append({"type": "row", "title": title, "id": nid(), "collapsed": False,
                   "gridPos": {"h": 1, "w": 24, "x": 0, "y": y[0]}, "panels": []})
    y[0] += 1

def ts(title, targets, unit="short", x=0, w=12, h=8, desc="", stack=False):
    p = {"type": "timeseries", "title": title, "id": nid(), "datasource": DS, "description": desc,
         "gridPos": {"h": h, "w": w, "x": x, "y": y[0]},
         "fieldConfig": {"defaults": {"unit": unit, "custom": {"lineWidth": 1, "fillOpacity": 10,
                                                                "stacking": {"mode": "normal" if stack else "none"}}},
                         "overrides": []},
         "options": {"legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull", "max"]},
                     "tooltip": {"mode": "multi"}},
         "targets": [{"datasource": DS, "expr": e, "legendFormat": l, "refId": chr(65 + i)}
                     for i, (e, l) in enumerate(targets)]}
    panels.append(p)
    return p

def stat(title, expr, unit, x, w=4, thresholds=None, desc=""):
    steps = [{"color": "green", "value": None}]
    for v, c in (thresholds or []):
        steps.append({"color": c, "value": v})
    panels.append({"type": "stat", "title": title, "id": nid(), "datasource": DS, "description": desc,
                   "gridPos": {"h": 4, "w": w, "x": x, "y": y[0]},
                   "fieldConfig": {"defaults": {"unit": unit, "thresholds": {"mode": "absolute", "steps": steps}},
                                   "overrides": []},
                   "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                               "colorMode": "background", "graphMode": "area", "textMode": "auto"},
                   "targets": [{"datasource": DS, "expr": expr, "refId": "A"}]})

def nextrow(h=8):
    y[0] += h

row("At a glance")
stat("p99 delivery latency (5m)", "chat:delivery_latency_seconds:p99_5m", "s", 0, thresholds=[(0.5, "orange"), (1, "red")],
     desc="Broker timestamp of an event to its frame written to a recipient's socket.")
stat("Messages stored / s", "chat:ingest_events:rate_5m", "ops", 4)
stat("Open connections", "sum(chat_gateway_connections)", "short", 8)
stat("Posts waiting in CHAT_IN", "chat:ingest_consumer_pending:sum", "short", 12, thresholds=[(1000, "orange"), (20000, "red")])
stat("Sends failing (unavailable)",
     'sum(rate(chat_gateway_failed_total{reason="unavailable"}[5m])) / clamp_min(sum(rate(chat_gateway_acks_total[5m])) + sum(rate(chat_gateway_failed_total{reason="unavailable"}[5m])), 0.001)',
     "percentunit", 16, thresholds=[(0.001, "orange"), (0.01, "red")])
stat("Alerts firing", 'count(ALERTS{alertstate="firing"}) or vector(0)', "short", 20, thresholds=[(1, "red")])
nextrow(4)

row("Delivery latency")
ts("Delivery latency (broker -> recipient socket)", [
    ("chat:delivery_latency_seconds:p50_5m", "p50"),
    ("chat:delivery_latency_seconds:p99_5m", "p99"),
    ('histogram_quantile(0.99, sum by (le, instance) (rate(chat_delivery_latency_seconds_bucket[5m])))', "p99 {{instance}}")],
   unit="s", x=0, desc="chat_delivery_latency_seconds: alert ChatDeliveryLatencyHigh at p99 > 500 ms, critical at > 1 s.")
ts("Stages, p99", [
    ("chat:gateway_publish_ack_seconds:p99_5m", "publish -> PubAck (gateway)"),
    ("chat:ingest_fetch_to_commit_seconds:p99_5m", "fetch -> commit (ingest)"),
    ("chat:ingest_commit_to_fanout_seconds:p99_5m", "commit -> deliveries flushed (ingest)"),
    ("chat:ingest_broker_to_commit_seconds:p99_5m", "broker -> commit (ingest)")], unit="s", x=12)
nextrow()
ts("Throughput", [
    ("chat:ingest_events:rate_5m", "events stored / s"),
    ("chat:gateway_acks:rate_5m", "acks to clients / s"),
    ("chat:deliveries:rate_5m", "event frames to sockets / s"),
    ("sum(rate(chat_ingest_batches_total[5m]))", "ingest batches / s"),
    ("sum(rate(chat_ingest_redelivered_total[5m]))", "redelivered / s")], unit="ops", x=0)
ts("API requests / s by method", [
    ("sum by (method) (rate(chat_api_requests_total[5m]))", "{{method}}"),
    ("histogram_quantile(0.99, sum by (le) (rate(chat_api_request_seconds_bucket[5m])))", "p99 seconds")],
   x=12)
nextrow()

row("Broker lag")
ts("CHAT_IN pending by partition", [("chat:ingest_consumer_pending:by_partition", "partition {{partition}}")],
   x=0, desc="chat_ingest_consumer_pending: posts waiting for the partition's owner. Alert ChatIngestLag > 1000 for 2 m.")
ts("CHAT_IN ack pending by partition", [("max by (partition) (chat_ingest_consumer_ack_pending)", "partition {{partition}}")],
   x=12, desc="Delivered to the owner, not yet acked; 1024 is the consumer's MaxAckPending.")
nextrow()
ts("Partitions owned by worker", [("chat_ingest_partitions_owned", "{{instance}}"),
                                  ("count(count by (partition) (chat_ingest_consumer_pending))", "partitions")],
   x=0, stack=False)
ts("Offline notifications waiting (notify consumer)", [("max(chat_notify_pending)", "pending + ack pending"),
                                                       ("max(chat_notify_members_behind)", "members behind past CHAT_PUSH_GRACE")],
   x=12)
nextrow()

row("Failures")
ts("Error frames to clients / s by reason", [("chat:gateway_failed:rate_5m", "{{reason}}")], unit="ops", x=0,
   desc="chat_gateway_failed_total: unavailable is the platform's failure; rate_limited, not_member, too_large, bad_request are the clients'.")
ts("API errors / s by code", [("sum by (code) (rate(chat_api_errors_total[5m]))", "{{code}}")], unit="ops", x=12)
nextrow()
ts("Ingest drops / s by reason", [("sum by (reason) (rate(chat_ingest_dropped_total[5m]))", "{{reason}}")], unit="ops", x=0)
ts("Push webhook", [("sum(rate(chat_notify_pushes_total[5m]))", "pushes / s"),
                    ("sum(rate(chat_notify_push_failures_total[5m]))", "failures / s"),
                    ("sum(rate(chat_notify_given_up_total[5m]))", "given up / s"),
                    ("histogram_quantile(0.99, sum by (le) (rate(chat_notify_webhook_seconds_bucket[5m])))", "p99 POST seconds")],
   x=12)
nextrow()

row("Archive")
ts("Archive passes and moves", [("sum(increase(chat_archive_passes_total[1h]))", "passes / h"),
                                ("sum(increase(chat_archive_pass_failures_total[1h]))", "failed passes / h"),
                                ("sum(increase(chat_archive_partitions_total[1h]))", "partitions archived / h")], x=0)
ts("Cold reads (history, sync)", [("sum by (cache) (rate(chat_cold_chunk_reads_total[5m]))", "chunks {{cache}} / s"),
                                  ("sum(rate(chat_cold_chunk_errors_total[5m]))", "errors / s"),
                                  ("sum(rate(chat_archive_rows_total[5m]))", "events archived / s")], unit="ops", x=12)
nextrow()

row("Connections")
ts("Connections and users per gateway", [("chat_gateway_connections", "connections {{instance}}"),
                                         ("chat_gateway_users", "users {{instance}}")], x=0)
ts("Connects and disconnects / s", [("sum(rate(chat_gateway_connects_total[5m]))", "connects"),
                                    ("sum by (reason) (rate(chat_gateway_disconnects_total[5m]))", "disconnect: {{reason}}"),
                                    ("sum by (reason) (rate(chat_gateway_refused_total[5m]))", "refused: {{reason}}")],
   unit="ops", x=12)
nextrow()
ts("Frames / s", [("sum(rate(chat_gateway_frames_in_total[5m]))", "in"),
                  ("sum(rate(chat_gateway_frames_out_total[5m]))", "out")], unit="ops", x=0)
ts("Load balancer", [('haproxy_backend_active_servers{proxy="gateways"}', "gateways in rotation"),
                     ('haproxy_frontend_current_sessions{proxy="chat"}', "sessions at the LB")], x=12)
nextrow()

row("Processes")
ts("Resident memory", [("process_resident_memory_bytes{job=~\"chat-.*\"}", "{{instance}}")], unit="bytes", x=0, w=8)
ts("Open file descriptors", [("process_open_fds{job=~\"chat-.*\"}", "{{instance}}")], x=8, w=8)
ts("Threads", [("process_threads{job=~\"chat-.*\"}", "{{instance}}")], x=16, w=8)
nextrow()

dash = {
    "uid": "chat-overview",
    "title": "Chat platform",
    "description": "Delivery health of the chat platform (docs/operations.md).",
    "tags": ["chat"],
    "timezone": "utc",
    "schemaVersion": 39,
    "version": 1,
    "editable": True,
    "refresh": "30s",
    "time": {"from": "now-3h", "to": "now"},
    "templating": {"list": []},
    "annotations": {"list": []},
    "panels": panels,
}
print(json.dumps(dash, indent=2))
