"""The media edge: the only place that knows what the user actually heard."""
