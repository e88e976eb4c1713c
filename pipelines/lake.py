"""The Parquet lake: a local path or ``s3://`` URL, through pyarrow filesystems.

Files are written under a temporary name and renamed into place, so a reader (or a crash) never
sees half a file. Export state (watermarks) lives beside the data in ``_state/``.
"""

from __future__ import annotations

import contextlib
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
        """Write ``table`` to ``path`` atomically (temporary name, then rename), in row groups of
        pyarrow's default size. ``dictionary``: see :class:`LakeFileWriter`."""
        file = LakeFileWriter(self, path, table.schema, dictionary=dictionary)
        try:
            file.write(table, row_group_rows=None)
            file.commit()
        except BaseException:
            file.abort()
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


#: zstd at level 1: on the export's events (bench/bench_pipelines.py) levels 1 and 3 cost the same
#: CPU and level 3's files are 10% smaller, but both are a small part of the export, and lower
#: (negative) levels save no time and make files 1.2 to 3 times larger; snappy and lz4 save 15-20%
#: of the write's CPU for files four times larger.
COMPRESSION = "zstd"
COMPRESSION_LEVEL = 1
#: Data pages of Parquet's format 2 (levels outside the compressed values): 10-15% less of the
#: write's CPU and 10% smaller files than version 1 on the bench's events; DuckDB, Spark and
#: pyarrow read both.
DATA_PAGE_VERSION = "2.0"


class LakeFileWriter:
    """One Parquet file of the lake being written under a temporary name, row group by row group:
    :meth:`commit` renames it into place, :meth:`abort` (or a crash: see ``list_temporary``)
    leaves nothing a reader takes for a finished file.

    ``dictionary`` names the low-cardinality columns to dictionary-encode (``None``: every column);
    trying it on ids and JSON text only costs time (it is four times slower and makes larger files).
    ``delta`` names integer and timestamp columns to write with DELTA_BINARY_PACKED (never
    dictionary ones), ``statistics`` those whose min/max are written (``None``: every column).
    """

    def __init__(
        self,
        lake: Lake,
        path: str,
        schema: pa.Schema,
        *,
        dictionary: list[str] | None,
        delta: list[str] | None = None,
        statistics: list[str] | None = None,
    ) -> None:
        self.lake, self.path, self.rows = lake, path, 0
        self._closed = False
        directory = posixpath.dirname(path)
        lake.fs.create_dir(directory, recursive=True)
        self.temporary = posixpath.join(directory, f"{TEMPORARY_PREFIX}{uuid.uuid4().hex}.parquet")
        self._sink = lake.fs.open_output_stream(self.temporary)
        try:
            self._writer = pq.ParquetWriter(
                self._sink, schema, compression=COMPRESSION, compression_level=COMPRESSION_LEVEL,
                use_dictionary=dictionary if dictionary is not None else True,
                column_encoding=dict.fromkeys(delta, "DELTA_BINARY_PACKED") if delta else None,
                write_statistics=statistics if statistics is not None else True,
                data_page_version=DATA_PAGE_VERSION,
            )  # fmt: skip
        except BaseException:
            self._sink.close()
            self.lake.delete(self.temporary)
            raise

    def write(self, table: pa.Table, *, row_group_rows: int | None) -> None:
        """Append ``table`` in row groups of ``row_group_rows`` rows (``None``: pyarrow's default)."""
        self._writer.write_table(table, row_group_size=row_group_rows)
        self.rows += table.num_rows

    def close(self) -> None:
        """Finish the file under its temporary name (readers still skip it): :meth:`commit` then
        only renames it, which an export does in range order."""
        if not self._closed:
            self._writer.close()
            self._sink.close()
            self._closed = True

    def commit(self) -> None:
        self.close()
        self.lake.fs.move(self.temporary, self.path)

    def abort(self) -> None:
        """Give the file up (after an error): close it and delete the temporary name."""
        if not self._closed:
            with contextlib.suppress(Exception):  # the file is thrown away; the first error is what matters
                self._writer.close()
        try:
            self._sink.close()
        finally:
            self.lake.delete(self.temporary)
