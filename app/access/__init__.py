"""Who may use the service and how much: API keys (keys, guard) and fair-use limits (limits)."""
