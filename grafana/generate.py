#!/usr/bin/env python3
"""Generates grafana/dashboards/*.json. Edit this file, not the JSON, then run it.

    python3 grafana/generate.py              # rewrite grafana/dashboards/
    python3 grafana/generate.py --out DIR    # write elsewhere (tests/dashboards.rs compares the two)

Rules every dashboard keeps (tests/dashboards.rs enforces them): every panel and query uses the
`$datasource` variable, every panel has a unit, every rate or increase uses `$__rate_interval`
(a fixed `[5m]` breaks when the scrape interval changes), and every metric is a clusterwatch_ one.
The uids are stable: alert links (alerts.generator_url) and bookmarks point at them.
"""
import argparse
import json
import pathlib

DS = {"type": "prometheus", "uid": "${datasource}"}
DEFAULT_OUT = pathlib.Path(__file__).resolve().parent / "dashboards"
TAG = "clusterwatch"

# Every query filters on the job so several deployments can share one Prometheus.
J = 'job=~"$job"'
RI = "[$__rate_interval]"

# Label matchers, named because Python before 3.12 allows no backslash inside an f-string's braces.
MICRO = 'kind="micro"'
FIRING = 'status="firing"'
PENDING = 'status="pending"'
COORDINATED = 'kind="coordinated_cluster"'
LAUNCH_KINDS = 'kind=~"launch_.*"'
FALLBACK = 'kind="fallback"'

# The label naming the alert sink on the delivery metrics: src/export/metrics.rs keeps the label
# set bounded to a few names, so the sink is `kind` there.
SINK = "kind"

# Where on-call opens the k-anonymous cluster explorer. Prometheus has no cluster id by design
# (privacy), so the dashboards can only point at the page that is allowed to show clusters.
EXPLORER_DEFAULT = "http://clusterwatch:9464"
EXPLORER_URL = "${explorer}/explorer"

UIDS = {
    "overview": "clusterwatch-overview",
    # config/production.example.toml's alerts.generator_url links here: keep it.
    "abuse": "clusterwatch-abuse",
    "launch": "clusterwatch-launch",
    "pipeline": "clusterwatch-pipeline",
}


def m(name, *matchers):
    """A selector with the job matcher first."""
    return f"{name}{{{','.join((J,) + matchers)}}}"


def rate(name, *matchers, fn="rate"):
    return f"{fn}({m(name, *matchers)}{RI})"


# ---------------------------------------------------------------------------------------------
# Panels


class Grid:
    """Flows panels left to right in Grafana's 24-column grid, so layouts never overlap."""

    def __init__(self):
        self.x = 0
        self.y = 0
        self.row_h = 0
        self.next_id = 1
        self.panels = []

    def _place(self, panel, w, h):
        if self.x + w > 24:
            self.newline()
        panel["id"] = self.next_id
        self.next_id += 1
        panel["gridPos"] = {"x": self.x, "y": self.y, "w": w, "h": h}
        self.x += w
        self.row_h = max(self.row_h, h)
        self.panels.append(panel)

    def newline(self):
        if self.x:
            self.y += self.row_h
        self.x = 0
        self.row_h = 0

    def row(self, title):
        self.newline()
        self._place({"type": "row", "title": title, "collapsed": False, "datasource": DS,
                     "panels": []}, 24, 1)
        self.newline()

    def add(self, panel, w=12, h=8):
        self._place(panel, w, h)


def target(i, expr, legend=None, instant=False, fmt=None):
    t = {"refId": chr(65 + i), "expr": expr, "datasource": DS, "range": not instant,
         "instant": instant}
    if legend:
        t["legendFormat"] = legend
    if fmt:
        t["format"] = fmt
    return t


def field_config(unit, min_=None, max_=None, thresholds=None, overrides=None, custom=None):
    defaults = {"unit": unit}
    if min_ is not None:
        defaults["min"] = min_
    if max_ is not None:
        defaults["max"] = max_
    if thresholds:
        defaults["thresholds"] = {"mode": "absolute", "steps": [
            {"color": c, "value": v} for v, c in thresholds]}
    if custom:
        defaults["custom"] = custom
    return {"defaults": defaults, "overrides": overrides or []}


def timeseries(title, exprs, unit, description="", min_=None, max_=None, stack=False,
               bars=False, links=None):
    custom = {"drawStyle": "bars" if bars else "line", "fillOpacity": 20 if (stack or bars) else 0,
              "showPoints": "never"}
    if stack:
        custom["stacking"] = {"mode": "normal", "group": "A"}
    p = {
        "type": "timeseries", "title": title, "description": description, "datasource": DS,
        "fieldConfig": field_config(unit, min_, max_, custom=custom),
        "options": {"legend": {"displayMode": "table", "placement": "bottom",
                               "calcs": ["lastNotNull", "max"]},
                    "tooltip": {"mode": "multi", "sort": "desc"}},
        "targets": [target(i, e, l) for i, (e, l) in enumerate(exprs)],
    }
    if links:
        p["links"] = links
    return p


def stat(title, expr, unit, description="", thresholds=None, legend=None, links=None):
    p = {
        "type": "stat", "title": title, "description": description, "datasource": DS,
        "fieldConfig": field_config(unit, thresholds=thresholds or [(None, "green")]),
        "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                    "colorMode": "value", "graphMode": "area", "textMode": "auto"},
        "targets": [target(0, expr, legend)],
    }
    if links:
        p["links"] = links
    return p


def table(title, exprs, unit, columns, description="", sort_by=None, links=None,
          data_links=None):
    """An instant-query table: one row per label set, one column per query (`columns` names
    them in query order; each is (header, unit))."""
    overrides = []
    rename = {}
    for i, (header, col_unit) in enumerate(columns):
        field = f"Value #{chr(65 + i)}"
        rename[field] = header
        overrides.append({"matcher": {"id": "byName", "options": header},
                          "properties": [{"id": "unit", "value": col_unit}]})
    if data_links:
        for header, _ in columns:
            overrides.append({"matcher": {"id": "byName", "options": header},
                              "properties": [{"id": "links", "value": data_links}]})
    p = {
        "type": "table", "title": title, "description": description, "datasource": DS,
        "fieldConfig": field_config(unit, overrides=overrides),
        "options": {"showHeader": True,
                    "sortBy": [{"displayName": sort_by, "desc": True}] if sort_by else []},
        "targets": [target(i, e, instant=True, fmt="table") for i, e in enumerate(exprs)],
        "transformations": [
            {"id": "merge", "options": {}},
            {"id": "organize", "options": {"excludeByName": {"Time": True},
                                           "renameByName": rename}},
        ],
    }
    if links:
        p["links"] = links
    return p


# ---------------------------------------------------------------------------------------------
# Dashboards


def job_variable():
    return {"name": "job", "type": "query", "label": "Job", "datasource": DS,
            "definition": "label_values(clusterwatch_build_info, job)",
            "query": {"query": "label_values(clusterwatch_build_info, job)", "refId": "job"},
            "includeAll": True, "allValue": ".*", "multi": True, "refresh": 2, "sort": 1,
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]}}


def dashboard(key, title, description, grid, extra_vars=(), extra_tags=()):
    others = [k for k in UIDS if k != key]
    return {
        "uid": UIDS[key], "title": title, "description": description,
        "tags": [TAG] + list(extra_tags),
        "schemaVersion": 39, "version": 1, "editable": True, "graphTooltip": 1,
        "timezone": "utc", "time": {"from": "now-6h", "to": "now"}, "refresh": "30s",
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus",
             "label": "Data source", "current": {}, "hide": 0},
            job_variable(),
            *extra_vars,
            # On every dashboard, so includeVars carries an edited URL from one to the next.
            explorer_variable(),
        ]},
        # The tag link lists every clusterwatch dashboard; keepTime and includeVars make a jump
        # from one to another keep the incident's time range and job.
        "links": [
            {"type": "dashboards", "tags": [TAG], "asDropdown": True, "title": "clusterwatch",
             "includeVars": True, "keepTime": True, "icon": "external link"},
            *[{"type": "link", "title": TITLES[k], "url": f"/d/{UIDS[k]}", "includeVars": True,
               "keepTime": True, "icon": "dashboard", "targetBlank": False} for k in others],
        ],
        "panels": grid.panels,
    }


TITLES = {
    "overview": "Overview",
    "abuse": "Coordinated abuse",
    "launch": "Launch monitor",
    "pipeline": "Pipeline health",
}

EXPLORER_LINK = [{"title": "Open the cluster explorer (k-anonymous clusters)", "url": EXPLORER_URL,
                  "targetBlank": True}]


def explorer_variable():
    return {"name": "explorer", "type": "textbox", "label": "clusterwatch URL",
            "description": "Base URL of clusterwatch's HTTP listener, for the explorer links",
            "query": EXPLORER_DEFAULT, "hide": 0,
            "current": {"text": EXPLORER_DEFAULT, "value": EXPLORER_DEFAULT}}


def per_surface_ratio(numerator, extra=()):
    return (f"sum by (surface) ({rate(numerator, *extra)}) / "
            f"sum by (surface) ({rate('clusterwatch_events_clustered_total', *extra)})")


def overview():
    g = Grid()
    g.add(stat("Events clustered", f"sum({rate('clusterwatch_events_clustered_total')})", "ops",
               "Events assigned to a cluster per second, all surfaces."), 6, 4)
    g.add(stat("Live micro-clusters",
               f"sum({m('clusterwatch_live_clusters', MICRO)})",
               "short", "Micro-clusters held in memory."), 6, 4)
    g.add(stat("Clusters passing the privacy gate", f"sum({m('clusterwatch_visible_clusters')})",
               "short", "Live micro-clusters with enough distinct accounts and conversations "
               "to be shown (k-anonymity).", links=EXPLORER_LINK), 6, 4)
    g.add(stat("Firing alerts", f"sum({m('clusterwatch_open_alerts', FIRING)})",
               "short", "Alerts firing now, every kind.",
               thresholds=[(None, "green"), (1, "red")],
               links=[{"title": "Coordinated abuse", "url": f"/d/{UIDS['abuse']}?${{__url_time_range}}"}]),
          6, 4)

    g.row("Traffic")
    g.add(timeseries("Traffic by surface", [
        (f"sum by (surface) ({rate('clusterwatch_events_clustered_total')})", "{{surface}}"),
    ], "ops", "Clustered events per second by product surface.", stack=True))
    g.add(timeseries("Events consumed, clustered, rejected", [
        (f"sum({rate('clusterwatch_events_consumed_total')})", "consumed"),
        (f"sum({rate('clusterwatch_events_clustered_total')})", "clustered"),
        (f"sum({rate('clusterwatch_events_rejected_total')})", "rejected"),
        (f"sum({rate('clusterwatch_events_duplicate_total')})", "duplicates"),
    ], "ops", "Every message read is either clustered, rejected (dead-lettered) or a "
              "redelivery recognised as a duplicate."))
    g.add(timeseries("High-concern share by surface", [
        (per_surface_ratio("clusterwatch_surface_high_concern_total"), "{{surface}}"),
    ], "percentunit", "Share of each surface's clustered events judged high concern.", min_=0))
    g.add(timeseries("Refusal share by surface", [
        (per_surface_ratio("clusterwatch_surface_refusals_total"), "{{surface}}"),
    ], "percentunit", "Share of each surface's clustered events the assistant refused.", min_=0))

    g.row("Clusters")
    g.add(timeseries("Live clusters by level", [
        (f"sum by (kind) ({m('clusterwatch_live_clusters')})", "{{kind}}"),
    ], "short", "Micro-clusters in memory, and the topics and domains they group into."))
    g.add(timeseries("Clusters passing the privacy gate", [
        (f"sum({m('clusterwatch_visible_clusters')})", "visible"),
    ], "short", "Only these clusters can ever be shown or alerted on.", links=EXPLORER_LINK))
    g.add(timeseries("Cluster lifecycle", [
        (f"sum by (kind) ({rate('clusterwatch_cluster_lifecycle_events_total', fn='increase')})",
         "{{kind}}"),
    ], "short", "Micro-clusters born, merged, split and died per interval.", bars=True))
    g.add(timeseries("Event-time lag behind the wall clock", [
        (f"time() - max({m('clusterwatch_event_time_watermark_seconds')})", "lag"),
    ], "s", "How far the newest event the cluster stage has seen is behind now."))

    g.row("Alerts")
    g.add(timeseries("Open alerts by kind", [
        (f"sum by (kind, status) ({m('clusterwatch_open_alerts')})", "{{kind}} {{status}}"),
    ], "short", "Alerts pending or firing now.", stack=True))
    g.add(timeseries("Alert state changes", [
        (f"sum by (kind, severity, status) "
         f"({rate('clusterwatch_alerts_total', fn='increase')})",
         "{{kind}} {{severity}} {{status}}"),
    ], "short", "Alerts entering pending, firing or resolved per interval.", bars=True))
    return dashboard("overview", "clusterwatch / Overview",
                     "Traffic, clusters and alerts at a glance.", g)


def abuse():
    g = Grid()
    g.add(stat("Firing coordinated alerts",
               f"sum({m('clusterwatch_open_alerts', COORDINATED, FIRING)})", "short",
               "coordinated_cluster alerts firing now.",
               thresholds=[(None, "green"), (1, "red")]), 6, 4)
    g.add(stat("Pending coordinated alerts",
               f"sum({m('clusterwatch_open_alerts', COORDINATED, PENDING)})",
               "short", "Candidates waiting out hold_secs before they fire.",
               thresholds=[(None, "green"), (1, "orange")]), 6, 4)
    g.add(stat("Accounts in firing campaigns",
               f"sum({m('clusterwatch_open_alert_window_accounts', COORDINATED)})", "short",
               "Distinct accounts in the detector window, summed over firing coordinated "
               "alerts."), 6, 4)
    g.add(stat("Fastest campaign",
               f"max({m('clusterwatch_open_alert_accounts_per_minute', COORDINATED)})",
               "suffix: accounts/min",
               "New accounts per minute joining the fastest firing coordinated alert's cluster.",
               thresholds=[(None, "green"), (5, "red")]), 6, 4)

    g.row("Flagged clusters")
    g.add(table("Flagged k-anonymous clusters by kind and severity", [
        f"sum by (kind, severity) ({m('clusterwatch_open_alert_window_accounts')})",
        f"max by (kind, severity) ({m('clusterwatch_open_alert_accounts_per_minute')})",
    ], "short", [("Accounts in window", "short"), ("Fastest accounts/min", "suffix: /min")],
        "Firing alerts' evidence by kind and severity. Prometheus never sees a cluster id "
        "(privacy); open the explorer for the clusters themselves, shown only past the "
        "privacy gate.",
        sort_by="Accounts in window", links=EXPLORER_LINK, data_links=EXPLORER_LINK), 12, 8)
    g.add(timeseries("Accounts per minute, fastest firing alert", [
        (f"max by (kind, severity) ({m('clusterwatch_open_alert_accounts_per_minute')})",
         "{{kind}} {{severity}}"),
    ], "suffix: accounts/min", "Critical from 100 window accounts at 5 accounts/min."), 12, 8)
    g.add(timeseries("Accounts in firing alerts' windows", [
        (f"sum by (kind, severity) ({m('clusterwatch_open_alert_window_accounts')})",
         "{{kind}} {{severity}}"),
    ], "short", "Distinct accounts in the detector window, summed over firing alerts.",
        stack=True, links=EXPLORER_LINK))
    g.add(timeseries("Coordinated alerts open", [
        (f"sum by (status) ({m('clusterwatch_open_alerts', COORDINATED)})", "{{status}}"),
    ], "short", "Pending and firing coordinated_cluster alerts."))

    g.row("Alert history")
    g.add(timeseries("Alert state changes", [
        (f"sum by (kind, severity, status) "
         f"({rate('clusterwatch_alerts_total', fn='increase')})",
         "{{kind}} {{severity}} {{status}}"),
    ], "short", "Alerts entering pending, firing or resolved per interval.", bars=True))
    g.add(timeseries("Coordinated alerts fired, by severity", [
        (f"sum by (severity) ({rate('clusterwatch_alerts_total', COORDINATED, FIRING, fn='increase')})",
         "{{severity}}"),
    ], "short", "coordinated_cluster alerts that started firing or escalated per interval.",
        bars=True))
    return dashboard("abuse", "clusterwatch / Coordinated abuse",
                     "Coordinated-abuse alerts: what is firing, how large and fast, and a link "
                     "to the k-anonymous cluster explorer.", g,
                     extra_tags=["abuse"])


def launch():
    s = 'surface="$surface"'
    g = Grid()
    g.add(stat("New clusters since launch",
               f"sum({m('clusterwatch_launch_new_clusters', s)})", "short",
               "Clusters born after the surface's launch, mostly from the surface.",
               links=EXPLORER_LINK), 6, 4)
    g.add(stat("Topic-mix divergence",
               f"max({m('clusterwatch_launch_divergence', s)})", "suffix: bits",
               "Jensen-Shannon divergence of the surface's recent topic mix from its baseline "
               "(0 = same mix, 1 = disjoint)."), 6, 4)
    g.add(stat("High-concern share (now vs baseline)",
               f"max({m('clusterwatch_launch_concern_ratio', s)}) - "
               f"max({m('clusterwatch_launch_baseline_concern_ratio', s)})",
               "percentunit", "Positive: the surface draws more high-concern traffic than its "
               "baseline.", thresholds=[(None, "green"), (0.1, "red")]), 6, 4)
    g.add(stat("Launch alerts open",
               f"sum({m('clusterwatch_open_alerts', LAUNCH_KINDS)})", "short",
               "launch_new_cluster and launch_drift alerts pending or firing (every surface).",
               thresholds=[(None, "green"), (1, "orange")]), 6, 4)

    g.row("Drift")
    g.add(timeseries("Traffic on $surface", [
        (f"sum({rate('clusterwatch_events_clustered_total', s)})", "$surface"),
    ], "ops", "Clustered events per second from the surface."))
    g.add(timeseries("Topic-mix divergence from baseline", [
        (f"max({m('clusterwatch_launch_divergence', s)})", "divergence"),
    ], "suffix: bits", "launch_drift fires when this exceeds the bootstrap noise floor by "
                       "detect.launch.min_excess_divergence.", min_=0, max_=1))
    g.add(timeseries("New clusters since launch", [
        (f"sum({m('clusterwatch_launch_new_clusters', s)})", "new clusters"),
    ], "short", "Clusters born on the surface after launch (launch_new_cluster candidates).",
        links=EXPLORER_LINK))
    g.add(timeseries("Launch alerts", [
        (f"sum by (kind, status) ({m('clusterwatch_open_alerts', LAUNCH_KINDS)})",
         "{{kind}} {{status}}"),
    ], "short", "Open launch alerts, every surface (alerts carry no surface label)."))

    g.row("Concern and refusals against baseline")
    g.add(timeseries("High-concern share vs baseline", [
        (f"max({m('clusterwatch_launch_concern_ratio', s)})", "$surface"),
        (f"max({m('clusterwatch_launch_baseline_concern_ratio', s)})", "baseline"),
    ], "percentunit", "launch_drift fires on a rise of detect.launch.min_rate_increase.",
        min_=0, max_=1))
    g.add(timeseries("Refusal share vs baseline", [
        (f"max({m('clusterwatch_launch_refusal_ratio', s)})", "$surface"),
        (f"max({m('clusterwatch_launch_baseline_refusal_ratio', s)})", "baseline"),
    ], "percentunit", "launch_drift fires on a rise of detect.launch.min_rate_increase.",
        min_=0, max_=1))
    g.add(timeseries("High-concern and refusal share, live", [
        (f"sum({rate('clusterwatch_surface_high_concern_total', s)}) / "
         f"sum({rate('clusterwatch_events_clustered_total', s)})", "high concern"),
        (f"sum({rate('clusterwatch_surface_refusals_total', s)}) / "
         f"sum({rate('clusterwatch_events_clustered_total', s)})", "refused"),
    ], "percentunit", "Per-interval shares from the surface counters (the launch monitor's "
                      "figures above are over detect.launch.window_secs of event time).",
        min_=0))
    surface = {"name": "surface", "type": "query", "label": "Surface", "datasource": DS,
               "definition": "label_values(clusterwatch_events_clustered_total, surface)",
               "query": {"query": "label_values(clusterwatch_events_clustered_total, surface)",
                         "refId": "surface"},
               "includeAll": False, "multi": False, "refresh": 2, "sort": 1, "current": {}}
    return dashboard("launch", "clusterwatch / Launch monitor",
                     "A launched surface against its baseline: new clusters, topic drift, "
                     "concern and refusals ([[detect.launch.surfaces]]).", g,
                     extra_vars=[surface], extra_tags=["launch"])


def pipeline():
    g = Grid()
    requests = f"sum by (stage) ({rate('clusterwatch_stage_duration_seconds_count')})"
    errors = f"sum by (stage) ({rate('clusterwatch_stage_errors_total')})"
    g.add(stat("Kafka consumer lag",
               f"sum({m('clusterwatch_kafka_consumer_lag')})", "short",
               "Messages behind the end of the topic, all partitions.",
               thresholds=[(None, "green"), (10000, "orange"), (100000, "red")]), 6, 4)
    g.add(stat("Snapshot age",
               f"time() - max({m('clusterwatch_snapshot_last_success_timestamp_seconds')} > 0)",
               "s", "Since the last durable snapshot; offsets are committed only once a "
               "snapshot holds them. No data: snapshots are off, or none written yet.",
               thresholds=[(None, "green"), (300, "orange"), (900, "red")]), 6, 4)
    g.add(stat("Fallback summaries",
               f"sum({rate('clusterwatch_summaries_total', FALLBACK)}) / "
               f"sum({rate('clusterwatch_summaries_total')})", "percentunit",
               "Share of conversations summarized offline because the LLM failed.",
               thresholds=[(None, "green"), (0.05, "orange"), (0.25, "red")]), 6, 4)
    g.add(stat("Dead letters",
               f"sum({rate('clusterwatch_dead_letter_written_total')})", "ops",
               "Rejected messages written to the dead-letter topic per second."), 6, 4)

    g.row("RED per stage")
    g.add(timeseries("Rate by stage", [(requests, "{{stage}}")], "ops",
                     "Items through each stage per second (the stage histogram's count)."))
    g.add(timeseries("Error ratio by stage", [(f"{errors} / {requests}", "{{stage}}")],
                     "percentunit", "Errors per item handled, by stage.", min_=0))
    for q, name in (("0.5", "p50"), ("0.99", "p99")):
        g.add(timeseries(f"Duration {name} by stage", [
            (f"histogram_quantile({q}, sum by (stage, le) "
             f"({rate('clusterwatch_stage_duration_seconds_bucket')}))", "{{stage}}"),
        ], "s", "Time per item in each stage (embed: per batch member)."))
    g.add(timeseries("Errors by stage", [(errors, "{{stage}}")], "ops",
                     "Errors inside each stage per second."))

    g.row("Kafka and event time")
    g.add(timeseries("Consumer lag by partition", [
        (f"sum by (partition) ({m('clusterwatch_kafka_consumer_lag')})", "partition {{partition}}"),
    ], "short", "Messages behind the partition's end offset (librdkafka statistics).",
        stack=True))
    g.add(timeseries("Event-time lag behind the wall clock", [
        (f"time() - max({m('clusterwatch_event_time_watermark_seconds')})", "lag"),
    ], "s", "How far the newest clustered event is behind now."))

    g.row("Input, summaries, snapshots")
    g.add(timeseries("Rejected by reason", [
        (f"sum by (reason) ({rate('clusterwatch_events_rejected_total')})", "{{reason}}"),
    ], "ops", "Messages rejected per second by reason; each goes to the dead-letter topic.",
        stack=True))
    g.add(timeseries("Dead letters and duplicates", [
        (f"sum({rate('clusterwatch_dead_letter_written_total')})", "dead-lettered"),
        (f"sum({rate('clusterwatch_events_duplicate_total')})", "redeliveries"),
    ], "ops", "Dead-letter writes should match rejects."))
    g.add(timeseries("Summaries by kind", [
        (f"sum by (kind) ({rate('clusterwatch_summaries_total')})", "{{kind}}"),
    ], "ops", "llm, cached (redelivery), fallback (offline after the LLM failed), offline.",
        stack=True))
    g.add(timeseries("Fallback-summarizer ratio", [
        (f"sum({rate('clusterwatch_summaries_total', FALLBACK)}) / "
         f"sum({rate('clusterwatch_summaries_total')})", "fallback"),
    ], "percentunit", "Rising: the LLM is failing and the offline summarizer stands in.",
        min_=0, max_=1))
    g.add(timeseries("Snapshot age", [
        (f"time() - max({m('clusterwatch_snapshot_last_success_timestamp_seconds')} > 0)", "age"),
    ], "s", "Since the last durable snapshot."))
    g.add(timeseries("Heap: live and kept by the allocator", [
        (f"sum by (state) ({m('clusterwatch_allocator_bytes')})", "{{state}}"),
    ], "bytes", "in_use is live data (grows with live clusters); free is what the allocator "
        "keeps beyond it. A level in_use under a growing free is fragmentation, not a leak "
        "(RUNBOOK, OOMKilled)."))

    g.row("Alert delivery")
    g.add(timeseries("Alert deliveries and failures by sink", [
        (f"sum by ({SINK}) ({rate('clusterwatch_alert_deliveries_total')})",
         f"delivered {{{{{SINK}}}}}"),
        (f"sum by ({SINK}) ({rate('clusterwatch_alert_delivery_failures_total')})",
         f"failed {{{{{SINK}}}}}"),
    ], "ops", "Failures are retried with backoff; records wait in the sink's spool."))
    g.add(timeseries("Alert spool backlog by sink", [
        (f"sum by ({SINK}) ({m('clusterwatch_alert_spool_records')})", f"{{{{{SINK}}}}}"),
    ], "short", "Alert records waiting for delivery; growing means the endpoint is down."))
    return dashboard("pipeline", "clusterwatch / Pipeline health",
                     "RED per stage, Kafka lag, summarizer fallbacks, snapshots, rejects and "
                     "dead letters, alert delivery.", g, extra_tags=["pipeline"])


DASHBOARDS = [overview, abuse, launch, pipeline]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT,
                        help="directory to write the dashboards to (default: grafana/dashboards)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for make in DASHBOARDS:
        d = make()
        (args.out / f"{d['uid']}.json").write_text(json.dumps(d, indent=2) + "\n")


if __name__ == "__main__":
    main()
