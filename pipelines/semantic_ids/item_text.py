"""One text per item from its side info, through the registry's template.

Template: ``' | '``-separated segments with ``{column}`` placeholders over ``item_side_info``
columns, e.g. ``"category {category_path} | brand {brand_id}"``. A segment is kept when at least
one of its placeholders has a value (missing ones become empty) and dropped otherwise; items with no
segment left get the fallback ``"item {raw_item_id}"`` and ``source = "fallback"``. Texts are kept as
written: two items whose category lists name the same parts in another order ("Food, Coffee & Tea" /
"Coffee & Tea, Food") have two texts, near-identical vectors and (with ``residual_unique``) two tuples,
unless their columns are listed as unordered, which sorts the parts and makes them one text. For id-only
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


PATH_SEPARATOR = " > "


def sorted_parts(value: pl.Expr) -> pl.Expr:
    """Comma-separated parts stripped and sorted, within each `` > `` level of a path:
    ``"Food, Coffee & Tea"`` and ``"Coffee & Tea, Food"`` both become ``"Coffee & Tea, Food"``."""
    level = pl.element().str.split(",").list.eval(pl.element().str.strip_chars()).list.sort().list.join(", ")
    return value.str.split(PATH_SEPARATOR).list.eval(level).list.join(PATH_SEPARATOR)


def order_variants(texts: pl.Series) -> int:
    """How many distinct texts equal another distinct text up to the order of comma-separated parts
    (inside each `` | `` segment and `` > `` level)."""
    distinct = texts.unique()
    canonical = distinct.str.split(SEPARATOR).list.eval(sorted_parts(pl.element())).list.join(SEPARATOR)
    return distinct.len() - canonical.n_unique()


def _segment_expr(segment: str, columns: list[str], unordered: frozenset[str] = frozenset()) -> pl.Expr:
    names = placeholders(segment)
    missing = [n for n in names if n not in columns]
    if missing:
        raise TemplateError(f"text template segment {segment!r} names unknown column(s) {missing}; "
                            f"item_side_info has {columns}")
    if not names:
        raise TemplateError(f"text template segment {segment!r} has no {{column}} placeholder")
    fmt = re.sub(r"\{[^{}]*\}", "{}", segment)
    values = [pl.col(n).cast(pl.String).str.strip_chars() for n in names]
    values = [sorted_parts(v) if n in unordered else v for n, v in zip(names, values, strict=True)]
    present = pl.any_horizontal([v.is_not_null() & (v != "") for v in values])
    return pl.when(present).then(pl.format(fmt, *[v.fill_null("") for v in values]).str.strip_chars())


def item_texts(side_info: pl.DataFrame, template: str, unordered_columns: list[str] | tuple[str, ...] = ()) -> pl.DataFrame:
    """``item_id, text, source`` (``side_info`` | ``fallback``), one row per item, in item order.
    Values of ``unordered_columns`` are comma-separated lists whose order carries no meaning: their
    parts are sorted, so texts differing only in that order become one text."""
    unknown = sorted(set(unordered_columns) - set(side_info.columns))
    if unknown:
        raise TemplateError(f"unordered list column(s) {unknown} not in item_side_info {side_info.columns}")
    if side_info.height and side_info[c.ITEM_ID].is_duplicated().any():
        dup = side_info.filter(pl.col(c.ITEM_ID).is_duplicated())[c.ITEM_ID].head(5).to_list()
        raise TemplateError(f"item_side_info has duplicate item ids, e.g. {dup}")
    segments = [s.strip() for s in template.split(SEPARATOR.strip()) if s.strip()]
    if not segments:
        raise TemplateError("text template is empty")
    exprs = [_segment_expr(s, side_info.columns, frozenset(unordered_columns)) for s in segments]
    text = pl.concat_str(exprs, separator=SEPARATOR, ignore_nulls=True)
    fallback = pl.format(re.sub(r"\{[^{}]*\}", "{}", FALLBACK), pl.col("raw_item_id").cast(pl.String))
    return (side_info.sort(c.ITEM_ID)
            .with_columns(text.alias("__text"))
            .select(c.ITEM_ID,
                    pl.when(pl.col("__text").is_null() | (pl.col("__text") == "")).then(fallback)
                    .otherwise(pl.col("__text")).alias("text"),
                    pl.when(pl.col("__text").is_null() | (pl.col("__text") == "")).then(pl.lit("fallback"))
                    .otherwise(pl.lit("side_info")).alias("source")))
