"""Prefect flows (orchestration only) and their tasks (one I/O step each)."""
