"""The job store (SQLAlchemy over SQLite or PostgreSQL, Alembic-migrated), the job model and
its state machine, and the in-memory cache of each job's newest results."""
from tracker.store.store import JobEnded, JobExists, NodeRecord, Store, StoredPlan, new_job_uid

__all__ = ["JobEnded", "JobExists", "NodeRecord", "Store", "StoredPlan", "new_job_uid"]
