"""The root of fleetgate's own exceptions.

Every failure the project raises on purpose (a bad fleet file, an unknown model, a host that
refuses a deploy, ...) derives from :class:`FleetgateError`, so the CLI can print it as one
line and exit 1 while a real bug still shows its traceback.
"""

from __future__ import annotations


class FleetgateError(Exception):
    """A failure fleetgate reports to the user (as opposed to a bug)."""
