"""Celery side: the app, node queues, the stage task, result and ack consumers."""
