"""A bigger local fleet for the live views: 10 routes, 20 simulated deployments on 4 hosts."""

from __future__ import annotations

from typing import Any

from fleetgate.fleetfile import Fleet

OWNER_KEY = "sk-views-owner-0001"
ADMIN_KEY = "admin-views-0002"
MODEL = "Qwen/Qwen2.5-7B-Instruct-AWQ"


def views_fleet(routes: int = 10, per_route: int = 2, hosts: int = 4) -> Fleet:
    """``routes`` routes of ``per_route`` deployments each, spread over ``hosts`` hosts; one
    profile on the first route. Health is checked every 0.3 s so a dead backend shows fast."""
    names = [f"r{r:02d}-d{d}" for r in range(routes) for d in range(per_route)]
    host_names = [f"gpu-box-{h}" for h in range(hosts)]
    doc: dict[str, Any] = {
        "version": 1,
        "name": "views",
        "hosts": {
            h: {"address": "127.0.0.1", "transport": "local", "gpus": ["RTX 3090"]}
            for h in host_names
        },
        "deployments": {
            name: {
                "host": host_names[i % hosts],
                "port": 8000 + i,
                "model": MODEL,
                "quantization": "awq",
                "served_model_name": name,
                "max_model_len": 4096,
                "max_num_seqs": 2,
            }
            for i, name in enumerate(names)
        },
        "gateway": {
            "host": host_names[0],
            "port": 4000,
            "api_keys": [{"name": "owner", "key": OWNER_KEY}],
            "admin_key": ADMIN_KEY,
            "health": {"interval_s": 0.3, "timeout_s": 3.0, "unhealthy_after": 2},
            "routes": {
                f"route-{r:02d}": {
                    "deployments": names[r * per_route : (r + 1) * per_route],
                    "max_output_tokens": 64,
                    "concurrency": 1,
                    "queue_depth": 8,
                    **({"profiles": {"route-00-burst": {"queue_depth": 32}}} if r == 0 else {}),
                }
                for r in range(routes)
            },
        },
    }
    return Fleet.model_validate(doc)
