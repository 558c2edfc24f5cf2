"""Pure video-analytics code: video sources, knobs, frame codec, DNN services,
generator and aggregator logic. Knows nothing of Flask, Celery or the database."""
