"""The node table's reads and writes (registration, heartbeats, liveness), mixed into Store."""
from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any, Iterable

from sqlalchemy import delete, select, update

from tracker.store.models import NodeRow, utcnow
from tracker.store.records import NodeRecord, node_from_row

log = logging.getLogger(__name__)

NODE_ROLES = ("host", "edge", "cloud")


class NodeTable:
    """Needs the Store's `_sessions` and `_insert`."""

    def upsert_node(
        self,
        name: str,
        role: str,
        ip: str,
        address: str,
        video_sources: Iterable[dict[str, Any]] = (),
        services: Iterable[str] = (),
        resources: dict[str, Any] | None = None,
    ) -> NodeRecord:
        """Register (or re-register) a node; it is alive from now."""
        if role not in NODE_ROLES:
            raise ValueError(f"role must be one of {', '.join(NODE_ROLES)}, got {role!r}")
        values = {
            "name": name, "role": role, "ip": ip, "address": address,
            "video_sources": [dict(v) for v in video_sources], "services": list(services),
            "resources": dict(resources or {}), "last_heartbeat": utcnow(), "alive": True,
        }
        stmt = self._insert(NodeRow).values(**values)
        stmt = stmt.on_conflict_do_update(index_elements=["name"], set_={k: v for k, v in values.items() if k != "name"})
        with self._sessions.writer() as s, s.begin():
            s.execute(stmt)
            return node_from_row(s.get(NodeRow, name, populate_existing=True))

    def heartbeat(self, name: str, resources: dict[str, Any] | None = None, now: datetime | None = None) -> bool:
        """Mark a node alive at `now` (default: now; merging `resources`); False if it never registered."""
        with self._sessions.writer() as s, s.begin():
            row = s.get(NodeRow, name, with_for_update=True)
            if row is None:
                return False
            if resources:
                row.resources = {**(row.resources or {}), **resources}
            row.last_heartbeat, row.alive = now or utcnow(), True
            return True

    def get_node(self, name: str) -> NodeRecord | None:
        with self._sessions.reader() as s:
            row = s.get(NodeRow, name)
            return node_from_row(row) if row else None

    def node_by_address(self, address: str) -> NodeRecord | None:
        """The node whose API answers at "ip:port" (the seed's node_addr)."""
        with self._sessions.reader() as s:
            row = s.scalars(select(NodeRow).where(NodeRow.address == address).order_by(NodeRow.name).limit(1)).first()
            return node_from_row(row) if row else None

    def list_nodes(self, alive_only: bool = False) -> list[NodeRecord]:
        """All registered nodes by name; `.info()` gives the planner's NodeInfo."""
        stmt = select(NodeRow).order_by(NodeRow.name)
        if alive_only:
            stmt = stmt.where(NodeRow.alive.is_(True))
        with self._sessions.reader() as s:
            return [node_from_row(r) for r in s.scalars(stmt)]

    def mark_stale_nodes(self, max_age_s: float, now: datetime | None = None) -> list[str]:
        """Mark alive nodes without a heartbeat for max_age_s before `now` as down; returns their names."""
        cutoff = (now or utcnow()) - timedelta(seconds=max_age_s)
        with self._sessions.writer() as s, s.begin():
            names = list(s.scalars(
                select(NodeRow.name).where(NodeRow.alive.is_(True), NodeRow.last_heartbeat < cutoff).with_for_update()
            ))
            if names:
                s.execute(update(NodeRow).where(NodeRow.name.in_(names)).values(alive=False))
                log.warning("nodes down (no heartbeat for %.0f s): %s", max_age_s, ", ".join(names))
            return names

    def delete_node(self, name: str) -> bool:
        with self._sessions.writer() as s, s.begin():
            return bool(s.execute(delete(NodeRow).where(NodeRow.name == name)).rowcount)
