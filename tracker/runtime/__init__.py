"""What runs jobs on a tracker, in rooms: generators (what an edge runs too), the aggregator,
the node-load estimator, planning inputs, and job control (every state transition).

Nothing is imported here: the API front imports job control and the resume rules alone; the
rest (the aggregator pulls in Celery and scipy) is only for the process that runs jobs."""
