"""Floodgate built-in plugins. Each imports only the public ``proxy`` API."""
