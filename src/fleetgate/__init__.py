"""fleetgate: plan, render, deploy and serve a small fleet of vLLM servers."""

__version__ = "0.1.0"
