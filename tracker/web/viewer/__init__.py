"""Live viewer: a fan-out hub of rendered JPEG frames and the MJPEG / HTML routes."""
