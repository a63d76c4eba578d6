#!/usr/bin/env python3
"""Generates grafana/dashboards/*.json. Edit this file, not the JSON, then run it.

Every panel uses the `$datasource` variable, a unit, and `$__rate_interval` for rates."""
import json
import pathlib

DS = {"type": "prometheus", "uid": "${datasource}"}
OUT = pathlib.Path(__file__).resolve().parent / "dashboards"


def target(i, expr, legend=None):
    t = {"refId": chr(65 + i), "expr": expr, "datasource": DS}
    if legend:
        t["legendFormat"] = legend
    return t


def timeseries(pid, title, exprs, unit, x, y, w=12, h=8):
    return {
        "id": pid, "type": "timeseries", "title": title, "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [target(i, e, l) for i, (e, l) in enumerate(exprs)],
    }


def stat(pid, title, expr, unit, x, y):
    return {
        "id": pid, "type": "stat", "title": title, "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": 6, "h": 4},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [target(0, expr)],
    }


def dashboard(uid, title, panels):
    return {
        "uid": uid, "title": title, "tags": ["clusterwatch"],
        "schemaVersion": 39, "version": 1, "editable": True, "timezone": "utc",
        "time": {"from": "now-6h", "to": "now"}, "refresh": "30s",
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus",
             "label": "Data source", "current": {}},
            {"name": "job", "type": "query", "label": "Job", "datasource": DS,
             "query": {"query": "label_values(clusterwatch_build_info, job)", "refId": "job"},
             "includeAll": True, "multi": True, "current": {}, "refresh": 2},
        ]},
        "panels": panels,
    }


J = 'job=~"$job"'
overview = dashboard("clusterwatch-overview", "clusterwatch / Overview", [
    stat(1, "Live clusters", f"sum(clusterwatch_live_clusters{{{J}}})", "short", 0, 0),
    stat(2, "Clusters passing the privacy gate", f"sum(clusterwatch_visible_clusters{{{J}}})", "short", 6, 0),
    stat(3, "Firing coordinated-cluster alerts",
         f'sum(clusterwatch_open_alerts{{{J},status="firing"}})', "short", 12, 0),
    stat(4, "Event-time lag behind wall clock",
         f"time() - max(clusterwatch_event_time_watermark_seconds{{{J}}})", "s", 18, 0),
    timeseries(5, "Events consumed, clustered, rejected", [
        (f"sum(rate(clusterwatch_events_consumed_total{{{J}}}[$__rate_interval]))", "consumed"),
        (f"sum(rate(clusterwatch_events_clustered_total{{{J}}}[$__rate_interval]))", "clustered"),
        (f"sum(rate(clusterwatch_events_rejected_total{{{J}}}[$__rate_interval]))", "rejected"),
        (f"sum(rate(clusterwatch_events_duplicate_total{{{J}}}[$__rate_interval]))", "duplicates"),
    ], "ops", 0, 4),
    timeseries(6, "Traffic by surface", [
        (f"sum by (surface) (rate(clusterwatch_events_clustered_total{{{J}}}[$__rate_interval]))", "{{surface}}"),
    ], "ops", 12, 4),
    timeseries(7, "Rejected by reason", [
        (f"sum by (reason) (rate(clusterwatch_events_rejected_total{{{J}}}[$__rate_interval]))", "{{reason}}"),
    ], "ops", 0, 12),
    timeseries(8, "Stage latency p99", [
        ("histogram_quantile(0.99, sum by (stage, le) "
         f"(rate(clusterwatch_stage_duration_seconds_bucket{{{J}}}[$__rate_interval])))", "{{stage}}"),
    ], "s", 12, 12),
    timeseries(9, "Alert state changes", [
        (f"sum by (kind, severity, status) (increase(clusterwatch_alerts_total{{{J}}}[$__rate_interval]))",
         "{{kind}} {{severity}} {{status}}"),
    ], "short", 0, 20),
    timeseries(10, "Stage errors", [
        (f"sum by (stage) (rate(clusterwatch_stage_errors_total{{{J}}}[$__rate_interval]))", "{{stage}}"),
    ], "ops", 12, 20),
])

if __name__ == "__main__":
    OUT.mkdir(exist_ok=True)
    for d in [overview]:
        (OUT / f"{d['uid']}.json").write_text(json.dumps(d, indent=2) + "\n")
