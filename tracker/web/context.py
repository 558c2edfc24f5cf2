"""What request handlers reach through `current_app.extensions["vdag"]`."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from flask import current_app

from services.settings import Settings

if TYPE_CHECKING:
    from tracker.runtime.job_control import JobControl
    from tracker.store import Store
    from tracker.store.recent_results import RecentResults
    from tracker.web.viewer.hub import ViewerHub


@dataclass
class TrackerContext:
    settings: Settings
    store: "Store"
    hub: "ViewerHub"
    control: "JobControl"  # every job state change goes through it
    recent: "RecentResults" = field(default_factory=lambda: _recent_results())


def _recent_results() -> "RecentResults":
    from tracker.store.recent_results import RecentResults

    return RecentResults()


def tracker_context() -> TrackerContext:
    return current_app.extensions["vdag"]
