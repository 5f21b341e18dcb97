"""``python -m fleetgate.cli``."""

from fleetgate.cli import main

main()
