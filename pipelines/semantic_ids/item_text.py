"""One text per item from its side info, through the registry's template.

Template: ``' | '``-separated segments with ``{column}`` placeholders over ``item_side_info``
columns, e.g. ``"category {category_path} | brand {brand_id}"``. A segment is kept when at least
one of its placeholders has a value (missing ones become empty) and dropped otherwise; items with no
segment left get the fallback ``"item {raw_item_id}"`` and ``source = "fallback"``. For id-only
datasets (Taobao: category; Tmall: category, brand, seller) the text is those id tokens: it groups
items of one category or brand together, and collaborative embeddings add the behavioral signal.
"""

from __future__ import annotations

import re
import string

import polars as pl

from schemas import columns as c

SEPARATOR = " | "
FALLBACK = "item {raw_item_id}"


class TemplateError(ValueError):
    pass


def placeholders(segment: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(segment) if name]


def _segment_expr(segment: str, columns: list[str]) -> pl.Expr:
    names = placeholders(segment)
    missing = [n for n in names if n not in columns]
    if missing:
        raise TemplateError(f"text template segment {segment!r} names unknown column(s) {missing}; "
                            f"item_side_info has {columns}")
    if not names:
        raise TemplateError(f"text template segment {segment!r} has no {{column}} placeholder")
    fmt = re.sub(r"\{[^{}]*\}", "{}", segment)
    values = [pl.col(n).cast(pl.String).str.strip_chars() for n in names]
    present = pl.any_horizontal([v.is_not_null() & (v != "") for v in values])
    return pl.when(present).then(pl.format(fmt, *[v.fill_null("") for v in values]).str.strip_chars())


def item_texts(side_info: pl.DataFrame, template: str) -> pl.DataFrame:
    """``item_id, text, source`` (``side_info`` | ``fallback``), one row per item, in item order."""
    if side_info.height and side_info[c.ITEM_ID].is_duplicated().any():
        dup = side_info.filter(pl.col(c.ITEM_ID).is_duplicated())[c.ITEM_ID].head(5).to_list()
        raise TemplateError(f"item_side_info has duplicate item ids, e.g. {dup}")
    segments = [s.strip() for s in template.split(SEPARATOR.strip()) if s.strip()]
    if not segments:
        raise TemplateError("text template is empty")
    exprs = [_segment_expr(s, side_info.columns) for s in segments]
    text = pl.concat_str(exprs, separator=SEPARATOR, ignore_nulls=True)
    fallback = pl.format(re.sub(r"\{[^{}]*\}", "{}", FALLBACK), pl.col("raw_item_id").cast(pl.String))
    return (side_info.sort(c.ITEM_ID)
            .with_columns(text.alias("__text"))
            .select(c.ITEM_ID,
                    pl.when(pl.col("__text").is_null() | (pl.col("__text") == "")).then(fallback)
                    .otherwise(pl.col("__text")).alias("text"),
                    pl.when(pl.col("__text").is_null() | (pl.col("__text") == "")).then(pl.lit("fallback"))
                    .otherwise(pl.lit("side_info")).alias("source")))
