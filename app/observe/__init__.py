"""Seeing the service run: Prometheus metrics, text/JSON logs with usage records."""
