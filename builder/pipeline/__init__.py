"""The face's parts: one build from a checked request to its outputs (used by builder.api)."""
