"""What runs jobs on a tracker, in rooms: generators (what an edge runs too), the aggregator,
the node-load estimator, planning inputs, and job control (every state transition)."""
from tracker.runtime.runtime import Runtime

__all__ = ["Runtime"]
