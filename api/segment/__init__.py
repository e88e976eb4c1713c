"""Segment's HTTP Tracking API under ``/segment``: the wire format, translated onto Keel's one
ingest path (:mod:`api.events.services`)."""
