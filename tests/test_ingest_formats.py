"""Each adapter on small files in the exact published format, with outputs worked out by hand."""

from __future__ import annotations

from datetime import datetime, timezone

import polars as pl

from conftest import run_ingest, with_options, write
from schemas import columns as c


def ms(text: str, offset_hours: int = 0) -> int:
    """Local time string -> Unix ms (UTC)."""
    dt = datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc)
    return int(dt.timestamp() * 1000) - offset_hours * 3_600_000


def test_taobao(registry, tmp_path):
    cfg = registry.get("taobao")
    # no header: user_id,item_id,category_id,behavior_type,timestamp (seconds); not time-sorted
    write(tmp_path / "raw", "UserBehavior.csv",
          "900,55,7,pv,1511600100\n"
          "900,55,7,buy,1511600300\n"
          "100,55,7,cart,1511600200\n"
          "900,44,8,fav,1511600000\n")
    s, t = run_ingest(cfg, tmp_path / "raw", tmp_path / "out")
    ev = t["events"]
    # dense ids in raw-id order: users 100->0, 900->1; items 44->0, 55->1; bits pv=1 fav=2 cart=4 buy=8.
    # Rows are grouped by user and keep file order within a user (never re-sorted by time or item).
    assert ev.select(c.USER_ID, c.ITEM_ID, c.BEHAVIORS, c.TIMESTAMP, c.SOURCE_LINE).rows() == [
        (0, 1, 4, 1511600200_000, 3),
        (1, 1, 1, 1511600100_000, 1),
        (1, 1, 8, 1511600300_000, 2),
        (1, 0, 2, 1511600000_000, 4),
    ]
    assert ev[c.EVENT_ORDER].to_list() == [3, 1, 2, 4]
    assert ev[c.SOURCE_FILE].unique().to_list() == ["UserBehavior.csv"]
    assert t["item_side_info"].select(c.ITEM_ID, c.RAW_ITEM_ID, c.CATEGORY_ID).rows() == [(0, 44, "8"), (1, 55, "7")]
    assert (s.rows_read, s.rows_kept, s.rows_quarantined, s.duplicates_dropped) == (4, 4, 0, 0)


def test_the_valid_window_is_in_the_dataset_s_local_time(registry, tmp_path):
    """Taobao's window is 2017-11-25..2017-12-03 in China time (UTC+8): it opens at 2017-11-24
    16:00 UTC and closes at 2017-12-03 16:00 UTC; one second either side is quarantined."""
    cfg = with_options(registry.get("taobao"), bad_row_threshold=0.6)
    opens, closes = 1511539200, 1512316800  # 2017-11-25 00:00 and 2017-12-04 00:00 at UTC+8
    write(tmp_path / "raw", "UserBehavior.csv",
          f"1,5,7,pv,{opens - 1}\n1,5,7,pv,{opens}\n1,5,7,pv,{closes - 1}\n1,5,7,pv,{closes}\n")
    s, t = run_ingest(cfg, tmp_path / "raw", tmp_path / "out")
    assert t["events"][c.TIMESTAMP].to_list() == [opens * 1000, (closes - 1) * 1000]
    assert t["quarantine"].select(c.SOURCE_LINE, c.REASON).rows() == [
        (1, f"timestamp '{opens - 1}' outside the valid range [2017-11-25, 2017-12-04)"),
        (4, f"timestamp '{closes}' outside the valid range [2017-11-25, 2017-12-04)")]


def test_tmall_day_granularity_and_codes(registry, tmp_path):
    cfg = registry.get("tmall")
    write(tmp_path / "raw", "user_log_format1.csv",
          "user_id,item_id,cat_id,seller_id,brand_id,time_stamp,action_type\n"
          "7,3,11,21,,1111,2\n"      # purchase (2), empty brand
          "7,3,11,21,,1111,0\n"      # click on the same day, later in the file
          "8,4,12,22,31,0511,3\n")   # favourite (3), zero-padded mmdd
    s, t = run_ingest(cfg, tmp_path / "raw", tmp_path / "out")
    ev = t["events"]
    # vocabulary order click, fav, cart, buy -> bits 1, 2, 4, 8; action 2 is purchase, 3 is favourite
    assert ev[c.BEHAVIORS].to_list() == [8, 1, 2]
    # day granularity: local (UTC+8) midnight of 2015-11-11 and 2015-05-11
    assert ev[c.TIMESTAMP].to_list() == [ms("2015-11-11 00:00:00", 8)] * 2 + [ms("2015-05-11 00:00:00", 8)]
    assert ev[c.EVENT_ORDER].to_list() == [2, 3, 4]  # header is line 1
    side = t["item_side_info"].sort(c.ITEM_ID)
    assert side.select(c.CATEGORY_ID, c.SELLER_ID, c.BRAND_ID).rows() == [("11", "21", None), ("12", "22", "31")]
    assert "day granularity" in s.time_note


def test_retailrocket_ms_and_side_files(registry, tmp_path):
    cfg = registry.get("retailrocket")
    raw = tmp_path / "raw"
    write(raw, "events.csv",
          "timestamp,visitorid,event,itemid,transactionid\n"
          "1433221332117,257597,view,355908,\n"
          "1433224214164,257597,addtocart,355908,\n"
          "1433224214999,257597,transaction,355908,4000\n")
    write(raw, "item_properties_part1.csv",
          "timestamp,itemid,property,value\n"
          "1431226800000,355908,categoryid,1016\n"
          "1435460400000,355908,categoryid,1017\n"   # later value wins
          "1431226800000,355908,790,n5160.000\n")
    write(raw, "item_properties_part2.csv", "timestamp,itemid,property,value\n1431226800000,355908,available,1\n")
    write(raw, "category_tree.csv", "categoryid,parentid\n1017,200\n200,\n1016,200\n")
    _, t = run_ingest(cfg, raw, tmp_path / "out")
    assert t["events"][c.BEHAVIORS].to_list() == [1, 2, 4]
    assert t["events"][c.TIMESTAMP].to_list() == [1433221332117, 1433224214164, 1433224214999]
    assert t["item_side_info"].select(c.CATEGORY_ID, c.CATEGORY_PATH).rows() == [("1017", "200 > 1017")]


def test_retailrocket_category_is_the_latest_snapshot_whatever_the_file_order(registry, tmp_path):
    """The property files are weekly snapshots, not time-sorted: the latest `categoryid` wins even
    when it comes first; at one timestamp, the later row in file order (part1, then part2)."""
    cfg = registry.get("retailrocket")
    raw = tmp_path / "raw"
    write(raw, "events.csv", "timestamp,visitorid,event,itemid,transactionid\n"
                             "1433221332117,1,view,10,\n1433221332118,1,view,20,\n")
    head = "timestamp,itemid,property,value\n"
    write(raw, "item_properties_part1.csv", head + "1435460400000,10,categoryid,1017\n"   # latest, first
                                           "1431226800000,10,categoryid,1016\n"
                                           "1433041200000,20,categoryid,5\n")
    write(raw, "item_properties_part2.csv", head + "1433646000000,10,categoryid,1015\n"
                                           "1433041200000,20,categoryid,4\n")        # same time: later file
    write(raw, "category_tree.csv", "categoryid,parentid\n1017,200\n200,\n1016,200\n1015,200\n5,\n4,\n")
    _, t = run_ingest(cfg, raw, tmp_path / "out")
    assert t["item_side_info"].select(c.RAW_ITEM_ID, c.CATEGORY_ID, c.CATEGORY_PATH).rows() == [
        (10, "1017", "200 > 1017"), (20, "4", "4")]
    # many ties (an unstable sort scrambles them at this size): 100 items, 500 rows each at one time
    items = [i % 100 for i in range(50_000)]
    write(raw, "events.csv", "timestamp,visitorid,event,itemid,transactionid\n"
          + "".join(f"1433221332117,1,view,{i},\n" for i in range(100)))
    write(raw, "item_properties_part1.csv", head + "".join(f"1433041200000,{i},categoryid,{n}\n"
                                                           for n, i in enumerate(items)))
    write(raw, "item_properties_part2.csv", head)
    _, t = run_ingest(cfg, raw, tmp_path / "many")
    assert t["item_side_info"][c.CATEGORY_ID].to_list() == [str(49_900 + i) for i in range(100)]


def test_daily_files_whose_headers_differ_are_checked_against_their_own_header(registry, tmp_path):
    """A later drop without the transactionid column: its rows have four fields, as its header says;
    each file's column count comes from its own header (not the first file's), and a short line is
    quarantined with its file's count. The incremental run over the second file does the same."""
    cfg = registry.get("retailrocket").model_copy(
        update={"files": {"events": "events_*.csv"}, "ingest": registry.get("retailrocket").ingest.model_copy(
            update={"bad_row_threshold": 0.5})})
    raw = tmp_path / "raw"
    write(raw, "events_1.csv", "timestamp,visitorid,event,itemid,transactionid\n"
                               "1433221332117,257597,view,355908,\n1433224214164,257597,addtocart,355908,\n")
    run_ingest(cfg, raw, tmp_path / "inc")
    write(raw, "events_2.csv", "timestamp,visitorid,event,itemid\n"
                               "1433224214999,257597,transaction,355908\n1433224215000,257597,view\n"
                               "1433224216000,1,view,355908\n")
    for out in ("inc", "full"):
        s, t = run_ingest(cfg, raw, tmp_path / out)
        assert s.mode == ("incremental" if out == "inc" else "full")
        assert t["events"][c.BEHAVIORS].to_list() == [1, 2, 4, 1]
        assert t["quarantine"].select(c.SOURCE_FILE, c.SOURCE_LINE, c.REASON).rows() == [
            ("events_2.csv", 3, "wrong column count: expected 4, got 3")]


def _tenrec_drops(registry):
    cfg = registry.get("tenrec_qk_article")
    return cfg.model_copy(update={"files": {"events": "QK-article_*.csv"}})


WITH_CATEGORIES = ("user_id,item_id,read,click,like,share,follow,favorite,category_first,category_second\n"
                   "1,5,1,1,0,0,0,0,news,sports\n2,6,1,0,0,0,0,0,news,tech\n")
WITHOUT_CATEGORIES = "item_id,user_id,read,click,like,share,follow,favorite\n7,1,1,0,0,0,0,0\n5,3,0,1,0,0,0,0\n"


def test_daily_files_with_other_optional_columns_take_their_union(registry, tmp_path):
    """A Tenrec drop without the category columns: its rows have null categories, the item seen in
    both files keeps the earlier file's; the incremental run over it writes the full rebuild's bytes."""
    cfg = _tenrec_drops(registry)
    raw = tmp_path / "raw"
    write(raw, "QK-article_1.csv", WITH_CATEGORIES)
    run_ingest(cfg, raw, tmp_path / "inc")
    write(raw, "QK-article_2.csv", WITHOUT_CATEGORIES)
    for out in ("inc", "full"):
        s, t = run_ingest(cfg, raw, tmp_path / out)
        assert s.mode == ("incremental" if out == "inc" else "full"), s.reason
        assert s.rows_kept == 4 and s.rows_quarantined == 0
        assert t["item_side_info"].select(c.RAW_ITEM_ID, c.CATEGORY_ID, c.CATEGORY_PATH).rows() == [
            (5, "sports", "news > sports"), (6, "tech", "news > tech"), (7, None, None)]
    for name in ("events", "user_id_map", "item_id_map", "item_side_info", "quarantine"):
        assert (tmp_path / "inc" / f"{name}.parquet").read_bytes() == (tmp_path / "full" / f"{name}.parquet").read_bytes()


def test_a_drop_that_brings_new_optional_columns_rebuilds_in_full(registry, tmp_path):
    cfg = _tenrec_drops(registry)
    raw = tmp_path / "raw"
    write(raw, "QK-article_1.csv", WITHOUT_CATEGORIES)
    run_ingest(cfg, raw, tmp_path / "out")
    write(raw, "QK-article_2.csv", WITH_CATEGORIES)
    s, t = run_ingest(cfg, raw, tmp_path / "out")
    assert s.mode == "full" and "category" in s.reason and "QK-article_2.csv" in s.reason
    # ids by first file: 5 and 7 from the first file, 6 from the second; 5's category is the one seen
    assert t["item_side_info"].select(c.RAW_ITEM_ID, c.CATEGORY_ID).rows() == [(5, "sports"), (7, None), (6, "tech")]


def test_kuaisar_flags_float_ms_and_english_categories(registry, tmp_path):
    cfg = registry.get("kuaisar")
    raw = tmp_path / "raw"
    write(raw, "rec_inter.csv",
          "user_id,item_id,playing_time,duration_ms,time,timestamp,click,forward,like,follow,search,search_item_related\n"
          "1,10,60792.0,45400.0,2023-05-22 15:53:20,1684742000123.0,1,0,1,0,0,0\n"
          "1,11,100.0,45400.0,2023-05-22 15:54:20,1684742060000.0,0,0,0,0,0,0\n"
          "2,10,500.0,45400.0,2023-05-22 16:00:00,1684742400000.0,1,1,0,1,0,1\n")
    write(raw, "item_features.csv",
          "item_id,caption,author_id,item_type,upload_time,upload_type,first_level_category_id,first_level_category_name,"
          "first_level_category_name_en,second_level_category_id,second_level_category_name,second_level_category_name_en,"
          "third_level_category_id,third_level_category_name,third_level_category_name_en,fourth_level_category_id,"
          "fourth_level_category_name,fourth_level_category_name_en\n"
          '10,"[1, 213, 24]",5,NORMAL,2023-04-22,LongImport,9,x,Funny,136,y,Funny joke,0,z,empty,0,z,empty\n'
          '11,"[7]",6,NORMAL,2023-04-22,LongImport,3,x,Food,0,y,empty,0,z,empty,0,z,empty\n')
    s, t = run_ingest(cfg, raw, tmp_path / "out")
    # vocabulary click, like, forward, follow, search, search_item_related -> bits 1,2,4,8,16,32
    assert t["events"][c.BEHAVIORS].to_list() == [1 | 2, 0, 1 | 4 | 8 | 32]
    assert t["events"][c.TIMESTAMP].to_list() == [1684742000123, 1684742060000, 1684742400000]
    assert s.exposures == 1
    side = t["item_side_info"]
    assert side.select(c.CATEGORY_ID, c.CATEGORY_PATH, c.CAPTION_TOKENS).rows() == [
        ("136", "Funny > Funny joke", "[1, 213, 24]"),
        ("3", "Food", "[7]"),
    ]


def test_tenrec_maps_columns_by_header_and_has_no_time(registry, tmp_path):
    cfg = registry.get("tenrec_qk_article")
    # a column order different from the datasheet: mapping is by header name
    write(tmp_path / "raw", "QK-article.csv",
          "item_id,user_id,favorite,read,like,click,share,follow,category_first,category_second,gender,age\n"
          "5,1,0,1,1,1,0,0,news,sports,1,3\n"
          "6,1,0,0,0,0,0,0,news,tech,1,3\n"
          "5,2,1,1,0,0,0,0,news,sports,2,4\n")
    s, t = run_ingest(cfg, tmp_path / "raw", tmp_path / "out")
    # vocabulary read, click, like, share, follow, favorite -> bits 1,2,4,8,16,32
    assert t["events"].select(c.USER_ID, c.ITEM_ID, c.BEHAVIORS).rows() == [(0, 0, 1 | 2 | 4), (0, 1, 0), (1, 0, 1 | 32)]
    assert t["events"][c.TIMESTAMP].null_count() == 3
    assert "file order" in s.time_note
    assert t["item_side_info"].select(c.CATEGORY_ID, c.CATEGORY_PATH).rows() == [("sports", "news > sports"), ("tech", "news > tech")]
    assert s.duplicates_dropped == 0  # without time, repeated rows are distinct exposures


def test_tenrec_repeated_rows_are_not_duplicates(registry, tmp_path):
    cfg = registry.get("tenrec_qk_video")
    write(tmp_path / "raw", "QK-video.csv",
          "user_id,item_id,click,follow,like,share,video_category,watching_times,gender,age\n"
          "1,2,1,0,0,0,3,1,1,2\n1,2,1,0,0,0,3,1,1,2\n")
    s, t = run_ingest(cfg, tmp_path / "raw", tmp_path / "out")
    assert s.rows_kept == 2 and t["events"][c.BEHAVIORS].to_list() == [1, 1]


def test_behavior_set_splits_crlf_and_file_order(registry, tmp_path):
    cfg = registry.get("blade_qk_video")
    raw = tmp_path / "raw"
    write(raw, "train.txt", "1,3,1,0,0,0\n1,4,1,1,0,0\n2,3,0,0,0,0\n", newline="\r\n")  # all-zero row kept as exposure
    write(raw, "valid.txt", "1,5,1,0,1,0\n", newline="\r\n")
    write(raw, "between_val_test.txt", "1,6,1,0,0,0\n", newline="\r\n")
    write(raw, "test.txt", "1,7,1,0,0,1\n", newline="\r\n")
    s, t = run_ingest(cfg, raw, tmp_path / "out")
    ev = t["events"]
    # per user, the release's sequence order: train, valid, between, test
    assert ev.select(c.USER_ID, c.SOURCE_FILE, c.SOURCE_LINE, c.BEHAVIORS).rows() == [
        (0, "train.txt", 1, 1), (0, "train.txt", 2, 3), (0, "valid.txt", 1, 5),
        (0, "between_val_test.txt", 1, 1), (0, "test.txt", 1, 9), (1, "train.txt", 3, 0),
    ]
    assert ev.filter(pl.col(c.USER_ID) == 0)[c.EVENT_ORDER].is_sorted() and ev[c.EVENT_ORDER].n_unique() == 6
    assert s.rows_quarantined == 0 and s.exposures == 1


def test_sharded_events_are_ordered_by_user_then_file_order_and_deduplicated(registry, tmp_path):
    """Force many shards: the result must equal the single-shard result, row for row."""
    cfg = registry.get("taobao")
    users = [7, 3, 9, 3, 7, 1, 9, 9, 3, 1, 7, 3]
    lines = [f"{u},{10 + k % 3},1,pv,{1511600000 + k % 4}" for k, u in enumerate(users)]
    lines.insert(5, lines[1])  # an exact duplicate of line 2 (user 3) at line 6
    write(tmp_path / "raw", "UserBehavior.csv", "\n".join(lines) + "\n")
    s1, one = run_ingest(cfg, tmp_path / "raw", tmp_path / "one")
    s4, many = run_ingest(cfg, tmp_path / "raw", tmp_path / "many", rows_per_shard=2)
    assert one["events"].equals(many["events"])
    assert (s1.duplicates_dropped, s4.duplicates_dropped, s4.rows_kept) == (1, 1, 12)
    ev = many["events"]
    assert ev[c.USER_ID].is_sorted()
    assert ev.group_by(c.USER_ID).agg(pl.col(c.EVENT_ORDER).is_sorted())[c.EVENT_ORDER].all()
    assert 6 not in ev[c.SOURCE_LINE].to_list()  # the later copy is the one dropped


def test_id_maps_round_trip_to_raw_ids(registry, tmp_path):
    cfg = registry.get("taobao")
    lines = [f"{u},{i},1,pv,{1511600000 + k}" for k, (u, i) in enumerate([(9, 4), (3, 8), (9, 8), (1000, 4), (3, 2)])]
    write(tmp_path / "raw", "UserBehavior.csv", "\n".join(lines) + "\n")
    _, t = run_ingest(cfg, tmp_path / "raw", tmp_path / "out")
    back = (t["events"].join(t["user_id_map"], on=c.USER_ID).join(t["item_id_map"], on=c.ITEM_ID)
            .sort(c.SOURCE_LINE).select(c.RAW_USER_ID, c.RAW_ITEM_ID).rows())
    assert back == [(9, 4), (3, 8), (9, 8), (1000, 4), (3, 2)]
    assert t["user_id_map"][c.USER_ID].to_list() == [0, 1, 2]
    assert t["user_id_map"][c.RAW_USER_ID].to_list() == [3, 9, 1000]
    assert t["events"].schema[c.USER_ID] == pl.UInt32
