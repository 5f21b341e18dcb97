"""docker compose: strings in YAML (quoted by the YAML writer) whose ``$`` compose interpolates.

A fleet-file ``${VAR}`` stays one, for compose to fill from the environment; a literal ``$``
becomes ``$$``.
"""

from __future__ import annotations

from fleetgate.render.quoting.common import parts


def word(value: str) -> str:
    return "".join(
        f"${{{text}}}" if is_ref else text.replace("$", "$$") for is_ref, text in parts(value)
    )
