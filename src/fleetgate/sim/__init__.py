"""A vLLM-compatible server without a model, for fast tests, demos, and load and fault tests.

Its routes, error bodies, streaming and metrics follow vLLM 0.32 (checked against a real vLLM by
``tests/test_conformance.py``); its scheduler follows vLLM's: at most ``max_num_seqs`` running,
an unbounded waiting queue, KV cache in 16-token blocks.
"""

from fleetgate.sim.config import BLOCK_SIZE, Faults, SimConfig
from fleetgate.sim.engine import EngineStats
from fleetgate.sim.server import SimServer
from fleetgate.sim.tokenizer import SimTokenizer

__all__ = [
    "BLOCK_SIZE",
    "EngineStats",
    "Faults",
    "SimConfig",
    "SimServer",
    "SimTokenizer",
]
