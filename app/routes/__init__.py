"""One router per resource: try-on and health."""
