"""Helpers for testing pipelines: failpoints, in-memory fakes."""
