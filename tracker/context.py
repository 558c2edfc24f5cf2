"""What request handlers reach through `current_app.extensions["vdag"]`."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from flask import current_app

from services.settings import Settings

if TYPE_CHECKING:
    from tracker.recent_results import RecentResults
    from tracker.store import Store
    from tracker.viewer.hub import ViewerHub


class JobControl(Protocol):
    """Side effects of API calls on running work; implemented by tracker.runtime."""

    def job_submitted(self, job_uid: str) -> None: ...  # plan now and start its generator

    def job_stopped(self, job_uid: str) -> None: ...  # cancel/delete: stop its generator

    def constraint_changed(self, job_uid: str) -> None: ...  # re-plan at once

    def plan_pushed(self, job_uid: str) -> None: ...  # a plan arrived over /node/update_plan


class NoJobControl:
    """For an API-only tracker (tests, tools): records calls, runs nothing."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def job_submitted(self, job_uid: str) -> None:
        self.calls.append(("submitted", job_uid))

    def job_stopped(self, job_uid: str) -> None:
        self.calls.append(("stopped", job_uid))

    def constraint_changed(self, job_uid: str) -> None:
        self.calls.append(("constraint", job_uid))

    def plan_pushed(self, job_uid: str) -> None:
        self.calls.append(("plan", job_uid))


@dataclass
class TrackerContext:
    settings: Settings
    store: "Store"
    hub: "ViewerHub"
    control: JobControl
    recent: "RecentResults" = field(default_factory=lambda: _recent_results())


def _recent_results() -> "RecentResults":
    from tracker.recent_results import RecentResults

    return RecentResults()


def tracker_context() -> TrackerContext:
    return current_app.extensions["vdag"]
