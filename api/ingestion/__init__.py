"""Ingestion warnings: what the ingest path refused or changed, counted per org, key and reason."""
