"""The Parquet lake: a local path or ``s3://`` URL, through pyarrow filesystems.

Files are written under a temporary name and renamed into place, so a reader (or a crash) never
sees half a file. Export state (watermarks) lives beside the data in ``_state/``.
"""

from __future__ import annotations

import json
import posixpath
import uuid
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from warehouse.storage import open_lake_storage

#: Files are written under this prefix, then renamed; readers skip such names (like Hive and Spark,
#: which treat files starting with "." as hidden).
TEMPORARY_PREFIX = ".tmp-"


def _is_temporary(path: str) -> bool:
    return posixpath.basename(path).startswith(TEMPORARY_PREFIX)


class LakeError(RuntimeError):
    """The lake cannot be reached or written."""


@dataclass(frozen=True)
class Lake:
    fs: pafs.FileSystem
    root: str
    url: str

    @classmethod
    def open(cls, url: str, *, create: bool = True, s3_endpoint: str | None = None) -> Lake:
        """The lake at ``url``: a local directory (made when ``create``) or ``s3://bucket/prefix``
        (the bucket must exist; ``s3_endpoint`` is ``KEEL_LAKE_S3_ENDPOINT``, see
        ``warehouse.storage``)."""
        try:
            storage = open_lake_storage(url, s3_endpoint=s3_endpoint)
            filesystem, root = storage.fs, storage.root
            if create and not storage.remote:
                filesystem.create_dir(root, recursive=True)
            bucket = root.split("/", 1)[0]
            if storage.remote and filesystem.get_file_info(bucket).type == pafs.FileType.NotFound:
                raise LakeError(f"the lake at {url} is unreachable: bucket {bucket!r} does not exist")
            info = filesystem.get_file_info(root)
            if create and info.type == pafs.FileType.NotFound and not storage.remote:
                raise LakeError(f"cannot create the lake at {url}")
        except (OSError, ValueError, pa.ArrowException) as exc:
            raise LakeError(f"the lake at {url} is unreachable: {exc}") from exc
        return cls(fs=filesystem, root=root.rstrip("/"), url=url)

    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def exists(self, path: str) -> bool:
        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    def list_files(self, prefix: str, suffix: str = ".parquet") -> list[str]:
        """The finished files under ``prefix``: never a temporary one still being written (or left
        by a writer that was killed), whose content may be cut short."""
        return [p for p in self._list(prefix, suffix) if not _is_temporary(p)]

    def list_temporary(self, prefix: str) -> list[str]:
        """Temporary files under ``prefix``: a write in progress, or one a killed process left."""
        return [p for p in self._list(prefix, "") if _is_temporary(p)]

    def _list(self, prefix: str, suffix: str) -> list[str]:
        selector = pafs.FileSelector(self.path(prefix), recursive=True, allow_not_found=True)
        return sorted(
            info.path
            for info in self.fs.get_file_info(selector)
            if info.type == pafs.FileType.File and info.path.endswith(suffix)
        )

    def write_parquet(self, table: pa.Table, path: str, *, dictionary: list[str] | None = None) -> None:
        """Write ``table`` to ``path`` atomically (temporary name, then rename).

        ``dictionary`` names the low-cardinality columns to dictionary-encode; trying it on ids and
        JSON text only costs time (it is four times slower and makes larger files).
        """
        directory = posixpath.dirname(path)
        self.fs.create_dir(directory, recursive=True)
        temporary = posixpath.join(directory, f"{TEMPORARY_PREFIX}{uuid.uuid4().hex}.parquet")
        try:
            with self.fs.open_output_stream(temporary) as sink:
                pq.write_table(
                    table, sink, compression="zstd", compression_level=1,
                    use_dictionary=dictionary if dictionary is not None else True,
                )  # fmt: skip
            self.fs.move(temporary, path)
        except BaseException:
            if self.exists(temporary):
                self.fs.delete_file(temporary)
            raise

    def read_json(self, path: str) -> Any:
        if not self.exists(path):
            return None
        with self.fs.open_input_stream(path) as source:
            return json.loads(source.read())

    def write_json(self, path: str, value: Any) -> None:
        directory = posixpath.dirname(path)
        self.fs.create_dir(directory, recursive=True)
        # Named after its target, so a later run can tell whose leftover it is (see remove_orphans).
        temporary = posixpath.join(
            directory, f"{TEMPORARY_PREFIX}{posixpath.basename(path)}.{uuid.uuid4().hex}"
        )
        with self.fs.open_output_stream(temporary) as sink:
            sink.write(json.dumps(value, indent=2, sort_keys=True).encode())
        self.fs.move(temporary, path)

    def delete(self, path: str) -> None:
        if self.exists(path):
            self.fs.delete_file(path)
