"""Tests of the synthetic raw-log generator (pipelines/synthetic.py).

Each test pins a property the adapters, benchmarks or the leakage checks rely on: exact published
formats, determinism, the same-item funnel before purchases, realistic flag co-occurrence, the
behavior-set split semantics, sizing, and the CLI.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines.synthetic import FORMATS, SyntheticSpec, main, spec_for_rows, write_synthetic

ROOT = Path(__file__).resolve().parents[1]
CN = timezone(timedelta(hours=8))
TAOBAO_START, TAOBAO_END = 1511539200, 1512316800
RR_START_MS = int(datetime(2015, 5, 3, tzinfo=timezone.utc).timestamp()) * 1000
RR_END_MS = int(datetime(2015, 9, 19, tzinfo=timezone.utc).timestamp()) * 1000
KUAI_START_MS = int(datetime(2023, 5, 22, tzinfo=CN).timestamp()) * 1000
KUAI_END_MS = int(datetime(2023, 6, 1, tzinfo=CN).timestamp()) * 1000

HEADERS = {
    "UserBehavior.csv": None,
    "user_log_format1.csv": "user_id,item_id,cat_id,seller_id,brand_id,time_stamp,action_type",
    "events.csv": "timestamp,visitorid,event,itemid,transactionid",
    "item_properties_part1.csv": "timestamp,itemid,property,value",
    "item_properties_part2.csv": "timestamp,itemid,property,value",
    "category_tree.csv": "categoryid,parentid",
    "rec_inter.csv": "user_id,item_id,playing_time,duration_ms,time,timestamp,click,forward,like,follow,search,"
    "search_item_related",
    "item_features.csv": "item_id,caption,author_id,item_type,upload_time,upload_type,first_level_category_id,"
    "first_level_category_name,first_level_category_name_en,second_level_category_id,second_level_category_name,"
    "second_level_category_name_en,third_level_category_id,third_level_category_name,third_level_category_name_en,"
    "fourth_level_category_id,fourth_level_category_name,fourth_level_category_name_en",
    "QK-video.csv": "user_id,item_id,click,follow,like,share,video_category,watching_times,gender,age",
    "QK-article.csv": "user_id,item_id,click,like,share,follow,read,favorite,read_percentage,category_first,"
    "category_second,gender,age",
    "train.txt": None,
    "valid.txt": None,
    "between_val_test.txt": None,
    "test.txt": None,
}
COLUMNS = {"UserBehavior.csv": 5, **{f: 6 for f in ("train.txt", "valid.txt", "between_val_test.txt", "test.txt")}}
FILES = {
    "taobao": ["UserBehavior.csv"],
    "tmall": ["user_log_format1.csv"],
    "retailrocket": ["events.csv", "item_properties_part1.csv", "item_properties_part2.csv", "category_tree.csv"],
    "kuaisar": ["rec_inter.csv", "item_features.csv"],
    "tenrec": ["QK-video.csv"],
    "tenrec/article": ["QK-article.csv"],
    "behavior_set_splits": ["train.txt", "valid.txt", "between_val_test.txt", "test.txt"],
}
CASES = [*FORMATS, "tenrec/article"]  # (format, variant) cases, "fmt/variant" for the article variant


def _fmt_spec(case: str, spec: SyntheticSpec) -> tuple[str, SyntheticSpec]:
    fmt, _, variant = case.partition("/")
    return fmt, SyntheticSpec(**{**spec.__dict__, "variant": variant or "video"})


@pytest.fixture(scope="module")
def default_out(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every format written once with the default spec."""
    out = {}
    for case in CASES:
        fmt, spec = _fmt_spec(case, SyntheticSpec())
        d = tmp_path_factory.mktemp(case.replace("/", "_"))
        paths = write_synthetic(fmt, d, spec)
        assert sorted(p.name for p in paths) == sorted(FILES[case])
        out[case] = d
    return out


def _taobao(d: Path) -> pl.DataFrame:
    return pl.read_csv(d / "UserBehavior.csv", has_header=False,
                       new_columns=["user_id", "item_id", "category_id", "behavior_type", "timestamp"])


def _splits(d: Path, name: str) -> pl.DataFrame:
    if (d / name).stat().st_size == 0:  # tiny specs may leave no user with two non-click-only sets
        return pl.DataFrame(schema={c: pl.Int64 for c in ("user", "item", "b1", "b2", "b3", "b4")})
    return pl.read_csv(d / name, has_header=False, new_columns=["user", "item", "b1", "b2", "b3", "b4"],
                       schema_overrides={c: pl.Int64 for c in ("user", "item", "b1", "b2", "b3", "b4")})


# ---------------------------------------------------------------- determinism and API
@pytest.mark.parametrize("case", CASES)
def test_same_spec_same_bytes_other_seed_other_bytes(case: str, tmp_path: Path) -> None:
    fmt, spec = _fmt_spec(case, SyntheticSpec(users=300, items=400, topics=8, seed=7))
    a = write_synthetic(fmt, tmp_path / "a", spec)
    b = write_synthetic(fmt, tmp_path / "b", spec)
    c = write_synthetic(fmt, tmp_path / "c", SyntheticSpec(**{**spec.__dict__, "seed": 8}))
    assert [p.name for p in a] == [p.name for p in b] == [p.name for p in c]
    for pa_, pb, pc in zip(a, b, c, strict=True):
        assert pa_.read_bytes() == pb.read_bytes(), pa_.name
    assert any(pa_.read_bytes() != pc.read_bytes() for pa_, pc in zip(a, c, strict=True))


def test_unknown_format_names_valid_formats(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="taobao.*behavior_set_splits"):
        write_synthetic("movielens", tmp_path, SyntheticSpec())


def test_atomic_write_leaves_no_temp_files_and_keeps_other_files(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    (tmp_path / "UserBehavior.csv").write_text("stale")
    paths = write_synthetic("taobao", tmp_path, SyntheticSpec(users=50, items=100))
    assert sorted(os.listdir(tmp_path)) == ["UserBehavior.csv", "keep.txt"]
    assert (tmp_path / "keep.txt").read_text() == "mine"
    assert paths == [tmp_path / "UserBehavior.csv"] and paths[0].stat().st_size > 1000


# ---------------------------------------------------------------- exact formats
@pytest.mark.parametrize("case", CASES)
def test_headers_and_column_counts(case: str, default_out: dict[str, Path]) -> None:
    for name in FILES[case]:
        lines = (default_out[case] / name).read_text().split("\n")
        assert lines[-1] == "" and "\r" not in lines[0]  # LF endings, final newline
        header = HEADERS[name]
        if header is not None:
            assert lines[0] == header
            n_cols = len(header.split(","))
            body = lines[1:-1]
            df = pl.read_csv(default_out[case] / name, infer_schema=False)
            assert df.columns == header.split(",") and df.height == len(body) > 0
        else:
            n_cols = COLUMNS[name]
            body = lines[:-1]
            assert not re.search(r"[a-z]", body[0].split(",")[0])  # no header line
        if name != "item_features.csv":  # its caption is a quoted list with commas
            assert all(line.count(",") == n_cols - 1 for line in body), name


def test_taobao_domains_window_and_order(default_out: dict[str, Path]) -> None:
    df = _taobao(default_out["taobao"])
    assert df.schema["user_id"] == df.schema["item_id"] == df.schema["timestamp"] == pl.Int64
    assert set(df["behavior_type"].unique()) == {"pv", "fav", "cart", "buy"}
    outside = ((df["timestamp"] < TAOBAO_START) | (df["timestamp"] >= TAOBAO_END)).sum()
    assert 0 < outside <= 0.001 * df.height  # ~0.01% injected rows ...
    odd = df.filter((pl.col("timestamp") < TAOBAO_START) | (pl.col("timestamp") >= TAOBAO_END))
    assert odd["timestamp"].min() > TAOBAO_START - 4 * 86400 and odd["timestamp"].max() < TAOBAO_END + 4 * 86400
    # Grouped by user, users ascending; inside a user not in time order.
    users = df["user_id"]
    assert (users.diff().drop_nulls() >= 0).all()
    unsorted = df.group_by("user_id").agg((pl.col("timestamp").diff() < 0).any().alias("u"))["u"].mean()
    assert unsorted > 0.9
    # Raw ids are not dense 0..n-1.
    assert users.max() > users.n_unique() and df["item_id"].max() > df["item_id"].n_unique()
    assert df["category_id"].n_unique() > 20


def test_default_spec_purchases_and_shares(default_out: dict[str, Path]) -> None:
    df = _taobao(default_out["taobao"])
    share = df["behavior_type"].value_counts(normalize=True)
    share = dict(zip(share["behavior_type"], share["proportion"], strict=True))
    assert share["pv"] > 0.8 and 0.02 <= share["buy"] <= 0.07 and share["cart"] > share["fav"] > 0.01
    buys = df.group_by("user_id").agg((pl.col("behavior_type") == "buy").sum().alias("n"))
    assert buys.height == SyntheticSpec().users
    assert (buys["n"] >= 2).mean() >= 0.6
    # Activity is heavy-tailed: the busiest users have many times the median.
    per_user = df.group_by("user_id").len()["len"]
    assert per_user.max() > 8 * per_user.median() and per_user.min() >= 5


def test_sessions_are_separated_by_long_gaps(default_out: dict[str, Path]) -> None:
    df = _taobao(default_out["taobao"]).filter(pl.col("timestamp").is_between(TAOBAO_START, TAOBAO_END - 1))
    gaps = df.sort("user_id", "timestamp").select(pl.col("timestamp").diff().over("user_id")).to_series().drop_nulls()
    assert ((gaps > 20 * 60) & (gaps < 60 * 60)).sum() == 0  # within a session < 20 min, between > 60 min
    assert (gaps >= 60 * 60).sum() > 3 * SyntheticSpec().users  # several sessions per user
    assert gaps.median() < 300  # events inside a session are seconds to minutes apart


def _funnel_share(df: pl.DataFrame, buy: pl.Expr, prior: pl.Expr, same_day: str, earlier: str | None) -> float:
    buys = df.filter(buy).with_row_index("buy_id")
    before = df.filter(prior).select("user_id", "item_id", pl.col(same_day).alias("p_day"),
                                     *([pl.col(earlier).alias("p_t")] if earlier else []))
    j = buys.join(before, on=["user_id", "item_id"]).filter(pl.col(same_day) == pl.col("p_day"))
    if earlier:
        j = j.filter(pl.col("p_t") <= pl.col(earlier))
    return j["buy_id"].n_unique() / buys.height


def test_taobao_buys_follow_same_item_views_same_day(default_out: dict[str, Path]) -> None:
    df = _taobao(default_out["taobao"]).with_columns(day=(pl.col("timestamp") + 8 * 3600) // 86400)
    share = _funnel_share(df, pl.col("behavior_type") == "buy", pl.col("behavior_type") != "buy", "day", "timestamp")
    assert share > 0.7
    carts = _funnel_share(df, pl.col("behavior_type") == "buy", pl.col("behavior_type").is_in(["cart", "fav"]),
                          "day", "timestamp")
    assert carts > 0.5  # view -> cart -> buy on the same item is the common path


def test_tmall_domains_and_same_day_funnels(default_out: dict[str, Path]) -> None:
    df = pl.read_csv(default_out["tmall"] / "user_log_format1.csv")
    assert set(df["action_type"].unique()) == {0, 1, 2, 3}
    ts = df["time_stamp"]
    month, day = ts // 100, ts % 100
    assert ts.min() >= 511 and ts.max() <= 1112 and month.is_between(5, 11).all() and day.is_between(1, 31).all()
    assert 0.002 < df["brand_id"].is_null().mean() < 0.03
    assert df["seller_id"].null_count() == 0 and df["cat_id"].null_count() == 0
    per_item = df.group_by("item_id").agg(pl.col("seller_id").n_unique().alias("s"), pl.col("brand_id").n_unique().alias("b"))
    assert (per_item["s"] == 1).all() and (per_item["b"] == 1).all()
    assert (df["user_id"].diff().drop_nulls() < 0).mean() > 0.3  # shuffled, not grouped
    share = _funnel_share(df, pl.col("action_type") == 2, pl.col("action_type").is_in([0, 1, 3]), "time_stamp", None)
    assert share > 0.7
    buys = df.group_by("user_id").agg((pl.col("action_type") == 2).sum().alias("n"))
    assert (buys["n"] >= 2).mean() >= 0.6


def test_retailrocket_events_and_side_files(default_out: dict[str, Path]) -> None:
    d = default_out["retailrocket"]
    ev = pl.read_csv(d / "events.csv")
    assert set(ev["event"].unique()) == {"view", "addtocart", "transaction"}
    assert ev["timestamp"].is_between(RR_START_MS, RR_END_MS - 1).all()
    assert (ev["event"] == "transaction").eq(ev["transactionid"].is_not_null()).all()
    assert ev.schema["transactionid"] == pl.Int64
    # Roughly time-ordered with local disorder.
    back = ev["timestamp"].diff().drop_nulls()
    assert 0 < (back < 0).mean() < 0.5 and back.min() > -5 * 60_000
    assert _funnel_share(ev.rename({"visitorid": "user_id", "itemid": "item_id"}).with_columns(
        day=pl.col("timestamp") // 86_400_000), pl.col("event") == "transaction", pl.col("event") != "transaction",
        "day", "timestamp") > 0.7
    props = pl.concat([pl.read_csv(d / f"item_properties_part{i}.csv", schema_overrides={"value": pl.String})
                       for i in (1, 2)])
    p1 = pl.read_csv(d / "item_properties_part1.csv")["itemid"].unique()
    p2 = pl.read_csv(d / "item_properties_part2.csv")["itemid"].unique()
    assert p1.is_in(p2.implode()).sum() == 0 and p1.len() + p2.len() == SyntheticSpec().items
    cats = props.filter(pl.col("property") == "categoryid")
    assert cats["itemid"].n_unique() == SyntheticSpec().items
    # a few items were recategorized: an earlier snapshot with another category, in either file order
    moved = cats.filter(pl.len().over("itemid") > 1)
    assert 0.02 < moved["itemid"].n_unique() / SyntheticSpec().items < 0.08
    assert moved.group_by("itemid").agg(pl.col("timestamp").n_unique(), pl.col("value").n_unique()).select(
        (pl.col("timestamp") == 2) & (pl.col("value") == 2)).to_series().all()
    first_in_file = moved.group_by("itemid", maintain_order=True).agg(
        (pl.col("timestamp").first() == pl.col("timestamp").max()).alias("latest_first"))["latest_first"]
    assert 0 < first_in_file.mean() < 1  # the latest row comes first for some items, last for others
    assert ev["itemid"].is_in(cats["itemid"].implode()).all()
    assert set(props.filter(pl.col("property") == "available")["value"].unique()) == {"0", "1"}
    assert props.filter(pl.col("property") == "790")["value"].str.contains(r"^n\d+\.000$").all()
    tree = pl.read_csv(d / "category_tree.csv")
    roots = tree.filter(pl.col("parentid").is_null())["categoryid"]
    assert roots.len() == SyntheticSpec().topics
    assert tree.filter(pl.col("parentid").is_not_null())["parentid"].is_in(roots.implode()).all()
    assert cats["value"].cast(pl.Int64).is_in(tree["categoryid"].implode()).all()


def test_kuaisar_rows_items_and_text(default_out: dict[str, Path]) -> None:
    d = default_out["kuaisar"]
    df = pl.read_csv(d / "rec_inter.csv")
    raw = (d / "rec_inter.csv").read_text().split("\n")[1]
    assert re.fullmatch(r"\d+,\d+,\d+\.0,\d+\.0,2023-05-\d\d \d\d:\d\d:\d\d,\d{13}\.0(,[01]){6}", raw)
    assert df["timestamp"].is_between(KUAI_START_MS, KUAI_END_MS - 1).all()
    beijing = pl.from_epoch((df["timestamp"] // 1000).cast(pl.Int64) + 8 * 3600, time_unit="s").dt.strftime(
        "%Y-%m-%d %H:%M:%S")
    assert (beijing == df["time"]).all()
    assert (df["playing_time"] >= 0).all() and (df["duration_ms"] >= 1000).all()
    items = pl.read_csv(d / "item_features.csv")
    assert items.height == items["item_id"].n_unique() == SyntheticSpec().items
    assert df["item_id"].is_in(items["item_id"].implode()).all()
    assert items["caption"].str.contains(r"^\[\d+(, \d+)*\]$").all()
    assert set(items["item_type"].unique()) == {"NORMAL"} and set(items["upload_type"].unique()) == {"LongImport"}
    assert items["upload_time"].str.contains(r"^20\d\d-\d\d-\d\d$").all()
    assert items["first_level_category_name_en"].n_unique() == SyntheticSpec().topics
    assert (items["fourth_level_category_id"] == 0).all() and (items["fourth_level_category_name_en"] == "empty").all()
    assert 0.3 < (items["third_level_category_name_en"] == "empty").mean() < 0.95
    assert ((items["third_level_category_id"] == 0) == (items["third_level_category_name_en"] == "empty")).all()
    # Items of one topic share text: captions overlap more inside a first-level category than across.
    tok = items.select("first_level_category_id", pl.col("caption").str.extract_all(r"\d+").alias("t")).explode("t")
    tok = tok.filter(pl.col("t").cast(pl.Int64) >= 200)  # leave out the shared, topic-free tokens
    by_topic = tok.group_by("first_level_category_id").agg(pl.col("t").unique())
    sets = [set(x) for x in by_topic["t"]]
    inside = sum(len(s) for s in sets)
    assert len(set().union(*sets)) == inside  # topic token sets are disjoint: text is topic-specific
    assert items["second_level_category_id"].n_unique() > SyntheticSpec().topics


@pytest.mark.parametrize("case", ["kuaisar", "tenrec", "tenrec/article"])
def test_flag_formats_exposures_and_co_occurrence(case: str, default_out: dict[str, Path]) -> None:
    name = FILES[case][0]
    df = pl.read_csv(default_out[case] / name)
    share_col = "forward" if case == "kuaisar" else "share"
    flags = [c for c in df.columns if c in {"click", "forward", "like", "share", "follow", "search",
                                            "search_item_related", "read", "favorite"}]
    assert all(set(df[f].unique()) <= {0, 1} for f in flags)
    zero = (df.select(pl.sum_horizontal(flags)) == 0).to_series().mean()
    assert 0.3 <= zero <= 0.7
    for f in ("like", share_col, "follow"):
        assert df.filter(pl.col(f) == 1)["click"].mean() > 0.9
    assert df["like"].mean() > df[share_col].mean() > 0 and df["like"].mean() > df["follow"].mean() > 0
    # Exposures are grouped by user in interaction order.
    assert (df["user_id"].diff().drop_nulls() >= 0).all()
    if case == "tenrec/article":
        positive = pl.any_horizontal(pl.col(["click", "like", "share", "follow", "favorite"]) == 1)
        assert (df.select(positive).to_series() == (df["read"] == 1)).all()
        assert (df.filter(pl.col("read") == 0)["read_percentage"] == 0).all()
        assert df.filter(pl.col("read") == 1)["read_percentage"].is_between(1, 100).all()
    if case == "tenrec":
        assert (df.filter(pl.col("click") == 0)["watching_times"] == 0).all()


def test_interest_matched_exposures_get_more_positive_flags(default_out: dict[str, Path]) -> None:
    df = pl.read_csv(default_out["tenrec"] / "QK-video.csv")
    # A user's favourite category (most exposures) vs the rest: clicks and likes concentrate there.
    top = df.group_by("user_id", "video_category").len().sort("len", "video_category", descending=True).group_by(
        "user_id").first().select("user_id", top_cat="video_category")
    df = df.join(top, on="user_id").with_columns(fav=pl.col("video_category") == pl.col("top_cat"))
    rates = df.group_by("fav").agg(pl.col("click").mean(), pl.col("like").mean()).sort("fav")
    assert rates["click"][1] > 1.2 * rates["click"][0] and rates["like"][1] > 1.2 * rates["like"][0]


def test_behavior_set_splits_semantics(default_out: dict[str, Path]) -> None:
    d = default_out["behavior_set_splits"]
    train, valid, between, test = (_splits(d, f) for f in ("train.txt", "valid.txt", "between_val_test.txt", "test.txt"))
    users, items = SyntheticSpec().users, SyntheticSpec().items
    nonzero = pl.sum_horizontal("b1", "b2", "b3", "b4") > 0
    for df in (train, valid, between, test):
        assert df["user"].is_between(1, users).all() and df["item"].is_between(1, items).all()
    for df in (valid, between, test):
        assert df.filter(~nonzero).height == 0  # all-zero lines only in train, and only a few
    assert 0 < train.filter(~nonzero).height < 0.01 * train.height
    # train and between interleave blocks of users' lines; valid and test are one line per user, by user
    assert (train["user"].diff().drop_nulls() < 0).any() and (between["user"].diff().drop_nulls() < 0).any()
    assert (valid["user"].diff().drop_nulls() > 0).all() and (test["user"].diff().drop_nulls() > 0).all()
    click_only = (pl.col("b1") == 1) & (pl.col("b2") + pl.col("b3") + pl.col("b4") == 0)
    assert test["user"].n_unique() == test.height > 0.7 * users
    assert valid["user"].n_unique() == valid.height > 0.7 * users
    assert 0 < len(set(valid["user"]) ^ set(test["user"])) < 0.05 * users  # a few lose one of the two lines
    assert valid.filter(click_only).height == 0 and test.filter(click_only).height == 0
    assert between.height > 0 and between.filter(~click_only).height == 0
    assert set(between["user"]) <= set(valid["user"]) | set(test["user"])
    assert set(valid["item"]) | set(test["item"]) <= set(train["item"])
    assert train.filter(click_only).height > 0 and train.filter(~click_only & nonzero).height > 0
    # Users outside valid and test hold fewer than two non-click-only sets, all in train.
    rest = train.filter(~pl.col("user").is_in(pl.concat([test["user"], valid["user"]]).implode()))
    assert rest.group_by("user").agg((~click_only & nonzero).sum().alias("n"))["n"].max() <= 1
    # the published release's flag mix: 30% of train lines without a click, like/click 0.73,
    # share/click 0.063, follow/click 0.046 (column sums 93,302 / 67,700 / 5,846 / 4,264)
    sums = train.select(pl.col("b1", "b2", "b3", "b4").sum()).row(0)
    assert 0.25 < (train["b1"] == 0).mean() < 0.35
    assert 0.6 < sums[1] / sums[0] < 0.85 and 0.04 < sums[2] / sums[0] < 0.09 and 0.03 < sums[3] / sums[0] < 0.06
    # most users' train lines come in several blocks (4,691 of the release's 5,081 users)
    blocks = train.with_columns((pl.col("user") != pl.col("user").shift()).fill_null(True).cum_sum().alias("block"))
    assert blocks.group_by("user").agg(pl.col("block").n_unique() > 1)["block"].mean() > 0.75


# ---------------------------------------------------------------- sizing, CLI, robustness
@pytest.mark.parametrize("fmt", ["taobao", "kuaisar", "behavior_set_splits"])
def test_spec_for_rows_is_within_25_percent(fmt: str, tmp_path: Path) -> None:
    spec = spec_for_rows(fmt, 200_000, seed=3)
    assert spec.seed == 3 and spec.items > spec.users
    paths = write_synthetic(fmt, tmp_path, spec)
    events = [p for p in paths if p.name not in {"item_features.csv"}]
    rows = sum(sum(1 for _ in p.open("rb")) - (HEADERS[p.name] is not None) for p in events)
    assert 150_000 <= rows <= 250_000
    big = spec_for_rows("taobao", 100_000_000)
    assert 1_000_000 < big.users < 2_500_000  # sizing alone is cheap and sane at benchmark scale


def test_cli_writes_files_to_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--format", "tenrec", "--variant", "article", "--out", str(tmp_path / "a"),
                 "--users", "40", "--items", "60", "--seed", "5"]) == 0
    out, err = capsys.readouterr()
    assert out.split() == [str(tmp_path / "a" / "QK-article.csv")] and "synthetic tenrec" in err
    assert (tmp_path / "a" / "QK-article.csv").read_text().startswith(HEADERS["QK-article.csv"] + "\n")
    with pytest.raises(SystemExit):
        main(["--format", "nope", "--out", str(tmp_path / "b")])


def test_cli_module_entry_point_with_rows(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-m", "pipelines.synthetic", "--format", "taobao", "--rows", "20000",
                          "--out", str(tmp_path / "o")], capture_output=True, text=True, env=env, check=True)
    assert res.stdout.strip() == str(tmp_path / "o" / "UserBehavior.csv")
    rows = sum(1 for _ in (tmp_path / "o" / "UserBehavior.csv").open("rb"))
    assert 15_000 <= rows <= 25_000


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(users=st.integers(1, 80), items_extra=st.integers(0, 200), topics=st.integers(1, 30),
       seed=st.integers(0, 2**31), epu=st.sampled_from([2.0, 15.0, 400.0]),
       fmt=st.sampled_from(["taobao", "tmall", "behavior_set_splits"]))
def test_any_small_spec_writes_valid_output(tmp_path_factory: pytest.TempPathFactory, users: int, items_extra: int,
                                            topics: int, seed: int, epu: float, fmt: str) -> None:
    spec = SyntheticSpec(users=users, items=topics + items_extra, topics=topics, seed=seed, events_per_user=epu)
    d = tmp_path_factory.mktemp("h")
    write_synthetic(fmt, d, spec)
    if fmt == "taobao":
        df = _taobao(d)
        assert df["user_id"].n_unique() == users
        inside = df["timestamp"].is_between(TAOBAO_START, TAOBAO_END - 1).mean()
        assert inside >= 0.99 or df.height < 300
    elif fmt == "tmall":
        df = pl.read_csv(d / "user_log_format1.csv")
        assert df["time_stamp"].is_between(511, 1112).all() and df["user_id"].n_unique() == users
    else:
        test, valid, train = _splits(d, "test.txt"), _splits(d, "valid.txt"), _splits(d, "train.txt")
        assert test["user"].to_list() == sorted(set(test["user"])) and valid["user"].to_list() == sorted(set(valid["user"]))
        assert set(test["item"]) | set(valid["item"]) <= set(train["item"])


def test_chunked_output_keeps_order_and_bucket_sort_is_exact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pipelines.synthetic as syn

    monkeypatch.setattr(syn, "CHUNK_USERS", 64)  # many chunks on a small spec
    spec = SyntheticSpec(users=300, items=500, seed=11)
    df = _taobao(Path(write_synthetic("taobao", tmp_path / "t", spec)[0].parent))
    assert (df["user_id"].diff().drop_nulls() >= 0).all() and df["user_id"].n_unique() == 300
    one = write_synthetic("retailrocket", tmp_path / "one", spec)[0].read_bytes()
    monkeypatch.setattr(syn, "RR_BUCKET_ROWS", 1_000)  # ~18 on-disk time buckets
    many = write_synthetic("retailrocket", tmp_path / "many", spec)
    assert many[0].read_bytes() == one
    assert not [p for p in (tmp_path / "many").iterdir() if p.name.startswith(".")]
