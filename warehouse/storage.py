"""Where the lake lives: a local directory or ``s3://bucket/prefix``, as a pyarrow filesystem.

Shared by the exporter (``pipelines.lake``) and the warehouse build, so both reach the same store
the same way. For ``s3://`` the endpoint is ``KEEL_LAKE_S3_ENDPOINT`` when set (any S3-compatible
store: MinIO, Ceph, R2, a test server), else the AWS SDK's own ``AWS_ENDPOINT_URL_S3`` or
``AWS_ENDPOINT_URL``, else AWS itself; credentials come from the AWS SDK's usual chain
(``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, a profile, an instance role) and the region from
``AWS_REGION`` or ``AWS_DEFAULT_REGION``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow.fs as pafs

S3_SCHEME = "s3://"


@dataclass(frozen=True)
class LakeStorage:
    """A lake URL resolved: the filesystem, the root path inside it, and how to name its files."""

    fs: pafs.FileSystem
    root: str
    #: What a path inside ``fs`` is prefixed with to make a URL (``s3://``; empty for local paths).
    scheme: str = ""

    @property
    def remote(self) -> bool:
        return bool(self.scheme)

    def url_of(self, path: str) -> str:
        return f"{self.scheme}{path}"


def open_lake_storage(url: str, *, s3_endpoint: str | None = None) -> LakeStorage:
    """Resolve ``url`` (a local path or ``s3://bucket/prefix``) to a filesystem and root."""
    if not url.startswith(S3_SCHEME):
        return LakeStorage(fs=pafs.LocalFileSystem(), root=str(Path(url).resolve()))
    parsed = urlparse(url)
    if not parsed.netloc:
        raise ValueError(f"{url!r} names no bucket: expected s3://bucket/prefix")
    options: dict[str, Any] = {}
    endpoint = s3_endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        scheme, netloc = split_endpoint(endpoint)
        options["endpoint_override"] = netloc
        options["scheme"] = scheme
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        options["region"] = region
    root = f"{parsed.netloc}{parsed.path}".rstrip("/")
    return LakeStorage(fs=pafs.S3FileSystem(**options), root=root, scheme=S3_SCHEME)


def split_endpoint(endpoint: str) -> tuple[str, str]:
    """``http://host:port`` → (``http``, ``host:port``); a bare ``host:port`` means https."""
    parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
    if parsed.scheme not in {"http", "https"} or not parsed.netloc or parsed.path.strip("/"):
        raise ValueError(f"an S3 endpoint is http(s)://host[:port], not {endpoint!r}")
    return parsed.scheme, parsed.netloc
