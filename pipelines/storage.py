"""Atomic writes and shard-wise reads (paths come from ``pipelines.layout``).

Every table is written under a temporary name or in a staging folder and renamed into place only
when it is complete, so a failed run never leaves a half-written file or replaces the last good one.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np
import polars as pl

from pipelines.layout import DATA_ROOT_ENV, DatasetLayout, default_data_root  # noqa: F401

DatasetPaths = DatasetLayout  # every path of a dataset: pipelines.layout

# Scratch tables that one stage writes and reads back itself (never published): lz4 writes and reads
# faster than the default zstd (a 20M-row parsed table: 3.3 s vs 4.5 s to write, 0.8 s vs 1.2 s to
# read back) at 1.5x the size on disk, which a scratch file can afford.
SCRATCH_COMPRESSION = "lz4"


def has_raw_files(raw_dir: Path) -> bool:
    return raw_dir.is_dir() and any(p.is_file() and not p.name.startswith(".") for p in raw_dir.iterdir())


def write_frame(frame: pl.DataFrame, path: Path) -> None:
    """Write ``frame`` as parquet whose bytes depend only on its values (callers write into a staging
    folder or a temporary name). polars lays the pages out chunk by chunk, and a streaming collect
    splits its result into chunks that vary from run to run, so the frame is made one chunk first
    (free when it is already one)."""
    frame.rechunk().write_parquet(path)


def write_parquet_atomic(frame: pl.DataFrame | pl.LazyFrame, path: Path) -> Path:
    """Write one parquet file via a temporary name in the same folder, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        if isinstance(frame, pl.LazyFrame):
            frame.sink_parquet(tmp, engine="streaming")
        else:
            write_frame(frame, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def file_identity(path: Path) -> dict[str, object]:
    """Size and a hash of the last 64 KiB (a parquet file's footer: every row group's offsets,
    compressed sizes and statistics) of a file: what a stage records of the inputs it read, to
    know next time whether they are still the same files. Content only (no modification time), so
    the same inputs give the same state bytes, and a copy of a file is the same file."""
    import hashlib

    size = path.stat().st_size
    with path.open("rb") as f:
        f.seek(max(0, size - (1 << 16)))
        tail = hashlib.sha256(f.read()).hexdigest()
    return {"size": size, "tail_sha256": tail}


def write_bytes_atomic(data: bytes, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _npy_header(dtype: "np.dtype", shape: tuple[int, ...]) -> bytes:
    """The ``.npy`` header ``np.lib.format.write_array`` writes for a C-ordered array (version 1.0,
    or 2.0 when the header is too long for 1.0)."""
    import io

    import numpy as np

    d = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": tuple(shape)}
    buf = io.BytesIO()
    try:
        np.lib.format.write_array_header_1_0(buf, d)
    except ValueError:
        buf = io.BytesIO()
        np.lib.format.write_array_header_2_0(buf, d)
    return buf.getvalue()


def _npz_member(name: str):
    import zipfile

    return zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))


@dataclass(frozen=True)
class ArrayBlocks:
    """An array given as blocks along its first axis, for ``write_npz_atomic`` to write without
    holding it: ``shape`` is the whole array's, ``blocks()`` yields C-ordered blocks of ``dtype``
    whose rows add up to ``shape[0]``."""

    dtype: "np.dtype"
    shape: tuple[int, ...]
    blocks: Callable[[], Iterable["np.ndarray"]]

    def write(self, f) -> None:
        """The ``.npy`` bytes of the concatenated blocks, block by block."""
        f.write(_npy_header(self.dtype, self.shape))
        rows = 0
        for block in self.blocks():
            if block.dtype != self.dtype or block.shape[1:] != tuple(self.shape[1:]):
                raise ValueError(f"block is {block.dtype}{list(block.shape[1:])}, declared "
                                 f"{np.dtype(self.dtype)}{list(self.shape[1:])}")
            if block.size:
                f.write(memoryview(np.ascontiguousarray(block)).cast("B"))
            rows += block.shape[0]
        if rows != self.shape[0]:
            raise ValueError(f"blocks hold {rows} rows, declared {self.shape[0]}")


def write_npz_atomic(arrays: Mapping[str, "np.ndarray | Callable[[], np.ndarray] | ArrayBlocks"],
                     path: Path) -> Path:
    """``np.savez`` layout (``np.load`` reads it), but with fixed zip timestamps: same arrays, same bytes.

    A value may be a function returning the array: it is called when that array is written, so only
    one such array is in memory at a time; or ``ArrayBlocks``, written block by block."""
    import zipfile

    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name, arr in arrays.items():
                with zf.open(_npz_member(name), "w", force_zip64=True) as f:
                    if isinstance(arr, ArrayBlocks):
                        arr.write(f)
                    else:
                        np.lib.format.write_array(f, np.asanyarray(arr() if callable(arr) else arr),
                                                  allow_pickle=False)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


@dataclass(frozen=True)
class NpzMember:
    """Where one array of an uncompressed ``.npz`` lies in the file: ``rows(a, b)`` reads rows
    [a, b) with one positioned read, without loading the rest of the array."""

    path: Path
    offset: int
    dtype: "np.dtype"
    shape: tuple[int, ...]

    def __len__(self) -> int:
        return self.shape[0]

    def rows(self, start: int, stop: int, buffer: "np.ndarray | None" = None) -> "np.ndarray":
        """Rows [start, stop). With ``buffer`` (a flat array of this dtype, large enough), they are
        read into it and the result is a view of it: a caller reading many blocks reuses one buffer
        instead of faulting in fresh pages for every block."""
        start, stop = max(0, start), min(stop, self.shape[0])
        tail = tuple(self.shape[1:])
        per_row = int(np.prod(tail, dtype=np.int64))
        if stop <= start or per_row == 0:
            return np.empty((max(0, stop - start), *tail), self.dtype)
        count = (stop - start) * per_row
        offset = self.offset + start * per_row * self.dtype.itemsize
        if buffer is None:
            return np.fromfile(self.path, dtype=self.dtype, count=count, offset=offset).reshape(-1, *tail)
        if buffer.dtype != self.dtype or buffer.size < count:
            raise ValueError(f"buffer of {buffer.size} {buffer.dtype} for {count} {self.dtype}")
        out = buffer[:count]
        with open(self.path, "rb") as f:
            f.seek(offset)
            if f.readinto(memoryview(out).cast("B")) != out.nbytes:
                raise ValueError(f"{self.path.name}: fewer bytes than the array's header says")
        return out.reshape(-1, *tail)


def npz_members(path: Path) -> dict[str, NpzMember]:
    """The arrays of an uncompressed ``.npz`` (``write_npz_atomic``, ``NpzAppender``, ``np.savez``),
    in the archive's order, located but not read: a reader that needs a range of rows of each (the
    shard merge) reads only those."""
    import struct
    import zipfile

    out: dict[str, NpzMember] = {}
    with zipfile.ZipFile(path) as zf, open(path, "rb") as f:
        for info in zf.infolist():
            if info.compress_type != zipfile.ZIP_STORED or not info.filename.endswith(".npy"):
                raise ValueError(f"{path.name}: member {info.filename} is not a stored .npy array")
            f.seek(info.header_offset)
            local = f.read(30)
            if local[:4] != b"PK\x03\x04":
                raise ValueError(f"{path.name}: no local header for {info.filename}")
            name_len, extra_len = struct.unpack("<HH", local[26:30])
            f.seek(info.header_offset + 30 + name_len + extra_len)
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(f)
            name = info.filename[:-len(".npy")]
            if dtype.hasobject or (fortran and len(shape) > 1):
                raise ValueError(f"{path.name}: {name} is not a C-ordered array of plain values")
            out[name] = NpzMember(path, f.tell(), dtype, tuple(shape))
    return out


class NpzAppender:
    """Write an ``.npz`` from blocks of rows without holding the arrays: the same bytes as
    ``write_npz_atomic`` of the blocks concatenated along the first axis.

    >>> with NpzAppender(path, rows=n) as out:
    ...     for shard in shards:
    ...         out.append({"items": items_of(shard), "lengths": lengths_of(shard)})

    With ``rows`` (every array's total rows, known in advance), each block is written straight to
    its place in the archive, whose layout the first block's dtypes and shapes fix; the zip headers
    come last. Without it, each array's blocks go to a scratch file beside ``path`` and the archive
    is assembled from them on close, which writes every byte twice (at 20M Taobao rows the session
    protocol's two 1.5 GB archives took 2.3x as long that way). Memory stays at one block, whatever
    the total (the model-ready arrays of Taobao's 100M events are about 15 GB). A failure inside
    the block, or a total other than ``rows``, leaves no file and keeps any previous one.
    """

    CHUNK = 64 << 20

    def __init__(self, path: Path, rows: int | None = None) -> None:
        self.path = path
        self.expected_rows = rows
        self._token = uuid.uuid4().hex
        self._parts: dict[str, tuple[Path, "np.dtype", tuple[int, ...]]] = {}
        self._rows: dict[str, int] = {}
        self._files: dict[str, object] = {}
        self._direct: dict[str, _DirectMember] = {}
        self._fd: int | None = None

    @property
    def _tmp(self) -> Path:
        return self.path.with_name(f".{self.path.name}.{self._token}.tmp")

    def __enter__(self) -> "NpzAppender":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return self

    def append(self, arrays: dict[str, "np.ndarray"]) -> None:
        import numpy as np

        arrays = {name: np.ascontiguousarray(arr) for name, arr in arrays.items()}
        if self.expected_rows is not None:
            self._append_direct(arrays)
            return
        for name, arr in arrays.items():
            if name not in self._parts:
                part = self.path.with_name(f".{self.path.name}.{self._token}.{len(self._parts)}.part")
                self._parts[name] = (part, arr.dtype, arr.shape[1:])
                self._rows[name] = 0
                self._files[name] = part.open("wb")
            _, dtype, tail = self._parts[name]
            self._check(name, arr, dtype, tail)
            self._files[name].write(arr.tobytes())
            self._rows[name] += arr.shape[0]

    def _check(self, name: str, arr: "np.ndarray", dtype: "np.dtype", tail: tuple[int, ...]) -> None:
        if arr.dtype != dtype or arr.shape[1:] != tail:
            raise ValueError(f"{self.path.name}: block of '{name}' is {arr.dtype}{list(arr.shape[1:])}, "
                             f"earlier blocks {dtype}{list(tail)}")

    def _append_direct(self, arrays: dict[str, "np.ndarray"]) -> None:
        import zlib

        if self._fd is None:  # the first block fixes each member's place: header, .npy header, rows
            self._fd = os.open(self._tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            offset = 0
            for name, arr in arrays.items():
                m = _DirectMember.at(name, arr, self.expected_rows, offset)
                self._direct[name] = m
                self._rows[name] = 0
                offset = m.end
            if offset and hasattr(os, "posix_fallocate"):
                # the blocks reserved at once: on ext4 the writes are faster, and renaming the
                # archive over a previous one no longer allocates them then (1.6 s against 2.9 s
                # for 1.6 GB written and renamed over an older file, on this machine)
                os.posix_fallocate(self._fd, 0, offset)
        for name, arr in arrays.items():
            m = self._direct.get(name)
            if m is None:
                raise ValueError(f"{self.path.name}: array '{name}' was not in the first block")
            self._check(name, arr, m.dtype, m.tail)
            if self._rows[name] + arr.shape[0] > self.expected_rows:
                raise ValueError(f"{self.path.name}: '{name}' gets more than the {self.expected_rows:,} rows declared")
            if arr.size:
                data = memoryview(arr).cast("B")
                os.pwrite(self._fd, data, m.data + m.written)
                m.written += len(data)
                m.crc = zlib.crc32(data, m.crc)
            self._rows[name] += arr.shape[0]

    @property
    def rows(self) -> dict[str, int]:
        return dict(self._rows)

    def __exit__(self, exc_type, exc, tb) -> None:
        import zipfile

        tmp = self._tmp
        try:
            for f in self._files.values():
                f.close()
            if self._fd is not None:
                try:
                    if exc_type is None:
                        self._finish_direct()
                finally:
                    os.close(self._fd)
            elif exc_type is None:
                if self.expected_rows:
                    raise ValueError(f"{self.path.name}: no rows written, {self.expected_rows:,} declared")
                with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
                    for name, (part, dtype, tail) in self._parts.items():
                        with zf.open(_npz_member(name), "w", force_zip64=True) as out, part.open("rb") as src:
                            out.write(_npy_header(dtype, (self._rows[name], *tail)))
                            shutil.copyfileobj(src, out, self.CHUNK)
                        part.unlink()
            if exc_type is None:
                os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)
            for part, _, _ in self._parts.values():
                part.unlink(missing_ok=True)

    def _finish_direct(self) -> None:
        """Each member's local header (now that its CRC is known), then the central directory, as
        ``zipfile`` writes them for a member opened with ``force_zip64``."""
        import zipfile

        short = {n: r for n, r in self._rows.items() if r != self.expected_rows}
        if short:
            raise ValueError(f"{self.path.name}: {short} rows written, {self.expected_rows:,} declared")
        infos = []
        for m in self._direct.values():
            info = m.info()
            os.pwrite(self._fd, info.FileHeader(True), m.offset)
            os.pwrite(self._fd, m.npy_header, m.data - len(m.npy_header))
            infos.append(info)
        end = max((m.end for m in self._direct.values()), default=0)
        with os.fdopen(os.dup(self._fd), "r+b") as f:
            f.seek(end)
            with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
                for info in infos:  # what closing each member's writer records
                    zf.filelist.append(info)
                    zf.NameToInfo[info.filename] = info


@dataclass
class _DirectMember:
    """Where one array of a directly written ``.npz`` lies: its local header at ``offset``, its
    ``.npy`` header just before ``data``; ``crc`` covers the header and the bytes written so far."""

    name: str
    dtype: "np.dtype"
    tail: tuple[int, ...]
    offset: int
    npy_header: bytes
    data: int
    size: int  # the .npy bytes: header and data
    crc: int
    written: int = 0

    @classmethod
    def at(cls, name: str, arr: "np.ndarray", rows: int, offset: int) -> "_DirectMember":
        import zlib

        header = _npy_header(arr.dtype, (rows, *arr.shape[1:]))
        blank = _npz_member(name)
        blank.CRC = blank.compress_size = 0
        local = len(blank.FileHeader(True))  # with zip64 its length does not depend on sizes or CRC
        nbytes = rows * arr.dtype.itemsize * int(np.prod(arr.shape[1:], dtype=np.int64))
        return cls(name, arr.dtype, tuple(arr.shape[1:]), offset, header, offset + local + len(header),
                   len(header) + nbytes, zlib.crc32(header))

    @property
    def end(self) -> int:
        return self.data - len(self.npy_header) + self.size

    def info(self):
        info = _npz_member(self.name)
        info.flag_bits, info.external_attr = 0, 0o600 << 16  # as zipfile's writer sets them
        info.header_offset, info.CRC = self.offset, self.crc
        info.file_size = info.compress_size = self.size
        return info


def write_text_atomic(text: str, path: Path) -> Path:
    return write_bytes_atomic(text.encode(), path)


class StagedOutputs:
    """Collect a stage's files in a staging folder; publish them together on success.

    >>> with StagedOutputs(out_dir) as staged:
    ...     write_frame(df, staged.path("events.parquet"))
    ...     staged.publish()
    Leaving the block without ``publish()`` (e.g. on an exception) deletes the staging folder and
    leaves the previous outputs untouched.
    """

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.staging = out_dir.parent / f".{out_dir.name}.staging-{uuid.uuid4().hex[:12]}"
        self._published = False

    def __enter__(self) -> "StagedOutputs":
        self.staging.mkdir(parents=True)
        return self

    def path(self, name: str) -> Path:
        return self.staging / name

    def publish(self) -> dict[str, Path]:
        """Rename every staged file into the output folder; files not staged this time are kept."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        published = {}
        for f in sorted(self.staging.iterdir()):
            if f.name.startswith("_"):  # scratch files, never published
                continue
            target = self.out_dir / f.name
            os.replace(f, target)
            published[f.name] = target
        self._published = True
        return published

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)


class VersionedOutputs(StagedOutputs):
    """Publish a stage's files as ONE unit: a version folder switched in by one atomic rename.

    ``out_dir`` is a symbolic link to the current version folder (``.<name>.v-<id>`` beside it).
    The files are written into a new version folder; ``publish()`` deletes scratch files (``_*``),
    writes ``_manifest.json`` (every file with its size), and replaces the link in one
    ``os.replace``. A reader of ``out_dir`` therefore sees the old set of files or the new set, never
    a mix, whatever moment a run is killed at. The previous version is kept (a reader that resolved
    the link just before the switch still finds its files); older versions and the staging folders
    of killed runs are removed by the next run, which holds the dataset lock (``pipelines.locks``).
    """

    MANIFEST = "_manifest.json"

    def __init__(self, out_dir: Path) -> None:
        super().__init__(out_dir)
        self.version = uuid.uuid4().hex[:12]
        self.staging = out_dir.parent / f".{out_dir.name}.v-{self.version}"

    def publish(self) -> dict[str, Path]:
        import json

        for f in self.staging.iterdir():
            if f.name.startswith("_"):
                shutil.rmtree(f) if f.is_dir() else f.unlink()
        files = {f.name: f.stat().st_size for f in sorted(self.staging.iterdir())}
        # the folder name is the version; the manifest holds content only (same inputs, same bytes)
        (self.staging / self.MANIFEST).write_text(json.dumps({"files": files}, indent=1) + "\n")
        previous = os.readlink(self.out_dir) if self.out_dir.is_symlink() else None
        if self.out_dir.exists() and not self.out_dir.is_symlink():  # a folder from before versioning
            legacy = self.out_dir.parent / f".{self.out_dir.name}.v-legacy-{self.version}"
            os.replace(self.out_dir, legacy)
            previous = legacy.name
        link = self.out_dir.parent / f".{self.out_dir.name}.link-{self.version}"
        os.symlink(self.staging.name, link)
        os.replace(link, self.out_dir)  # the one switch
        self._published = True
        self._prune(keep={self.staging.name, previous or ""})
        return {name: self.out_dir / name for name in files}

    def _prune(self, keep: set[str]) -> None:
        for p in self.out_dir.parent.glob(f".{self.out_dir.name}.*"):
            if p.name not in keep:
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)

    def __enter__(self) -> "VersionedOutputs":
        super().__enter__()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._published:
            shutil.rmtree(self.staging, ignore_errors=True)


def current_version(out_dir: Path) -> str | None:
    """The version id a versioned stage folder points at (None for a plain folder)."""
    return os.readlink(out_dir).rsplit(".v-", 1)[-1] if out_dir.is_symlink() else None


# Columns whose row-group statistics (min/max) the appended tables keep: every such table is ordered
# by user and read in user ranges (``read_user_range`` skips row groups by them), and time filters
# may use the timestamps. Statistics on the other columns (ids, event order, the model-ready arrays'
# values) were a quarter of the write time of a 5M-row events shard and no reader used them.
STATISTICS_COLUMNS = ("user_id", "timestamp")


class ParquetAppender:
    """Append frames to one parquet file as row groups; the file appears (atomically) on close.

    >>> with ParquetAppender(path) as out:
    ...     for shard in shards:
    ...         out.write(frame_of(shard))
    A failure inside the block leaves no file and keeps any previous one.
    """

    def __init__(self, path: Path, metadata: dict[str, str] | None = None, row_group_size: int = 1 << 20) -> None:
        self.path = path
        self.tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        self.metadata = metadata or {}
        self.row_group_size = row_group_size
        self.rows = 0
        self._writer = None
        self._empty: pl.DataFrame | None = None

    def __enter__(self) -> "ParquetAppender":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return self

    def write(self, frame: pl.DataFrame) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if frame.height == 0:
            self._empty = frame if self._empty is None else self._empty
            return
        table = frame.to_arrow()
        if self._writer is None:
            schema = table.schema.with_metadata({k.encode(): v.encode() for k, v in self.metadata.items()})
            # dictionary pages only for text columns: on the integer columns (ids, steps, times, the
            # model-ready arrays) they cost 1.7-2x the write time and gave no smaller files
            text = [f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
            stats = [f.name for f in schema if f.name in STATISTICS_COLUMNS]
            self._writer = pq.ParquetWriter(self.tmp, schema, compression="zstd", use_dictionary=text or False,
                                            write_statistics=stats or False)
        self._writer.write_table(table.cast(self._writer.schema), row_group_size=self.row_group_size)
        self.rows += frame.height

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if self._writer is not None:
                self._writer.close()
            if exc_type is None:
                if self._writer is None:  # nothing written: an empty file with the schema, if known
                    write_frame(self._empty if self._empty is not None else pl.DataFrame(), self.tmp)
                os.replace(self.tmp, self.path)
        finally:
            self.tmp.unlink(missing_ok=True)


def user_shards(path: Path, rows_per_shard: int) -> list[tuple[int, int]]:
    """Consecutive dense-user-id ranges [lo, hi) holding about ``rows_per_shard`` rows each.

    The table must be ordered by user_id (every table of this pipeline is), so each range is a
    contiguous block of row groups and a shard never needs another shard's rows.
    """
    counts = (pl.scan_parquet(path).group_by("user_id").len().sort("user_id")
              .collect(engine="streaming"))
    if counts.is_empty():
        return []
    users = counts["user_id"].to_numpy().astype("int64")
    shard_of = (counts["len"].cum_sum().to_numpy() - 1) // max(1, rows_per_shard)
    bounds = [int(users[0]), *users[np.flatnonzero(shard_of[1:] != shard_of[:-1]) + 1].tolist()]
    return list(zip(bounds, bounds[1:] + [int(users[-1]) + 1], strict=True))


def read_user_range(path: Path, lo: int, hi: int, columns: list[str] | None = None,
                    where: pl.Expr | None = None) -> pl.DataFrame:
    """The rows of users ``lo <= user_id < hi`` (row groups outside the range are skipped by their
    statistics). ``where``: a further row filter, evaluated while reading: the other columns are
    decoded for the rows it keeps only (reading a range's changed users this way took 0.6x the time
    of reading the range and filtering it after)."""
    lf = pl.scan_parquet(path)
    if columns:
        lf = lf.select(columns)
    keep = (pl.col("user_id") >= lo) & (pl.col("user_id") < hi)
    return lf.filter(keep if where is None else keep & where).collect()
