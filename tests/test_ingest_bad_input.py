"""Every bad-input class lands in quarantine with file, line and reason; fatal problems are one clear error."""

from __future__ import annotations

import pytest

import polars as pl

from conftest import run_ingest, with_options, write
from pipelines.ingest.core import ingest_dataset
from pipelines.ingest.errors import IngestError
from schemas import columns as c

GOOD = "1,10,7,pv,1511600000\n"


def quarantine_of(registry, tmp_path, body: str, dataset="taobao", name="UserBehavior.csv", header=""):
    cfg = with_options(registry.get(dataset), bad_row_threshold=1.0)
    write(tmp_path / "raw", name, header + body)
    s, t = run_ingest(cfg, tmp_path / "raw", tmp_path / "out")
    return s, t["quarantine"].select(c.SOURCE_FILE, c.SOURCE_LINE, c.REASON, c.RAW_TEXT).rows()


@pytest.mark.parametrize(
    ("bad_line", "reason"),
    [
        ("1,10,7,pv", "wrong column count: expected 5, got 4"),
        ("1,10,7,pv,1511600000,9", "wrong column count: expected 5, got 6"),
        ("x1,10,7,pv,1511600000", "unparsable user_id 'x1'"),
        ("1,10.5,7,pv,1511600000", "unparsable item_id '10.5'"),
        ("+1,10,7,pv,1511600000", "unparsable user_id '+1'"),
        ("1,-0,7,pv,1511600000", "unparsable item_id '-0'"),
        ("1,-10,7,pv,1511600000", "unparsable item_id '-10'"),
        ("1,1 0,7,pv,1511600000", "unparsable item_id '1 0'"),
        ("99999999999999999999,10,7,pv,1511600000", "unparsable user_id '99999999999999999999'"),
        (",10,7,pv,1511600000", "null user_id"),
        ("1,,7,pv,1511600000", "null item_id"),
        ("1,10,7,click,1511600000", "unknown behavior 'click' (vocabulary: pv, fav, cart, buy)"),
        ("1,10,7,pv,2017-11-26", "unparsable timestamp '2017-11-26'"),
        ("1,10,7,pv,", "null timestamp"),
        ("1,10,7,pv,1000000000", "timestamp '1000000000' outside the valid range [2017-11-25, 2017-12-04)"),
        ("", "empty line"),
    ],
)
def test_each_bad_row_class_is_quarantined_with_line_and_reason(registry, tmp_path, bad_line, reason):
    s, rows = quarantine_of(registry, tmp_path, GOOD + bad_line + "\n" + GOOD.replace("10", "11"))
    assert rows == [("UserBehavior.csv", 2, reason, bad_line)]
    assert (s.rows_read, s.rows_kept, s.rows_quarantined) == (3, 2, 1)


def test_flag_format_rejects_non_binary_flags_and_bad_mmdd(registry, tmp_path):
    header = "user_id,item_id,click,follow,like,share,video_category,watching_times,gender,age\n"
    _, rows = quarantine_of(registry, tmp_path, "1,2,1,0,0,0,3,1,1,2\n1,2,yes,0,0,0,3,1,1,2\n",
                            dataset="tenrec_qk_video", name="QK-video.csv", header=header)
    assert rows == [("QK-video.csv", 3, "unparsable click flag 'yes' (expected 0 or 1)", "1,2,yes,0,0,0,3,1,1,2")]
    header = "user_id,item_id,cat_id,seller_id,brand_id,time_stamp,action_type\n"
    _, rows = quarantine_of(registry, tmp_path / "t", "7,3,11,21,1,1111,2\n7,3,11,21,1,1332,2\n",
                            dataset="tmall", name="user_log_format1.csv", header=header)
    assert rows == [("user_log_format1.csv", 3, "unparsable time_stamp '1332'", "7,3,11,21,1,1332,2")]


def test_counts_reconcile_with_duplicates_and_bad_rows(registry, tmp_path):
    body = GOOD + GOOD + "1,10,7,buy,1511600000\n" + "bad\n" + GOOD.replace("pv", "cart")
    s, rows = quarantine_of(registry, tmp_path, body)
    assert (s.rows_read, s.rows_kept, s.rows_quarantined, s.duplicates_dropped) == (5, 3, 1, 1)
    assert s.reconciles and len(rows) == 1


def test_duplicates_can_be_kept(registry, tmp_path):
    cfg = with_options(registry.get("taobao"), drop_exact_duplicates=False)
    write(tmp_path / "raw", "UserBehavior.csv", GOOD * 3)
    s, _ = run_ingest(cfg, tmp_path / "raw", tmp_path / "out")
    assert (s.rows_kept, s.duplicates_dropped) == (3, 0)


def test_missing_file_is_one_clear_error(registry, tmp_path):
    (tmp_path / "raw").mkdir()
    with pytest.raises(IngestError, match=r"missing raw file\(s\) \['UserBehavior.csv'\]"):
        ingest_dataset(registry.get("taobao"), tmp_path / "raw", tmp_path / "out", log=lambda _: None)


def test_empty_file_and_header_only_file(registry, tmp_path):
    write(tmp_path / "raw", "UserBehavior.csv", "")
    with pytest.raises(IngestError, match="UserBehavior.csv: file is empty"):
        ingest_dataset(registry.get("taobao"), tmp_path / "raw", tmp_path / "out", log=lambda _: None)
    write(tmp_path / "raw2", "user_log_format1.csv", "user_id,item_id,cat_id,seller_id,brand_id,time_stamp,action_type\n")
    with pytest.raises(IngestError, match="user_log_format1.csv: no data rows"):
        ingest_dataset(registry.get("tmall"), tmp_path / "raw2", tmp_path / "out", log=lambda _: None)


def test_wrong_header_names_the_missing_columns(registry, tmp_path):
    write(tmp_path / "raw", "user_log_format1.csv", "user,item,cat_id,seller_id,brand_id,time_stamp,action_type\n1,2,3,4,5,1111,0\n")
    with pytest.raises(IngestError, match=r"wrong header: missing column\(s\) \['user_id', 'item_id'\]"):
        ingest_dataset(registry.get("tmall"), tmp_path / "raw", tmp_path / "out", log=lambda _: None)


def test_too_many_bad_rows_fails_and_keeps_last_good_outputs(registry, tmp_path):
    cfg = registry.get("taobao")  # default threshold 0.1%
    out = tmp_path / "out"
    write(tmp_path / "raw", "UserBehavior.csv", GOOD * 5)
    run_ingest(cfg, tmp_path / "raw", out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    write(tmp_path / "raw", "UserBehavior.csv", GOOD + "oops\n" + GOOD)
    with pytest.raises(IngestError) as err:
        ingest_dataset(cfg, tmp_path / "raw", out, log=lambda _: None)
    msg = str(err.value)
    assert "1 of 3 rows" in msg and "UserBehavior.csv:2: wrong column count: expected 5, got 1" in msg
    assert "bad_row_threshold" in msg
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing half-written or replaced
    assert not [p for p in tmp_path.iterdir() if "staging" in p.name]


def test_a_crash_mid_run_leaves_previous_outputs(registry, tmp_path, monkeypatch):
    cfg = registry.get("taobao")
    out = tmp_path / "out"
    write(tmp_path / "raw", "UserBehavior.csv", GOOD)
    run_ingest(cfg, tmp_path / "raw", out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    write(tmp_path / "raw", "UserBehavior.csv", GOOD + GOOD.replace("1,", "2,", 1))

    import pipelines.ingest.core as core

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(core, "_side_info", boom)  # fails after events were staged
    with pytest.raises(RuntimeError, match="disk full"):
        ingest_dataset(cfg, tmp_path / "raw", out, log=lambda _: None)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_the_id_check_without_a_regular_expression_matches_plain_digits():
    """``unparsable`` ids are tested as "no integer, or a leading sign" (cheaper per row than the
    pattern ^[0-9]+$ within Int64); the two definitions agree on every odd spelling of a number."""
    from pipelines.ingest.lines import signed

    texts = ["12", "007", "0", "+7", "-3", "-0", "+", "-", "+-1", "--1", "1-", "1+1", " 5", "5 ", "1 2", "1_000",
             "1e3", "0x1F", "0b1", "1.0", "1,2", "", "\t12", "12\t", "\u0661\u0662", "\uff11\uff12",
             "9223372036854775807", "9223372036854775808", "-9223372036854775808", "٣"]
    frame = pl.DataFrame({"f": texts})
    got = frame.select(pl.col("f").str.to_integer(strict=False).is_null() | signed(pl.col("f"))).to_series()
    want = frame.select(pl.col("f").str.to_integer(strict=False).is_null()
                        | ~pl.col("f").str.contains(r"^[0-9]+$")).to_series()
    assert got.to_list() == want.to_list()


def test_exact_duplicates_keep_the_first_row_in_frame_order():
    from pipelines.ingest.core import _drop_exact_duplicates

    keys = [c.USER_ID, c.ITEM_ID, c.BEHAVIORS, c.TIMESTAMP]
    rows = [(1, 5, 1, 100), (1, 5, 1, 100), (2, 5, 1, 100), (1, 5, 2, 100), (1, 5, 1, 100), (1, 6, 1, 100),
            (2, 5, 1, 100), (1, 5, 1, 101)]
    frame = pl.DataFrame(rows, schema=keys, orient="row").with_row_index("line")
    kept = _drop_exact_duplicates(frame)
    assert kept["line"].to_list() == [0, 2, 3, 5, 7]
    assert kept.equals(frame.unique(subset=keys, keep="first", maintain_order=True))
    unique = frame.filter(pl.col("line").is_in([0, 2, 3]))
    assert _drop_exact_duplicates(unique) is unique  # nothing repeated: the frame as it is


def test_a_file_without_whitespace_skips_trimming_with_the_same_result(registry, tmp_path, monkeypatch):
    """A pure-ASCII file with no whitespace bytes is parsed without trimming its fields (nothing to
    trim): every table equals the one the trimming parse gives, bad rows and blank lines included."""
    import pipelines.ingest.lines as lines

    body = GOOD + "\n1,10,7,pv\n+1,10,7,pv,1511600000\n1,10,7,click,1511600000\n,,,,\n" + GOOD.replace("10", "11") * 2
    s_fast, fast = quarantine_of(registry, tmp_path / "fast", body)
    assert not lines.inspect_bytes(tmp_path / "fast" / "raw" / "UserBehavior.csv").needs_trim
    real = lines.inspect_bytes
    monkeypatch.setattr(lines, "inspect_bytes", lambda path, **kw: real(path, **kw)._replace(needs_trim=True))
    s_trim, trimmed = quarantine_of(registry, tmp_path / "trim", body)
    assert fast == trimmed and [r[2] for r in fast][:2] == ["empty line", "wrong column count: expected 5, got 4"]
    assert s_fast.rows_kept == s_trim.rows_kept == 2
    out_fast, out_trim = tmp_path / "fast" / "out", tmp_path / "trim" / "out"
    for name in ("events.parquet", "user_id_map.parquet", "item_id_map.parquet"):
        assert pl.read_parquet(out_fast / name).equals(pl.read_parquet(out_trim / name)), name


def test_rejected_lines_are_read_again_from_the_right_file_and_line(registry, tmp_path):
    """The main pass keeps only a rejected row's file and line; its raw text and reason come from a
    second scan of those lines. Two files, one clean (no trimming) and one with CRLF endings and
    padded fields (trimmed), each with bad lines at the same line numbers."""
    cfg = with_options(registry.get("taobao").model_copy(update={"files": {"events": "events_*.csv"}}),
                       bad_row_threshold=1.0)
    write(tmp_path / "raw", "events_1.csv", GOOD + "x1,10,7,pv,1511600000\n" + GOOD.replace("pv", "buy") + "1,10\n")
    crlf = (" 2 ,10,7,pv,1511600001\r\n" + "2,10,7,click,1511600001\r\n" + "2,11,7,pv,1511600002\r\n"
            + "2,1 1\r\n")
    (tmp_path / "raw" / "events_2.csv").write_bytes(crlf.encode())
    s, t = run_ingest(cfg, tmp_path / "raw", tmp_path / "out")
    rows = t["quarantine"].select(c.SOURCE_FILE, c.SOURCE_LINE, c.REASON, c.RAW_TEXT).rows()
    assert rows == [
        ("events_1.csv", 2, "unparsable user_id 'x1'", "x1,10,7,pv,1511600000"),
        ("events_1.csv", 4, "wrong column count: expected 5, got 2", "1,10"),
        ("events_2.csv", 2, "unknown behavior 'click' (vocabulary: pv, fav, cart, buy)", "2,10,7,click,1511600001"),
        ("events_2.csv", 4, "wrong column count: expected 5, got 2", "2,1 1"),
    ]
    assert (s.rows_read, s.rows_kept, s.rows_quarantined) == (8, 4, 4)
    assert s.quarantine_reasons == {"wrong column count": 2, "unparsable user_id": 1, "unknown behavior": 1}
