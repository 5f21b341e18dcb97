"""Prometheus and Grafana files for the fleet: ``monitoring/prometheus.yml`` scrapes the gateway
and every vLLM, ``monitoring/grafana-dashboard.json`` graphs both.

vLLM has renamed metrics between versions (``vllm:gpu_cache_usage_perc`` became
``vllm:kv_cache_usage_perc``; the V0 engine's throughput gauges gave way to token counters), and
dashboards written for one name go blank on the other. Every vLLM query here is written once per
name it has had, joined with ``or``, from one table (:data:`VLLM_FIGURES`); where a name never
changed it is queried as it is.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from fleetgate.fleetfile import Fleet, deployment_url, gateway_url, public_models
from fleetgate.render.source import Source, gateway_hash, header

PROMETHEUS_FILE = "monitoring/prometheus.yml"
DASHBOARD_FILE = "monitoring/grafana-dashboard.json"
SCRAPE_INTERVAL = "15s"
RATE = "5m"

# figure -> the queries it has had across vLLM versions, newest first; {by} and {rate} filled in
VLLM_FIGURES: dict[str, tuple[str, ...]] = {
    "running": ("sum by ({by}) (vllm:num_requests_running)",),
    "waiting": ("sum by ({by}) (vllm:num_requests_waiting)",),
    "kv_usage": (
        "max by ({by}) (vllm:kv_cache_usage_perc)",
        "max by ({by}) (vllm:gpu_cache_usage_perc)",
    ),
    "preemptions": ("sum by ({by}) (rate(vllm:num_preemptions_total[{rate}]))",),
    "prompt_tokens": (
        "sum by ({by}) (rate(vllm:prompt_tokens_total[{rate}]))",
        "sum by ({by}) (vllm:avg_prompt_throughput_toks_per_s)",
    ),
    "generation_tokens": (
        "sum by ({by}) (rate(vllm:generation_tokens_total[{rate}]))",
        "sum by ({by}) (vllm:avg_generation_throughput_toks_per_s)",
    ),
}


def vllm_query(figure: str, by: str = "deployment") -> str:
    """One figure under every name it has had: the first that has data answers."""
    return " or ".join(q.format(by=by, rate=RATE) for q in VLLM_FIGURES[figure])


def _target(url: str) -> str:
    """A scrape target is ``host:port``: the URL fleetfile builds, without its scheme."""
    return url.removeprefix("http://")


def _routes_of(fleet: Fleet) -> dict[str, str]:
    """Each deployment's routes (not profiles or aliases), comma-joined, for a label."""
    routes: dict[str, list[str]] = {}
    for pm in public_models(fleet).values():
        if pm.kind == "route":
            for d in pm.deployments:
                routes.setdefault(d, []).append(pm.name)
    return {d: ",".join(names) for d, names in routes.items()}


def render_prometheus(source: Source, scrape_interval: str = SCRAPE_INTERVAL) -> str:
    """A scrape config: the gateway (job ``fleetgate``) and each deployment's vLLM (job
    ``vllm``, labelled host, deployment and the routes it serves)."""
    fleet = source.fleet
    scrape: list[dict[str, Any]] = []
    gw = fleet.gateway
    if gw is not None:
        scrape.append(
            {
                "job_name": "fleetgate",
                "metrics_path": "/metrics",
                "static_configs": [
                    {
                        "targets": [_target(gateway_url(fleet))],
                        "labels": {"host": gw.host},
                    }
                ],
            }
        )
    routes = _routes_of(fleet)
    scrape.append(
        {
            "job_name": "vllm",
            "metrics_path": "/metrics",
            "static_configs": [
                {
                    "targets": [_target(deployment_url(fleet, name))],
                    "labels": {"host": dep.host, "deployment": name, "route": routes.get(name, "")},
                }
                for name, dep in fleet.deployments.items()
            ],
        }
    )
    config = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "scrape_configs": scrape,
    }
    head = header(source, "Prometheus scrape config", gateway_hash(source)) + "\n"
    return head + yaml.safe_dump(config, sort_keys=False, default_flow_style=False, width=100)


def _panel(
    title: str, unit: str, targets: list[tuple[str, str]], description: str = ""
) -> dict[str, Any]:
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
        "targets": [
            {
                "refId": chr(ord("A") + i),
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
                "expr": expr,
                "legendFormat": legend,
            }
            for i, (expr, legend) in enumerate(targets)
        ],
    }


def _quantiles(histogram: str, by: str) -> list[tuple[str, str]]:
    return [
        (
            f"histogram_quantile({q}, sum by (le, {by}) (rate({histogram}_bucket[{RATE}])))",
            f"{{{{{by}}}}} p{round(q * 100)}",
        )
        for q in (0.5, 0.95)
    ]


def dashboard_panels() -> list[tuple[str, list[dict[str, Any]]]]:
    """The dashboard's rows and panels (every query is a real PromQL expression)."""
    gateway = [
        _panel(
            "Requests by status",
            "reqps",
            [("sum by (status) (rate(fleetgate_requests_total[5m]))", "{{status}}")],
        ),
        _panel(
            "Refusals by reason",
            "reqps",
            [('sum by (reason) (rate(fleetgate_requests_total{reason!=""}[5m]))', "{{reason}}")],
            "Every answer that was not a 200, by the gateway's reason word.",
        ),
        _panel(
            "Queue depth",
            "short",
            [("sum by (lane) (fleetgate_queue_depth)", "{{lane}}")],
            "Requests waiting for a slot, per route or profile.",
        ),
        _panel(
            "Queue wait",
            "s",
            _quantiles("fleetgate_queue_wait_seconds", "lane"),
            "Time queued at the gateway for a slot (outcomes: admitted, timed_out, left).",
        ),
        _panel(
            "Slots in use",
            "short",
            [
                ("sum by (deployment) (fleetgate_in_flight)", "{{deployment}} in use"),
                ("sum by (deployment) (fleetgate_slots)", "{{deployment}} slots"),
            ],
        ),
        _panel(
            "Time to first token (gateway to backend)",
            "s",
            _quantiles("fleetgate_time_to_first_token_seconds", "deployment"),
            "Streamed requests, from sending upstream to the first byte back; queue wait is "
            "not included.",
        ),
        _panel(
            "Deployments up",
            "short",
            [("min by (deployment) (fleetgate_deployment_healthy)", "{{deployment}}")],
            "1 while the gateway's health checks pass.",
        ),
        _panel(
            "Tokens through the gateway",
            "short",
            [
                (
                    "sum by (lane, direction) (rate(fleetgate_tokens_total[5m]))",
                    "{{lane}} {{direction}}",
                )
            ],
        ),
    ]
    vllm = [
        _panel(
            "vLLM running / waiting",
            "short",
            [
                (vllm_query("running"), "{{deployment}} running"),
                (vllm_query("waiting"), "{{deployment}} waiting"),
            ],
        ),
        _panel("vLLM KV cache usage", "percentunit", [(vllm_query("kv_usage"), "{{deployment}}")]),
        _panel("vLLM preemptions", "short", [(vllm_query("preemptions"), "{{deployment}}")]),
        _panel(
            "vLLM tokens/s",
            "short",
            [
                (vllm_query("prompt_tokens"), "{{deployment}} prompt"),
                (vllm_query("generation_tokens"), "{{deployment}} generation"),
            ],
        ),
    ]
    return [("Gateway", gateway), ("vLLM backends", vllm)]


def render_dashboard(source: Source) -> str:
    """A Grafana dashboard (import it, pick the Prometheus data source)."""
    panels: list[dict[str, Any]] = []
    y = 0
    next_id = 1
    for row_title, row in dashboard_panels():
        panels.append(
            {
                "type": "row",
                "title": row_title,
                "id": next_id,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        next_id += 1
        y += 1
        for i, panel in enumerate(row):
            panel["id"] = next_id
            next_id += 1
            panel["gridPos"] = {"h": 8, "w": 12, "x": 12 * (i % 2), "y": y + 8 * (i // 2)}
            panels.append(panel)
        y += 8 * ((len(row) + 1) // 2)
    name = source.fleet.name or "fleet"
    digest = gateway_hash(source)
    dashboard = {
        "title": f"fleetgate: {name}",
        "uid": f"fleetgate-{name}"[:40],
        # JSON has no comments: the header, on one line, is the dashboard's description
        "description": " ".join(
            line.strip() for line in header(source, "Grafana dashboard", digest, "").splitlines()
        ),
        "tags": ["fleetgate", "vllm"],
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "time": {"from": "now-1h", "to": "now"},
        "refresh": "30s",
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "type": "datasource",
                    "query": "prometheus",
                    "label": "Prometheus",
                }
            ]
        },
        "panels": panels,
    }
    return json.dumps(dashboard, indent=2) + "\n"


def dashboard_queries(text: str) -> list[str]:
    """Every PromQL expression in a rendered dashboard (the tests run each one)."""
    return [t["expr"] for p in json.loads(text)["panels"] for t in p.get("targets", [])]


def render_monitoring(source: Source) -> dict[str, str]:
    """Both files, by their path under the render output directory."""
    return {PROMETHEUS_FILE: render_prometheus(source), DASHBOARD_FILE: render_dashboard(source)}
