"""The job tracker: Flask app, job store and state machine, scheduler wiring, CLI.
Nothing outside this package imports it."""
