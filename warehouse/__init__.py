"""The DuckDB warehouse: staging views over the lake, marts from SQL files, typed queries.

Imports neither ``api`` nor ``pipelines``: it knows the lake only by its layout.
"""
