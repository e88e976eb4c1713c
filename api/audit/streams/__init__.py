"""Audit log streams: an organization's audit entries delivered, in seq order, to its own SIEM or bucket.

``models`` (the table), ``secrets`` (destination credentials, encrypted), ``formats`` (Keel JSON,
OCSF), ``destinations`` (the wire protocols: https, Splunk HEC, Datadog logs, S3), ``services``
(managing streams), ``delivery`` (the worker's loop: one lease per stream), ``controllers``.
"""
