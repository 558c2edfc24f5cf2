"""The HTTP side of a tracker: the Flask app, the native and seed APIs, the :5500 service API,
the viewer, metrics, errors and auth. Handlers change jobs only through tracker.runtime.job_control."""
