"""`vdag`: the one command line (`vdag up`, `vdag tracker`, `vdag worker`, `vdag profile`, `vdag db`)."""
from tracker.cli.main import main

__all__ = ["main"]
