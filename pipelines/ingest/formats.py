"""Adapters for the published raw formats (README, "Your own data" and "What the adapters do").

Each adapter turns a dataset's raw event files into a ``ParsedSource`` (lazy, one row per raw line)
and, separately, builds per-item side attributes. Columns are mapped by header name wherever a
file has a header, because published column orders disagree.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
import polars as pl

from pipelines.ingest.errors import IngestError
from pipelines.ingest.lines import (
    Check,
    ParsedSource,
    RawFile,
    check_nonempty,
    fld,
    flag_checks,
    header_positions,
    parse_flag,
    parsed_events,
    read_header,
    scan_fields,
    structural_checks,
    time_checks,
)
from pipelines.registry import DatasetConfig
from schemas import columns as c

Files = Mapping[str, list[RawFile]]  # role -> files in reading order


# ---------------------------------------------------------------- behavior encodings
def label_behaviors(cfg: DatasetConfig, field: str) -> tuple[pl.Expr, Check]:
    """Single-label formats: the raw label becomes a one-bit mask; unknown labels are rejected.

    A cast to an Enum of the vocabulary (a hash lookup; unknown labels become null) rather than
    ``replace_strict``, which did not stream in polars 2.1 and quadrupled peak memory.
    """
    codes = [b.raw_code for b in cfg.behaviors]
    index = fld(field).cast(pl.Enum(codes), strict=False).to_physical()
    expr = pl.lit(2, pl.UInt16).pow(index).cast(pl.UInt16)
    vocab = ", ".join(codes)
    # the condition reads the parsed column (null exactly where the index is): no second lookup
    return expr, Check("unknown behavior", pl.col(c.BEHAVIORS).is_null(),
                       pl.format(f"unknown behavior '{{}}' (vocabulary: {vocab})", fld(field)))


def flag_behaviors(fields: list[str]) -> pl.Expr:
    """Flag formats: 0/1 columns (in vocabulary order) become a bitmask; all zero = exposure."""
    mask = pl.lit(0, pl.UInt16)
    for i, f in enumerate(fields):
        mask = mask + parse_flag(f).fill_null(0) * (1 << i)
    return mask.cast(pl.UInt16)


def _concat(sources: list[ParsedSource], names: list[str]) -> ParsedSource:
    """One source over several files (``names``, in the same order). Files whose checks differ (a
    header with another column count: the expected count is the file's own) get per-file checks,
    chosen by the row's ``source_file``."""
    first = sources[0]
    checks = first.checks
    same = all(len(s.checks) == len(checks) and all(
        a.condition.meta.eq(b.condition) and a.message.meta.eq(b.message) for a, b in zip(s.checks, checks, strict=True))
        for s in sources[1:])
    if not same:
        def per_file(exprs: list[pl.Expr]) -> pl.Expr:
            chosen = pl.when(pl.col(c.SOURCE_FILE) == names[0]).then(exprs[0])
            for name, e in zip(names[1:], exprs[1:], strict=True):
                chosen = chosen.when(pl.col(c.SOURCE_FILE) == name).then(e)
            return chosen.otherwise(exprs[0])

        checks = [Check(ch.kind, per_file([s.checks[i].condition for s in sources]),
                        per_file([s.checks[i].message for s in sources])) for i, ch in enumerate(checks)]
    # files with other optional columns (a Tenrec drop without the category columns): the union of
    # the columns, in order of first appearance, null where a file lacks one
    extras = list(dict.fromkeys(e for s in sources for e in s.extras))
    raw_fields = list(dict.fromkeys(f for s in sources for f in s.raw_fields))
    alike = all(s.extras == first.extras and s.raw_fields == first.raw_fields for s in sources[1:])
    return ParsedSource(
        frame=pl.concat([s.frame for s in sources], how="vertical" if alike else "diagonal"),
        checks=checks,
        raw_fields=raw_fields,
        extras=extras,
    )


def with_extras(source: ParsedSource, extras: list[str]) -> ParsedSource:
    """``source`` with exactly ``extras`` (in that order): the ones it lacks are null. An incremental
    ingest parses only the new files, whose optional columns may be a subset of all files'."""
    missing = [e for e in extras if e not in source.extras]
    frame = source.frame.with_columns(pl.lit(None, pl.String).alias(e) for e in missing) if missing else source.frame
    return ParsedSource(frame=frame, checks=source.checks, raw_fields=source.raw_fields, extras=list(extras))


def _headered(raw: RawFile, required: list[str]) -> tuple[pl.LazyFrame, dict[str, int], int]:
    header = read_header(raw.path)
    positions = header_positions(raw.path, header, required)
    return scan_fields(raw, positions, has_header=True), positions, len(header)


def _blank_to_null(field: str) -> pl.Expr:
    return pl.when(fld(field) != "").then(fld(field))


# ---------------------------------------------------------------- event parsers
def parse_taobao(cfg: DatasetConfig, files: Files) -> ParsedSource:
    """UserBehavior.csv: no header; user_id,item_id,category_id,behavior_type,timestamp (seconds)."""
    fields = ["user_id", "item_id", "category_id", "behavior_type", "timestamp"]
    out = []
    for raw in files["events"]:
        check_nonempty(raw.path)
        lf = scan_fields(raw, {f: i for i, f in enumerate(fields)}, has_header=False)
        behaviors, behavior_check = label_behaviors(cfg, "behavior_type")
        checks = [*structural_checks("user_id", "item_id", len(fields)), behavior_check,
                  *time_checks("timestamp", cfg.time)]
        out.append(parsed_events(lf, user="user_id", item="item_id", behaviors=behaviors, time_field="timestamp",
                                 spec=cfg.time, checks=checks, raw_fields=fields,
                                 extra={c.CATEGORY_ID: _blank_to_null("category_id")}))
    return _concat(out, [raw.name for raw in files["events"]])


def parse_tmall(cfg: DatasetConfig, files: Files) -> ParsedSource:
    """user_log_format1.csv: header; time_stamp is mmdd (day granularity); action_type 0/1/2/3."""
    required = ["user_id", "item_id", "cat_id", "seller_id", "brand_id", "time_stamp", "action_type"]
    out = []
    for raw in files["events"]:
        lf, _, n = _headered(raw, required)
        behaviors, behavior_check = label_behaviors(cfg, "action_type")
        checks = [*structural_checks("user_id", "item_id", n), behavior_check, *time_checks("time_stamp", cfg.time)]
        extra = {c.CATEGORY_ID: _blank_to_null("cat_id"), c.SELLER_ID: _blank_to_null("seller_id"),
                 c.BRAND_ID: _blank_to_null("brand_id")}
        out.append(parsed_events(lf, user="user_id", item="item_id", behaviors=behaviors, time_field="time_stamp",
                                 spec=cfg.time, checks=checks, raw_fields=required, extra=extra))
    return _concat(out, [raw.name for raw in files["events"]])


def parse_retailrocket(cfg: DatasetConfig, files: Files) -> ParsedSource:
    """events.csv: header timestamp,visitorid,event,itemid,transactionid; timestamp in ms."""
    required = ["timestamp", "visitorid", "event", "itemid"]
    out = []
    for raw in files["events"]:
        lf, _, n = _headered(raw, required)
        behaviors, behavior_check = label_behaviors(cfg, "event")
        checks = [*structural_checks("visitorid", "itemid", n), behavior_check, *time_checks("timestamp", cfg.time)]
        out.append(parsed_events(lf, user="visitorid", item="itemid", behaviors=behaviors, time_field="timestamp",
                                 spec=cfg.time, checks=checks, raw_fields=required))
    return _concat(out, [raw.name for raw in files["events"]])


def _flag_format(cfg: DatasetConfig, files: Files, time_field: str | None, extra_cols: list[str]) -> ParsedSource:
    flags = [b.raw_code for b in cfg.behaviors]
    out = []
    for raw in files["events"]:
        header = read_header(raw.path)
        required = ["user_id", "item_id", *([time_field] if time_field else []), *flags]
        present_extra = [e for e in extra_cols if e in header]
        positions = header_positions(raw.path, header, [*required, *present_extra])
        lf = scan_fields(raw, positions, has_header=True)
        checks = [*structural_checks("user_id", "item_id", len(header)), *flag_checks(flags),
                  *time_checks(time_field, cfg.time)]
        extra = {}
        if "video_category" in present_extra:
            extra[c.CATEGORY_ID] = _blank_to_null("video_category")
        elif "category_second" in present_extra:
            extra[c.CATEGORY_ID] = _blank_to_null("category_second")
        if "category_first" in present_extra and "category_second" in present_extra:
            extra[c.CATEGORY_PATH] = pl.concat_str(
                _blank_to_null("category_first"), _blank_to_null("category_second"), separator=" > "
            )
        out.append(parsed_events(lf, user="user_id", item="item_id", behaviors=flag_behaviors(flags),
                                 time_field=time_field, spec=cfg.time, checks=checks,
                                 raw_fields=[*required, *present_extra], extra=extra))
    return _concat(out, [raw.name for raw in files["events"]])


def parse_kuaisar(cfg: DatasetConfig, files: Files) -> ParsedSource:
    """rec_inter.csv: header; behavior flag columns; timestamp float ms; all-zero rows are exposures."""
    return _flag_format(cfg, files, "timestamp", [])


def parse_tenrec(cfg: DatasetConfig, files: Files) -> ParsedSource:
    """QK-video.csv / QK-article.csv: header (order varies, mapped by name); no time column."""
    return _flag_format(cfg, files, None, ["video_category", "category_first", "category_second"])


def parse_behavior_set_splits(cfg: DatasetConfig, files: Files) -> ParsedSource:
    """EIDP/BLADE release: train/valid/between_val_test/test, lines `user,item,b1..bB`, no header."""
    try:
        positions = {b.name: int(b.raw_code) + 1 for b in cfg.behaviors}  # b1 is column 2 (0-based)
    except ValueError:
        raise IngestError(
            f"dataset '{cfg.name}': behavior codes of format behavior_set_splits must be b-positions 1..B"
        ) from None
    n = 2 + max(int(b.raw_code) for b in cfg.behaviors)
    flags = list(positions)
    out = []
    for role in ("train", "valid", "between", "test"):
        for raw in files[role]:
            check_nonempty(raw.path)
            lf = scan_fields(raw, {"user": 0, "item": 1, **positions}, has_header=False)
            checks = [*structural_checks("user", "item", n), *flag_checks(flags)]
            out.append(parsed_events(lf, user="user", item="item", behaviors=flag_behaviors(flags), time_field=None,
                                     spec=cfg.time, checks=checks, raw_fields=["user", "item", *flags]))
    return _concat(out, [raw.name for role in ("train", "valid", "between", "test") for raw in files[role]])


EVENT_ROLES: dict[str, tuple[str, ...]] = {fmt: ("events",) for fmt in
                                          ("taobao", "tmall", "retailrocket", "kuaisar", "tenrec")}
EVENT_ROLES["behavior_set_splits"] = ("train", "valid", "between", "test")


def event_files(cfg: DatasetConfig, files: Files) -> list[RawFile]:
    """The files holding events (not side information), in reading order."""
    return [f for role in EVENT_ROLES[cfg.format] for f in files.get(role, [])]


EVENT_PARSERS: dict[str, Callable[[DatasetConfig, Files], ParsedSource]] = {
    "taobao": parse_taobao,
    "tmall": parse_tmall,
    "retailrocket": parse_retailrocket,
    "kuaisar": parse_kuaisar,
    "tenrec": parse_tenrec,
    "behavior_set_splits": parse_behavior_set_splits,
}


# ---------------------------------------------------------------- item side info
def retailrocket_item_attributes(files: Files) -> pl.LazyFrame | None:
    """Latest `categoryid` property per item, and the category's path of ids from the tree's root."""
    prop_files = files.get("item_properties", [])
    if not prop_files:
        return None
    for raw in prop_files:
        header_positions(raw.path, read_header(raw.path), ["timestamp", "itemid", "property", "value"])
    props = pl.concat(
        [pl.scan_csv(r.path, schema_overrides={"itemid": pl.String, "value": pl.String, "property": pl.String})
         for r in prop_files],
        how="diagonal_relaxed",
    )
    category = (
        props.filter(pl.col("property") == "categoryid")
        .with_columns(pl.col("itemid").str.to_integer(strict=False).alias(c.RAW_ITEM_ID))
        .drop_nulls(c.RAW_ITEM_ID)
        .sort("timestamp", c.RAW_ITEM_ID, maintain_order=True)  # ties: the later in file order wins
        .group_by(c.RAW_ITEM_ID)
        .agg(pl.col("value").last().alias(c.CATEGORY_ID))
    )
    tree_files = files.get("category_tree", [])
    if not tree_files:
        return category
    tree = pl.read_csv(tree_files[0].path, schema_overrides={"categoryid": pl.String, "parentid": pl.String})
    parent = dict(zip(tree["categoryid"].to_list(), tree["parentid"].to_list(), strict=True))

    def path_of(cat: str) -> str:  # a few thousand categories: a loop over the tree, not over events
        chain, seen = [cat], {cat}
        while (p := parent.get(chain[-1])) and p not in seen:
            chain.append(p)
            seen.add(p)
        return " > ".join(reversed(chain))

    paths = pl.LazyFrame(
        {c.CATEGORY_ID: list(parent), c.CATEGORY_PATH: [path_of(k) for k in parent]},
        schema={c.CATEGORY_ID: pl.String, c.CATEGORY_PATH: pl.String},
    )
    return category.join(paths, on=c.CATEGORY_ID, how="left")


def kuaisar_item_attributes(files: Files) -> pl.LazyFrame | None:
    """item_features.csv: English category names (levels 1-4) and the anonymized caption tokens."""
    feature_files = files.get("item_features", [])
    if not feature_files:
        return None
    raw = feature_files[0]
    levels = ["first", "second", "third", "fourth"]
    header_positions(raw.path, read_header(raw.path), ["item_id", "caption"] + [f"{lv}_level_category_name_en" for lv in levels])
    lf = pl.scan_csv(raw.path, infer_schema=False)  # every column as String

    def name(lv: str) -> pl.Expr:
        v = pl.col(f"{lv}_level_category_name_en").str.strip_chars()
        return pl.when(v.is_not_null() & (v != "") & (v.str.to_lowercase() != "empty")).then(v)

    def cat_id(lv: str) -> pl.Expr:
        col = f"{lv}_level_category_id"
        return pl.when(pl.col(col).is_not_null() & (pl.col(col) != "0")).then(pl.col(col))

    id_cols = [lv for lv in levels if f"{lv}_level_category_id" in read_header(raw.path)]
    return lf.select(
        pl.col("item_id").str.to_integer(strict=False).alias(c.RAW_ITEM_ID),
        (pl.coalesce([cat_id(lv) for lv in reversed(id_cols)]) if id_cols else pl.lit(None, pl.String)).alias(c.CATEGORY_ID),
        pl.concat_str([name(lv) for lv in levels], separator=" > ", ignore_nulls=True).alias(c.CATEGORY_PATH),
        pl.col("caption").alias(c.CAPTION_TOKENS),
    ).drop_nulls(c.RAW_ITEM_ID).unique(c.RAW_ITEM_ID, keep="first", maintain_order=True)


SIDE_FILE_ATTRIBUTES: dict[str, Callable[[Files], pl.LazyFrame | None]] = {
    "retailrocket": retailrocket_item_attributes,
    "kuaisar": kuaisar_item_attributes,
}


def item_attributes_from_files(fmt: str, files: Files) -> pl.LazyFrame | None:
    builder = SIDE_FILE_ATTRIBUTES.get(fmt)
    return builder(files) if builder else None
