"""Planning: takes a job's DAG, live nodes, constraint and observations; returns plans.
Knows nothing of Flask or Celery, so every planner can run in the simulator."""
