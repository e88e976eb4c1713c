"""Keel's database layer: the declarative base and its metadata, engines and sessions, Alembic
migrations, the database roles. The tables live with their domains (``api/<domain>/models.py``,
gathered by :mod:`api.models`); nothing here imports a domain.
"""
