"""Reading raw CSV-like files line by line, so every row keeps its exact file and line number.

Each file is scanned with ``polars.scan_lines`` (lazy, streaming): one string per physical line,
blank lines included, so line numbers match what an editor shows. Fields are split with vectorized
string expressions, and every check that can reject a row is an expression producing a reason;
the first failing check names the row's quarantine reason.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple
from datetime import date, datetime, timezone
from pathlib import Path

import polars as pl

from pipelines.ingest.errors import IngestError
from pipelines.registry import TimeSpec
from schemas import columns as c

TEXT = "__text"
N_FIELDS = "__n_fields"
BLANK = "__blank"  # the line holds nothing but whitespace
RAW_PREFIX = "raw:"  # raw string fields are namespaced so they never clash with canonical columns


def fld(name: str) -> pl.Expr:
    """The raw string field ``name`` of a scanned line."""
    return pl.col(RAW_PREFIX + name)
# Timestamps outside this range are quarantined even when the registry gives no window.
SANE_FROM = date(1995, 1, 1)
SANE_TO = date(2100, 1, 1)


BOM = "\ufeff"
INVALID_UTF8 = "invalid UTF-8"


@dataclass(frozen=True)
class RawFile:
    """One raw file of a dataset, with its position in reading order (for ``event_order``).

    ``readable``: a copy with invalid UTF-8 bytes replaced (only when the file has any, see
    ``inspect_bytes``); ``bad_lines``: the 1-based numbers of those lines, quarantined as bad rows;
    ``needs_trim``: False when the bytes show that no field can carry whitespace to strip;
    ``only_lines``: scan just these 1-based lines (the second look at rejected rows), else all.
    """

    path: Path
    index: int
    readable: Path | None = None
    bad_lines: tuple[int, ...] = ()
    bom: bool = False
    needs_trim: bool = True
    only_lines: tuple[int, ...] | None = None

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def readable_path(self) -> Path:
        return self.readable or self.path


class ByteFacts(NamedTuple):
    """What one pass over a raw file's bytes found (``inspect_bytes``)."""

    bom: bool  # starts with a UTF-8 byte-order mark
    bad_lines: list[int]  # 1-based numbers of lines holding invalid UTF-8
    needs_trim: bool  # False only for pure ASCII without spaces, tabs, \v, \f or \r: no field can need trimming


# the ASCII bytes polars' ``strip_chars()`` removes, besides the newline that ends every line
_TRIMMED_BYTES = (b" ", b"\t", b"\r", b"\x0b", b"\x0c")


def inspect_bytes(path: Path, block_bytes: int = 64 << 20) -> ByteFacts:
    """BOM, lines with invalid UTF-8, and whether fields may need trimming, in one pass.

    A file of ASCII bytes only is valid as it is (one fast pass, which also looks for whitespace
    bytes: a file with none skips trimming every field, a quarter of the parse). Otherwise blocks end
    at a newline, so a multi-byte character is never cut; only a block that fails to decode is
    looked at line by line.
    """
    with path.open("rb") as f:
        head = f.read(3)
        bom = head == BOM.encode()
        ascii_only, blank = not bom and head.isascii(), any(b in head for b in _TRIMMED_BYTES)
        # one reused buffer: reading into it is 3x faster than a fresh bytes object per block
        buf = bytearray(min(block_bytes, 16 << 20))
        view = memoryview(buf)
        while ascii_only:
            n = f.readinto(buf)
            if not n:
                # pure ASCII (most event logs): valid UTF-8, no need to decode or count lines
                return ByteFacts(False, [], needs_trim=blank)
            chunk = buf if n == len(buf) else view[:n].tobytes()
            ascii_only = chunk.isascii()
            blank = blank or any(b in chunk for b in _TRIMMED_BYTES)
        view.release()
    bad: list[int] = []
    line = 1
    with path.open("rb") as f:
        rest = b""
        while True:
            chunk = f.read(block_bytes)
            block = rest + chunk
            if not chunk:
                rest = b""
            else:
                cut = block.rfind(b"\n") + 1
                block, rest = block[:cut], block[cut:]
            try:
                block.decode("utf-8")
            except UnicodeDecodeError:
                for i, text in enumerate(block.split(b"\n")):
                    try:
                        text.decode("utf-8")
                    except UnicodeDecodeError:
                        bad.append(line + i)
            line += block.count(b"\n")
            if not chunk:
                break
    return ByteFacts(bom, bad, needs_trim=True)


def readable_copy(raw: RawFile, scratch: Path) -> RawFile:
    """``raw`` with its BOM noted, whether its fields need trimming, and, when some lines hold
    invalid UTF-8, a copy to scan instead (invalid bytes replaced, line structure unchanged) and
    those lines listed for the quarantine."""
    bom, bad, needs_trim = inspect_bytes(raw.path)
    if not bad:
        return RawFile(raw.path, raw.index, bom=bom, needs_trim=needs_trim)
    copy = scratch / f"_utf8_{raw.index}_{raw.name}"
    with raw.path.open("rb") as src, copy.open("w", encoding="utf-8", newline="") as dst:
        for chunk in iter(lambda: src.read(64 << 20), b""):
            dst.write(chunk.decode("utf-8", errors="replace"))  # a cut character becomes U+FFFD: lines stay bad
    return RawFile(raw.path, raw.index, readable=copy, bad_lines=tuple(bad), bom=bom)


def escape_invisible(text: str | None) -> str | None:
    """Show control, format and other invisible characters of a message as escapes (\\ufeff, \\x00)."""
    import unicodedata

    if text is None:
        return None
    return "".join(ch if ch == " " or unicodedata.category(ch)[0] not in "CZ" else ch.encode("unicode_escape").decode()
                   for ch in text)


def read_header(path: Path) -> list[str]:
    """The first line of ``path`` split on commas, with a clear error for missing or empty files."""
    check_nonempty(path)
    with path.open("rb") as f:
        first = f.readline().decode("utf-8", errors="replace").rstrip("\r\n")
    return [h.strip().lstrip("\ufeff") for h in first.split(",")]


def check_nonempty(path: Path) -> None:
    if not path.is_file():
        raise IngestError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise IngestError(f"{path}: file is empty")


def header_positions(path: Path, header: Sequence[str], required: Sequence[str]) -> dict[str, int]:
    """Map required column names to their positions in the header (column order may vary)."""
    missing = [r for r in required if r not in header]
    if missing:
        raise IngestError(
            f"{path}: wrong header: missing column(s) {missing}; found {list(header)}; "
            f"expected at least {list(required)}"
        )
    return {name: header.index(name) for name in required}


def scan_fields(
    raw: RawFile,
    positions: Mapping[str, int],
    *,
    has_header: bool,
) -> pl.LazyFrame:
    """Lazily split each data line of ``raw`` into the named string fields.

    Output columns: source_file, source_line, event_order, ``__text`` (the raw line),
    ``__n_fields`` (field count), ``__blank`` (nothing but whitespace) and one String column per
    name in ``positions``, stripped of surrounding whitespace (skipped when ``raw.needs_trim`` is False:
    the same values, since the file holds no whitespace bytes).
    """
    lf = pl.scan_lines(raw.readable_path, name=TEXT, row_index_name=c.SOURCE_LINE, row_index_offset=1)
    if has_header:
        lf = lf.filter(pl.col(c.SOURCE_LINE) > 1)
    if raw.only_lines is not None:  # before any string work: the rest of the file costs only its reading
        lf = lf.filter(pl.col(c.SOURCE_LINE).is_in(list(raw.only_lines)))
    # a file without whitespace bytes has no '\r' to cut either (each use of `text` recomputes it)
    text = pl.col(TEXT).str.strip_suffix("\r") if raw.needs_trim else pl.col(TEXT)
    if raw.bom:  # a UTF-8 byte-order mark belongs to the file, not to the first field
        text = pl.when(pl.col(c.SOURCE_LINE) == 1).then(text.str.strip_prefix(BOM)).otherwise(text)
    parts = text.str.split_exact(",", max(positions.values()) if positions else 0)

    def trim(e: pl.Expr) -> pl.Expr:
        return e.str.strip_chars() if raw.needs_trim else e

    # the second look keeps a few lines from all over the file: their text is copied, or each kept
    # line would hold on to the whole block it was read from (4.6 GB at 100M rows, 0.5 GB copied)
    line_text = text if raw.only_lines is None else pl.format("{}", text)

    return lf.select(
        pl.lit(raw.name, pl.String).alias(c.SOURCE_FILE),
        pl.col(c.SOURCE_LINE).cast(pl.UInt32),
        (pl.lit(raw.index << c.LINE_BITS, pl.Int64) + pl.col(c.SOURCE_LINE).cast(pl.Int64)).alias(c.EVENT_ORDER),
        line_text.alias(TEXT),
        (text.str.count_matches(",", literal=True) + 1).cast(pl.UInt32).alias(N_FIELDS),
        (trim(text) == "").alias(BLANK),
        *[trim(parts.struct.field(f"field_{pos}")).alias(RAW_PREFIX + name) for name, pos in positions.items()],
    )


@dataclass(frozen=True)
class Check:
    """One way a row can be rejected: a condition over the scanned/parsed columns and the message.

    The main pass evaluates only the cheap conditions (as an integer reason code); messages are
    formatted later for the few rejected rows, from the raw string fields kept for them.
    """

    kind: str  # stable label for counts ("wrong column count", "unknown behavior", ...)
    condition: pl.Expr
    message: pl.Expr


def structural_checks(user: str, item: str, n_columns: int) -> list[Check]:
    """Checks every format shares, in priority order: blank line, column count, null/unparsable ids.

    ``user`` and ``item`` name the raw id fields. The conditions read the parsed id columns
    (``parsed_events`` adds them) instead of parsing the fields again.
    """
    checks = [
        Check("empty line", pl.col(BLANK), pl.lit("empty line")),
        Check(
            "wrong column count",
            pl.col(N_FIELDS) != n_columns,
            pl.format(f"wrong column count: expected {n_columns}, got {{}}", pl.col(N_FIELDS)),
        ),
    ]
    ids = {user: c.RAW_USER_ID, item: c.RAW_ITEM_ID}
    checks += [Check(f"null {f}", fld(f).is_null() | (fld(f) == ""), pl.lit(f"null {f}")) for f in ids]
    checks += [  # ids are plain digits (^[0-9]+$, within Int64): a sign ('+7', '-3', '-0') or spaces inside are not
        # an id. The integer parse accepts exactly an optional sign and digits, so a parsed value without a
        # leading sign is plain digits (tests/test_ingest_bad_input.py compares the two definitions)
        Check(f"unparsable {f}", pl.col(parsed).is_null() | signed(fld(f)),
              pl.format(f"unparsable {f} '{{}}'", fld(f))) for f, parsed in ids.items()
    ]
    return checks


def signed(field: pl.Expr) -> pl.Expr:
    """Whether a raw field starts with a sign (cheaper than a regular expression per row)."""
    return field.str.starts_with("+") | field.str.starts_with("-")


def utf8_check(raw_files: Sequence[RawFile]) -> Check:
    """Lines of the given files that hold invalid UTF-8 bytes (checked first: their fields are unreliable)."""
    cond = pl.lit(False)
    for f in raw_files:
        if f.bad_lines:
            cond |= (pl.col(c.SOURCE_FILE) == f.name) & pl.col(c.SOURCE_LINE).is_in(list(f.bad_lines))
    return Check(INVALID_UTF8, cond, pl.lit("invalid UTF-8 bytes in the line"))


def parse_int(field: str) -> pl.Expr:
    return fld(field).str.to_integer(strict=False)


def parse_flag(field: str) -> pl.Expr:
    """A 0/1 behavior flag ('0', '1', also '0.0'/'1.0'); null when anything else."""
    v = fld(field).cast(pl.Float64, strict=False)
    return pl.when(v.is_in([0.0, 1.0])).then(v.cast(pl.UInt16))


def flag_checks(flag_fields: Sequence[str]) -> list[Check]:
    return [
        Check(f"unparsable {f} flag", parse_flag(f).is_null(), pl.format(f"unparsable {f} flag '{{}}' (expected 0 or 1)", fld(f)))
        for f in flag_fields
    ]


def local_midnight_ms(d: date, utc_offset_hours: float) -> int:
    """Unix ms of local midnight starting day ``d`` in a zone ``utc_offset_hours`` from UTC."""
    epoch = datetime(d.year, d.month, d.day, tzinfo=timezone.utc).timestamp()
    return int(round((epoch - utc_offset_hours * 3600) * 1000))


def parse_timestamp_ms(field: str | None, spec: TimeSpec) -> pl.Expr:
    """The raw time field converted to Int64 milliseconds since the Unix epoch (UTC)."""
    if spec.unit == "none" or field is None:
        return pl.lit(None, pl.Int64)
    if spec.unit == "s":  # seconds beyond Int64 milliseconds would wrap: pin them out of range instead
        v = parse_int(field)
        limit = (2**63 - 1) // 1000
        return (pl.when(v > limit).then(pl.lit(2**63 - 1, pl.Int64))
                .when(v < -limit).then(pl.lit(-(2**63) + 1, pl.Int64)).otherwise(v * 1000))
    if spec.unit == "ms":  # integers, or floats like 1684742000123.0 (KuaiSAR)
        as_int = parse_int(field)
        as_float = fld(field).cast(pl.Float64, strict=False).round(0).cast(pl.Int64, strict=False)
        return pl.coalesce(as_int, as_float)
    # mmdd: month*100 + day, year from the registry, local midnight of that day
    v = parse_int(field)
    day = (
        pl.format("{}{}", pl.lit(spec.year), v.cast(pl.String).str.zfill(4))
        .str.to_date("%Y%m%d", strict=False)
    )
    day = pl.when((v >= 101) & (v <= 1231)).then(day)
    return (day.cast(pl.Int64) * 86_400_000) - int(round(spec.utc_offset_hours * 3_600_000))


def time_checks(field: str | None, spec: TimeSpec) -> list[Check]:
    """Null, unparsable and out-of-window timestamps (read from the parsed timestamp column)."""
    if spec.unit == "none" or field is None:
        return []
    ts = pl.col(c.TIMESTAMP)  # parse_timestamp_ms(field, spec), added by parsed_events
    lo = local_midnight_ms(spec.valid_from or SANE_FROM, spec.utc_offset_hours)
    hi = local_midnight_ms(spec.valid_to or SANE_TO, spec.utc_offset_hours)
    window = f"[{spec.valid_from or SANE_FROM}, {spec.valid_to or SANE_TO})"
    return [
        Check(f"null {field}", fld(field).is_null() | (fld(field) == ""), pl.lit(f"null {field}")),
        Check(f"unparsable {field}", ts.is_null(), pl.format(f"unparsable {field} '{{}}'", fld(field))),
        Check(f"{field} outside the valid range", (ts < lo) | (ts >= hi), pl.format(f"{field} '{{}}' outside the valid range {window}", fld(field))),
    ]


@dataclass(frozen=True)
class ParsedSource:
    """What an adapter hands the ingest core for its event files.

    ``frame`` holds the scan columns, the raw string fields and the parsed values
    (raw_user_id, raw_item_id, behaviors, timestamp, plus adapter extras); ``checks`` are tried in order.
    """

    frame: pl.LazyFrame
    checks: list[Check]
    raw_fields: list[str]
    extras: list[str]


def parsed_events(
    lf: pl.LazyFrame,
    *,
    user: str,
    item: str,
    behaviors: pl.Expr,
    time_field: str | None,
    spec: TimeSpec,
    checks: list[Check],
    raw_fields: Sequence[str],
    extra: Mapping[str, pl.Expr] | None = None,
) -> ParsedSource:
    """Add the parsed canonical values to a scanned file."""
    extra = dict(extra or {})
    frame = lf.with_columns(
        parse_int(user).alias(c.RAW_USER_ID),
        parse_int(item).alias(c.RAW_ITEM_ID),
        behaviors.cast(pl.UInt16).alias(c.BEHAVIORS),
        parse_timestamp_ms(time_field, spec).cast(pl.Int64).alias(c.TIMESTAMP),
        *[e.alias(k) for k, e in extra.items()],
    )
    return ParsedSource(
        frame=frame, checks=checks, raw_fields=[RAW_PREFIX + f for f in raw_fields], extras=list(extra)
    )
