"""Seeded synthetic multi-behavior logs, written in the exact published raw formats.

The generator stands in for the real dataset files (which cannot be downloaded here) in tests, the
demo and benchmarks. It writes every format listed in ``FORMATS`` byte-for-byte the way the adapters
in ``pipelines/ingest`` expect the published files (README, "Your own data"), from one latent model.

The model
---------
*World (items).* Each of ``topics`` latent topics has a short English name, a few categories (with
English names) and a token range for captions. Topic popularity is power-law; every item belongs to
one topic and one of its categories, and item popularity is Zipf-Mandelbrot within its topic, so it
is heavy-tailed within and across topics. Items of one topic share category names and caption tokens.

*Users.* Interests are a sparse Dirichlet over topics (small concentration, centred on topic
popularity). Activity (primary events per user: views or exposures) is ``min_events`` plus a Lomax
(Pareto II) draw scaled to mean ``events_per_user``; heavy users convert less per view
(engagement multiplier ``(n / mean) ** -engagement_decay``), as in real logs, which also keeps most
users with a couple of purchases.

*Sessions.* A user's events fall into several sessions (about ``0.9 * n ** 0.6``). Inside a session
events are seconds to minutes apart (exponential gaps); sessions are separated by at least
``session_gap_s`` (default 90 min, well over the usual 60-minute session cut) and spread at random
over the dataset's published time window. A session keeps to one topic most of the time.

*Funnels (Taobao, Tmall, RetailRocket).* Each view picks a topic (session topic, the user's interests,
or some exploration) and an item by popularity within the topic. Some views are followed on the
SAME item seconds to minutes later (same session) by a cart and/or a fav, some of those by a buy;
a few buys are "direct" (no view of the item in that session). This same-item view -> cart -> buy
chain before purchases is the leak real data has. Interest-matched views convert more.

*Flags (KuaiSAR, Tenrec, behavior-set splits).* Each row is an exposure with 0/1 behavior flags.
About half the exposures get a click (more for interest-matched items); like, share (forward) and
follow almost always come with a click, like is the most common, share/follow co-occur with like.

*Files.* Users are generated in chunks of ``CHUNK_USERS`` users, each with its own generator
``np.random.default_rng([seed, format, stream, chunk])``, and appended to the open file; each file is
written under a temporary name and renamed into place. Output depends on the spec only (same spec,
same bytes) and memory is bounded by one chunk. Raw ids are not dense: users map monotonically
(``3 * index + jitter``), items/categories/sellers/brands through seeded affine permutations of a
larger range. File order mimics the originals: Taobao grouped by user (ascending) but shuffled
inside a user, with ~0.01% of rows slightly outside the window; Tmall shuffled per chunk;
RetailRocket in time order with local disorder; KuaiSAR and Tenrec per user in interaction order.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import IO

import numpy as np
import polars as pl
import pyarrow as pa

from pipelines.layout import RELEASE_SPLIT_FILES

__all__ = ["FORMATS", "SyntheticSpec", "main", "spec_for_rows", "write_synthetic"]

FORMATS: tuple[str, ...] = ("taobao", "tmall", "retailrocket", "kuaisar", "tenrec", "behavior_set_splits")

#: Users per generation chunk. Fixed (never derived from memory) so output depends on the spec only.
CHUNK_USERS = 20_000
#: Items per chunk when writing item side files.
CHUNK_ITEMS = 200_000
#: RetailRocket events are time-sorted through on-disk buckets of about this many expected rows.
RR_BUCKET_ROWS = 3_000_000

_CN = timezone(timedelta(hours=8))  # China / Beijing time


def _epoch(y: int, m: int, d: int, tz: timezone) -> int:
    return int(datetime(y, m, d, tzinfo=tz).timestamp())


# Published windows as [start, end) in Unix seconds.
TAOBAO_WINDOW = (_epoch(2017, 11, 25, _CN), _epoch(2017, 12, 4, _CN))  # 1511539200, 1512316800
TMALL_WINDOW = (_epoch(2015, 5, 11, _CN), _epoch(2015, 11, 13, _CN))  # 0511 .. 1112
RETAILROCKET_WINDOW = (_epoch(2015, 5, 3, timezone.utc), _epoch(2015, 9, 19, timezone.utc))
KUAISAR_WINDOW = (_epoch(2023, 5, 22, _CN), _epoch(2023, 6, 1, _CN))
_UNTIMED_WINDOW = (_epoch(2022, 1, 1, timezone.utc), _epoch(2022, 1, 31, timezone.utc))  # order only

_HEADERS: dict[str, str | None] = {
    "UserBehavior.csv": None,
    "user_log_format1.csv": "user_id,item_id,cat_id,seller_id,brand_id,time_stamp,action_type",
    "events.csv": "timestamp,visitorid,event,itemid,transactionid",
    "item_properties_part1.csv": "timestamp,itemid,property,value",
    "item_properties_part2.csv": "timestamp,itemid,property,value",
    "category_tree.csv": "categoryid,parentid",
    "rec_inter.csv": "user_id,item_id,playing_time,duration_ms,time,timestamp,click,forward,like,follow,search,"
    "search_item_related",
    "item_features.csv": "item_id,caption,author_id,item_type,upload_time,upload_type,"
    "first_level_category_id,first_level_category_name,first_level_category_name_en,"
    "second_level_category_id,second_level_category_name,second_level_category_name_en,"
    "third_level_category_id,third_level_category_name,third_level_category_name_en,"
    "fourth_level_category_id,fourth_level_category_name,fourth_level_category_name_en",
    "QK-video.csv": "user_id,item_id,click,follow,like,share,video_category,watching_times,gender,age",
    "QK-article.csv": "user_id,item_id,click,like,share,follow,read,favorite,read_percentage,"
    "category_first,category_second,gender,age",
    **{name: None for name in RELEASE_SPLIT_FILES.values()},
}

# Topic vocabulary: name, category names, extra words (third-level category names are "<category> <word>").
_TOPICS: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("sports", ("football", "basketball", "running", "swimming", "tennis", "cycling"), ("match", "highlights", "training", "league", "fans")),
    ("music", ("pop songs", "rock", "hip hop", "classical", "karaoke", "guitar"), ("cover", "live", "album", "concert", "lyrics")),
    ("food", ("home cooking", "baking", "street food", "desserts", "noodles", "hotpot"), ("recipe", "tasting", "spicy", "snack", "kitchen")),
    ("travel", ("beaches", "mountains", "city walks", "road trips", "hotels", "camping"), ("vlog", "guide", "scenery", "budget", "abroad")),
    ("gaming", ("mobile games", "strategy games", "esports", "puzzle games", "racing games", "role playing"), ("gameplay", "walkthrough", "ranked", "tips", "stream")),
    ("fashion", ("dresses", "sneakers", "streetwear", "accessories", "handbags", "jackets"), ("outfit", "style", "haul", "trend", "lookbook")),
    ("beauty", ("makeup", "skincare", "hairstyles", "nail art", "perfume", "cosmetics"), ("tutorial", "review", "routine", "natural", "glow")),
    ("pets", ("dogs", "cats", "birds", "aquarium", "pet training", "pet food"), ("cute", "puppy", "kitten", "care", "funny")),
    ("tech", ("smartphones", "laptops", "gadgets", "cameras", "audio gear", "smart home"), ("unboxing", "review", "specs", "setup", "compare")),
    ("cars", ("sedans", "suvs", "electric cars", "motorcycles", "car care", "motorsport"), ("test drive", "engine", "repair", "speed", "interior")),
    ("home", ("furniture", "kitchenware", "bedding", "decor", "storage", "lighting"), ("makeover", "organize", "cozy", "diy", "cleaning")),
    ("kids", ("toys", "baby care", "early learning", "cartoons", "school supplies", "parenting"), ("play", "story", "family", "learning", "songs")),
    ("comedy", ("sketches", "pranks", "stand up", "funny animals", "parody", "memes"), ("laugh", "joke", "fail", "reaction", "skit")),
    ("film", ("movie clips", "trailers", "tv series", "documentaries", "anime", "film reviews"), ("scene", "episode", "recap", "actor", "classic")),
    ("health", ("fitness", "yoga", "nutrition", "sleep", "meditation", "weight loss"), ("workout", "habit", "diet", "stretch", "wellness")),
    ("finance", ("stocks", "savings", "insurance", "real estate", "funds", "budgeting"), ("market", "invest", "money", "analysis", "tips")),
    ("education", ("languages", "mathematics", "science", "history", "exam prep", "coding"), ("lesson", "course", "lecture", "practice", "explained")),
    ("outdoors", ("fishing", "hiking", "gardening", "climbing", "hunting", "boating"), ("trail", "gear", "nature", "catch", "season")),
    ("art", ("painting", "calligraphy", "photography", "handicrafts", "sculpture", "drawing"), ("sketch", "process", "color", "portrait", "studio")),
    ("dance", ("street dance", "ballet", "square dance", "dance tutorials", "choreography", "folk dance"), ("moves", "routine", "cover", "practice", "stage")),
    ("news", ("local news", "world news", "weather", "society", "politics", "business"), ("report", "update", "breaking", "interview", "daily")),
    ("agriculture", ("farming", "livestock", "fruit growing", "tea", "rural life", "fishery"), ("harvest", "village", "field", "organic", "season")),
    ("books", ("novels", "poetry", "comics", "audiobooks", "self help", "history books"), ("chapter", "reading", "author", "summary", "review")),
    ("electronics", ("televisions", "appliances", "headphones", "chargers", "wearables", "drones"), ("deal", "install", "battery", "compare", "unboxing")),
)

# Internal constants of the model (the tunable ones live in SyntheticSpec).
_SESSION_CAP = 64  # sessions per user stay below this (also the stride of transaction ids)
_MAX_SESSIONS = 60
_FOLLOW_SLACK_S = 1200.0  # room after a session's last view for its cart/fav/buy follow-ups
_MAX_INTRA_GAP_S = 900.0
_ACTIVITY_CAP = 40.0  # at most this many times the mean activity per user
_MULT_RANGE = (0.2, 3.0)
_MATCH_THRESHOLD = 0.1  # a topic is "matched" when the user's interest weight on it is at least this
_OUT_OF_WINDOW_SHARE = 1e-4  # Taobao rows moved slightly outside the window, as in the real file
_BRANDLESS_SHARE = 0.01  # Tmall: items without brand cover ~1% of the popularity mass

_FMT_CODE = {name: i + 1 for i, name in enumerate(FORMATS)}
_STREAM_EVENTS, _STREAM_ITEMS, _STREAM_META = 1, 2, 3


@dataclass(frozen=True)
class SyntheticSpec:
    """Everything the generator output depends on. Same spec => byte-identical files."""

    users: int = 2000  # number of users
    items: int = 3000  # number of items
    topics: int = 24  # latent item topics
    seed: int = 0
    events_per_user: float = 60.0  # mean primary events (views / exposures) per user, power-law distributed
    variant: str = "video"  # only for format "tenrec": "video" or "article"
    # --- world and users
    categories_per_topic: int = 6
    zipf_exponent: float = 1.0  # item popularity within a topic ~ (rank + 2) ** -zipf_exponent
    interest_alpha: float = 0.15  # Dirichlet concentration per topic (small = sparse interests)
    min_events: int = 10  # every user has at least this many primary events
    activity_shape: float = 2.5  # Lomax tail index of per-user activity (smaller = heavier tail)
    engagement_decay: float = 0.5  # per-event conversion ~ (activity / mean) ** -engagement_decay
    # --- sessions
    session_gap_s: float = 5400.0  # minimum gap between two sessions of a user (well over 60 min)
    intra_gap_s: float = 45.0  # mean gap between events inside a session (exponential)
    # --- funnels (single-label formats), per view
    p_cart: float = 0.07
    p_fav: float = 0.035  # RetailRocket has no fav: its views get p_cart + p_fav / 2 carts
    p_buy_after_cart: float = 0.55
    p_buy_after_fav: float = 0.2
    p_direct_buy: float = 0.012
    # --- flags (exposure formats), per exposure
    p_click: float = 0.62  # for interest-matched exposures; unmatched get 40% of it
    p_like: float = 0.16  # given a click
    p_share: float = 0.035  # given a click (KuaiSAR "forward")
    p_follow: float = 0.025  # given a click
    p_favorite: float = 0.03  # given a read (QK-article)


# ============================================================================ world
@dataclass(frozen=True)
class _World:
    """Item-side latent structure shared by every chunk of one spec."""

    n_topics: int
    n_cats: int  # topics * categories_per_topic; category c belongs to topic c // categories_per_topic
    topic_pop: np.ndarray  # (T,) popularity share
    topic_cdf: np.ndarray  # (T,) cumulative, last == 1
    item_topic: np.ndarray  # (I,) int64
    item_cat: np.ndarray  # (I,) int64 global category index
    item_pop: np.ndarray  # (I,) share of global popularity
    items_by_topic: np.ndarray  # item indices grouped by topic, by popularity rank inside a topic
    item_cdf: np.ndarray  # topic + cumulative within-topic popularity, aligned with items_by_topic
    mult_norm: float  # mean engagement multiplier per event (normalises it to 1)
    topic_names: tuple[str, ...]
    cat_names: tuple[str, ...]
    topic_words: tuple[tuple[str, ...], ...]


def _world_rng(spec: SyntheticSpec, key: int) -> np.random.Generator:
    return np.random.default_rng([spec.seed, 0, key])


def _vocabulary(spec: SyntheticSpec) -> tuple[tuple[str, ...], tuple[str, ...], tuple[tuple[str, ...], ...]]:
    names, cats, words = [], [], []
    for t in range(spec.topics):
        name, cat_list, word_list = _TOPICS[t % len(_TOPICS)]
        suffix = "" if t < len(_TOPICS) else f" {t // len(_TOPICS) + 1}"
        names.append(name + suffix)
        words.append(word_list)
        for c in range(spec.categories_per_topic):
            base = cat_list[c % len(cat_list)]
            cats.append(base + suffix + ("" if c < len(cat_list) else f" {c // len(cat_list) + 1}"))
    return tuple(names), tuple(cats), tuple(words)


def _build_world(spec: SyntheticSpec) -> _World:
    t_n, i_n, c_per = spec.topics, spec.items, spec.categories_per_topic
    # Topic popularity: power law over a random ranking.
    rng = _world_rng(spec, 1)
    topic_pop = (rng.permutation(t_n) + 1.0) ** -0.8
    topic_pop /= topic_pop.sum()
    topic_cdf = np.cumsum(topic_pop)
    topic_cdf[-1] = 1.0
    # Item topics: every topic gets at least one item, the rest follow topic popularity.
    rng = _world_rng(spec, 2)
    item_topic = np.empty(i_n, dtype=np.int64)
    first = rng.permutation(i_n)[:t_n]
    rest = np.ones(i_n, dtype=bool)
    rest[first] = False
    item_topic[first] = np.arange(t_n)
    item_topic[rest] = np.minimum(np.searchsorted(topic_cdf, rng.random(int(rest.sum())), side="right"), t_n - 1)
    # Within-topic popularity rank: random order inside each topic, Zipf-Mandelbrot weights.
    rng = _world_rng(spec, 3)
    items_by_topic = np.lexsort((rng.random(i_n), item_topic)).astype(np.int64)
    topics_sorted = item_topic[items_by_topic]
    topic_start = np.searchsorted(topics_sorted, np.arange(t_n))
    rank = np.arange(i_n) - topic_start[topics_sorted]
    weight = (rank + 2.0) ** -spec.zipf_exponent
    csum = np.cumsum(weight)
    before = np.concatenate(([0.0], csum))[topic_start]  # mass before each topic's first item
    topic_total = np.bincount(topics_sorted, weights=weight, minlength=t_n)
    within = (csum - before[topics_sorted]) / topic_total[topics_sorted]
    last = np.r_[topic_start[1:] - 1, i_n - 1]
    within[last] = 1.0
    item_cdf = topics_sorted + within
    item_pop = np.empty(i_n)
    item_pop[items_by_topic] = topic_pop[topics_sorted] * weight / topic_total[topics_sorted]
    # Categories: uneven within a topic.
    rng = _world_rng(spec, 4)
    cat_w = (np.arange(c_per) + 1.0) ** -0.8
    item_cat = item_topic * c_per + rng.choice(c_per, size=i_n, p=cat_w / cat_w.sum())
    # Engagement normalisation: mean multiplier per event over the activity distribution.
    rng = _world_rng(spec, 5)
    n = _draw_activity(rng, 200_000, spec).astype(np.float64)
    mult = np.clip((n / spec.events_per_user) ** -spec.engagement_decay, *_MULT_RANGE)
    names, cats, words = _vocabulary(spec)
    return _World(
        n_topics=t_n, n_cats=t_n * c_per, topic_pop=topic_pop, topic_cdf=topic_cdf, item_topic=item_topic,
        item_cat=item_cat, item_pop=item_pop, items_by_topic=items_by_topic, item_cdf=item_cdf,
        mult_norm=float((n * mult).sum() / n.sum()), topic_names=names, cat_names=cats, topic_words=words,
    )


def _spread(idx: np.ndarray, n: int, spec: SyntheticSpec, salt: int, factor: int = 4) -> np.ndarray:
    """Injective, seeded, non-monotone map of 0..n-1 into 1..factor*n+7 (an affine permutation mod m)."""
    m = factor * max(int(n), 1) + 7
    rng = _world_rng(spec, 100 + salt)
    a = int(rng.integers(m // 3 + 1, m))
    while math.gcd(a, m) != 1:
        a = a + 1 if a + 1 < m else 1
    b = int(rng.integers(0, m))
    return (np.asarray(idx, dtype=np.int64) * a + b) % m + 1


def _user_raw_ids(global_idx: np.ndarray, spec: SyntheticSpec) -> np.ndarray:
    """Monotone, injective, non-dense user ids: 3 * index + a seeded jitter in 0..2, plus 1."""
    h = (global_idx.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(spec.seed & 0xFFFFFFFF)) >> np.uint64(40)
    return global_idx.astype(np.int64) * 3 + (h % np.uint64(3)).astype(np.int64) + 1


# ============================================================================ users and sessions
def _draw_activity(rng: np.random.Generator, n_users: int, spec: SyntheticSpec) -> np.ndarray:
    """Primary events per user: min_events + Lomax tail scaled to mean events_per_user, capped."""
    mean = spec.events_per_user
    lo = max(1, min(spec.min_events, int(mean)))
    a = spec.activity_shape
    x = rng.pareto(a, n_users) * (a - 1.0)  # mean 1
    n = lo + np.floor(max(mean - lo, 0.0) * x)
    return np.minimum(n, max(lo, int(_ACTIVITY_CAP * mean))).astype(np.int64)


@dataclass(frozen=True)
class _Mode:
    explore: float  # share of topic draws from global popularity instead of the user's interests
    coherence: float  # share of events that keep their session's topic
    repeat: float  # share of events that re-view the previous item of the session


_FUNNEL_MODE = _Mode(explore=0.12, coherence=0.7, repeat=0.12)
_FLAG_MODE = _Mode(explore=0.3, coherence=0.5, repeat=0.0)


@dataclass
class _Slots:
    """Primary events of one chunk, grouped by user (ascending) and in time order inside a user."""

    n_users: int
    user: np.ndarray  # local user index
    sess: np.ndarray  # session index inside the user (0, 1, ...)
    time: np.ndarray  # float Unix seconds
    item: np.ndarray
    matched: np.ndarray  # bool: the item's topic is one of the user's interests
    mult: np.ndarray  # the user's engagement multiplier, per event
    first_in_session: np.ndarray  # bool


def _topic_draws(rng: np.random.Generator, flat_cdf: np.ndarray, users: np.ndarray, world: _World, explore: float) -> np.ndarray:
    t_n = world.n_topics
    r = np.minimum(rng.random(len(users)), 1.0 - 1e-9)
    topic = np.searchsorted(flat_cdf, users + r, side="right") - users * t_n
    exp_idx = np.flatnonzero(rng.random(len(users)) < explore)
    topic[exp_idx] = np.searchsorted(world.topic_cdf, rng.random(len(exp_idx)), side="right")
    return np.clip(topic, 0, t_n - 1)


def _item_draws(rng: np.random.Generator, topic: np.ndarray, world: _World) -> np.ndarray:
    r = np.minimum(rng.random(len(topic)), 1.0 - 1e-9)
    j = np.searchsorted(world.item_cdf, topic + r, side="right")
    return world.items_by_topic[np.minimum(j, len(world.items_by_topic) - 1)]


def _simulate_slots(world: _World, spec: SyntheticSpec, rng: np.random.Generator, n_users: int,
                    window: tuple[int, int], mode: _Mode) -> _Slots:
    w0, w1 = float(window[0]), float(window[1])
    width = w1 - w0
    gap = spec.session_gap_s
    n = _draw_activity(rng, n_users, spec)
    mult_u = np.clip((n / spec.events_per_user) ** -spec.engagement_decay, *_MULT_RANGE) / world.mult_norm
    # Sparse interests: Dirichlet centred on topic popularity.
    alpha = spec.interest_alpha * world.n_topics * world.topic_pop
    g = rng.standard_gamma(alpha, size=(n_users, world.n_topics)) + 1e-12 * world.topic_pop
    theta = g / g.sum(axis=1, keepdims=True)
    cum = np.cumsum(theta, axis=1)
    cum[:, -1] = 1.0
    flat_cdf = (cum + np.arange(n_users)[:, None]).ravel()
    # Sessions per user, bounded so that sessions, gaps and follow-up slack always fit the window.
    s_max = int(max(1, min(_MAX_SESSIONS, width // (2 * (gap + _FOLLOW_SLACK_S)))))
    s_u = np.rint(0.9 * n**0.6 * np.exp(rng.normal(0.0, 0.3, n_users)))
    s_u = np.clip(s_u, 1, s_max).astype(np.int64)
    total = int(n.sum())
    user = np.repeat(np.arange(n_users, dtype=np.int64), n)
    key = user * _SESSION_CAP + (rng.random(total) * s_u[user]).astype(np.int64)
    key.sort(kind="stable")
    user = key // _SESSION_CAP
    new = np.empty(total, dtype=bool)
    new[0] = True
    np.not_equal(key[1:], key[:-1], out=new[1:])
    sess_first = np.flatnonzero(new)
    sid = np.cumsum(new) - 1
    n_sess = len(sess_first)
    sess_user = user[sess_first]
    user_first_sess = np.searchsorted(sess_user, np.arange(n_users))  # every user has >= 1 session
    sess_rank = np.arange(n_sess) - user_first_sess[sess_user]
    # Offsets inside a session: exponential gaps.
    step = np.minimum(1.0 + rng.exponential(spec.intra_gap_s, total), _MAX_INTRA_GAP_S)
    step[sess_first] = 0.0
    cs = np.cumsum(step)
    offset = cs - cs[sess_first][sid]
    dur = offset[np.r_[sess_first[1:] - 1, total - 1]]
    # Place sessions: gaps >= session_gap_s, free time spread at random (sorted uniforms).
    k_u = np.bincount(sess_user, minlength=n_users)
    sum_d = np.bincount(sess_user, weights=dur, minlength=n_users)
    avail = width - k_u * _FOLLOW_SLACK_S - (k_u - 1) * gap
    shrink = np.clip(avail / np.maximum(sum_d, 1e-9), 0.0, 1.0)  # only for extreme activity
    dur = dur * shrink[sess_user]
    offset = offset * shrink[user]
    free = np.maximum(avail - sum_d * shrink, 0.0)
    u = rng.random(n_sess) * free[sess_user]
    u = u[np.lexsort((u, sess_user))]
    c = dur + _FOLLOW_SLACK_S + gap
    excl = np.cumsum(c) - c
    start = w0 + u + excl - excl[user_first_sess][sess_user]
    t = start[sid] + offset
    # Topics and items.
    sess_topic = _topic_draws(rng, flat_cdf, sess_user, world, mode.explore)
    topic = sess_topic[sid]
    fresh = np.flatnonzero(rng.random(total) >= mode.coherence)
    topic[fresh] = _topic_draws(rng, flat_cdf, user[fresh], world, mode.explore)
    item = _item_draws(rng, topic, world)
    if mode.repeat > 0:
        rep = rng.random(total) < mode.repeat
        rep[sess_first] = False
        src = np.where(rep, 0, np.arange(total))
        np.maximum.accumulate(src, out=src)
        item, topic = item[src], topic[src]
    matched = theta[user, topic] >= _MATCH_THRESHOLD
    return _Slots(n_users=n_users, user=user, sess=sess_rank[sid], time=t, item=item, matched=matched,
                  mult=mult_u[user], first_in_session=new)


# ============================================================================ behaviors
VIEW, FAV, CART, BUY = 0, 1, 2, 3


@dataclass
class _Events:
    """Single-label events of one chunk (unordered): slot index, time, behavior code."""

    slot: np.ndarray
    time: np.ndarray
    behavior: np.ndarray  # int8: VIEW, FAV, CART, BUY


def _funnel(spec: SyntheticSpec, rng: np.random.Generator, s: _Slots, *, with_fav: bool,
            same_day_utc_offset_s: int | None) -> _Events:
    """View -> (cart | fav) -> buy on the same item, seconds to minutes apart; a few direct buys."""
    total = len(s.time)
    m = s.mult * np.where(s.matched, 1.25, 0.5)
    p_cart = spec.p_cart + (0.0 if with_fav else 0.5 * spec.p_fav)
    direct = rng.random(total) < np.minimum(spec.p_direct_buy * m, 0.5)
    viewed = ~direct
    cart = viewed & (rng.random(total) < np.minimum(p_cart * m, 0.95))
    fav = viewed & (rng.random(total) < np.minimum(spec.p_fav * m, 0.95)) if with_fav else np.zeros(total, bool)
    buy = (cart & (rng.random(total) < spec.p_buy_after_cart)) | (
        fav & ~cart & (rng.random(total) < spec.p_buy_after_fav))
    t = s.time
    t_cart = t + 5.0 + np.minimum(rng.exponential(60.0, total), 540.0)
    t_fav = t + 5.0 + np.minimum(rng.exponential(90.0, total), 540.0)
    t_buy = np.maximum(np.where(cart, t_cart, t), np.where(fav, t_fav, t)) + 10.0 + np.minimum(
        rng.exponential(120.0, total), 590.0)
    if same_day_utc_offset_s is not None:  # day-granular formats: the funnel stays on the view's day
        day_end = ((t + same_day_utc_offset_s) // 86400 + 1) * 86400 - same_day_utc_offset_s - 1.0
        t_cart, t_fav, t_buy = (np.minimum(x, day_end) for x in (t_cart, t_fav, t_buy))
    parts = [
        (np.flatnonzero(viewed), t, VIEW),
        (np.flatnonzero(cart), t_cart, CART),
        (np.flatnonzero(fav), t_fav, FAV),
        (np.flatnonzero(buy), t_buy, BUY),
        (np.flatnonzero(direct), t, BUY),
    ]
    return _Events(
        slot=np.concatenate([p[0] for p in parts]),
        time=np.concatenate([p[1][p[0]] for p in parts]),
        behavior=np.concatenate([np.full(len(p[0]), p[2], dtype=np.int8) for p in parts]),
    )


def _flags(spec: SyntheticSpec, rng: np.random.Generator, s: _Slots) -> dict[str, np.ndarray]:
    """0/1 flags per exposure: click ~ interest match; like/share/follow almost only with a click."""
    total = len(s.time)
    click = rng.random(total) < np.where(s.matched, spec.p_click, 0.4 * spec.p_click)
    boost = np.where(s.matched, 1.0, 0.35) * s.mult
    like = click & (rng.random(total) < np.minimum(spec.p_like * boost, 0.95))
    share = click & (rng.random(total) < np.minimum(spec.p_share * boost * np.where(like, 3.0, 0.6), 0.95))
    follow = click & (rng.random(total) < np.minimum(spec.p_follow * boost * np.where(like, 2.5, 0.7), 0.95))
    like |= ~click & (rng.random(total) < 0.002)  # real logs hold a few flags without a click
    return {"click": click, "like": like, "share": share, "follow": follow}


# ============================================================================ file writing
class _AtomicFiles:
    """Files opened under temporary names in out_dir, renamed into place on commit."""

    def __init__(self, out_dir: Path, names: list[str]) -> None:
        self.out_dir = out_dir
        self.names = names
        self.tmp = {n: out_dir / f".{n}.tmp-{os.getpid()}" for n in names}
        self.fh: dict[str, IO[bytes]] = {}
        for n in names:
            self.fh[n] = open(self.tmp[n], "wb")  # noqa: SIM115 - closed in commit/abort
            header = _HEADERS[n]
            if header is not None:
                self.fh[n].write((header + "\n").encode())

    def write(self, name: str, df: pl.DataFrame) -> None:
        if df.height:
            df.write_csv(self.fh[name], include_header=False)

    def commit(self) -> list[Path]:
        out = []
        for n in self.names:
            self.fh[n].close()
        for n in self.names:
            os.replace(self.tmp[n], self.out_dir / n)
            out.append(self.out_dir / n)
        return out

    def abort(self) -> None:
        for n in self.names:
            try:
                self.fh[n].close()
            finally:
                self.tmp[n].unlink(missing_ok=True)


def _chunk_rng(spec: SyntheticSpec, fmt: str, stream: int, chunk: int) -> np.random.Generator:
    variant = 1 if (fmt == "tenrec" and spec.variant == "article") else 0
    return np.random.default_rng([spec.seed, _FMT_CODE[fmt] * 2 + variant, stream, chunk])


def _chunks(n: int, size: int) -> Iterator[tuple[int, int, int]]:
    for ci, lo in enumerate(range(0, n, size)):
        yield ci, lo, min(n, lo + size)


def _str_col(codes: np.ndarray, labels: list[str]) -> pl.Series:
    """Strings from small integer codes, without a Python loop over rows."""
    return pl.Series(labels, dtype=pl.String).gather(codes)


def _null_where(values: np.ndarray, mask: np.ndarray) -> pl.Series:
    """An Int64 series with nulls (written as empty CSV fields) where mask is true."""
    return pl.Series(values, dtype=pl.Int64).set(pl.Series(mask), None)


# ---------------------------------------------------------------------------- taobao
def _taobao_chunk(world: _World, spec: SyntheticSpec, ci: int, u0: int, u1: int) -> dict[str, pl.DataFrame]:
    rng = _chunk_rng(spec, "taobao", _STREAM_EVENTS, ci)
    s = _simulate_slots(world, spec, rng, u1 - u0, TAOBAO_WINDOW, _FUNNEL_MODE)
    ev = _funnel(spec, rng, s, with_fav=True, same_day_utc_offset_s=None)
    ts = np.floor(ev.time).astype(np.int64)
    # A few rows slightly outside the window, as in the real file.
    odd = np.flatnonzero(rng.random(len(ts)) < _OUT_OF_WINDOW_SHARE)
    before = rng.random(len(odd)) < 0.5
    shift = 1 + (rng.random(len(odd)) * 2 * 86400).astype(np.int64)
    ts[odd] = np.where(before, TAOBAO_WINDOW[0] - shift, TAOBAO_WINDOW[1] - 1 + shift)
    # Grouped by user (ascending), shuffled inside a user.
    order = np.lexsort((rng.random(len(ts)), s.user[ev.slot]))
    slot = ev.slot[order]
    item = s.item[slot]
    df = pl.DataFrame({
        "user_id": _user_raw_ids(s.user[slot] + u0, spec),
        "item_id": _spread(item, spec.items, spec, 1),
        "category_id": _spread(world.item_cat[item], world.n_cats, spec, 2, factor=40),
        "behavior_type": _str_col(ev.behavior[order], ["pv", "fav", "cart", "buy"]),
        "timestamp": ts[order],
    })
    return {"UserBehavior.csv": df}


# ---------------------------------------------------------------------------- tmall
def _tmall_item_side(world: _World, spec: SyntheticSpec) -> tuple[np.ndarray, np.ndarray]:
    """Per item: raw seller id and raw brand id (-1 = no brand); sellers and brands are topic-specific."""
    rng = _world_rng(spec, 10)
    t_n, i_n = world.n_topics, spec.items
    k_sell = max(1, spec.items // (25 * t_n))
    k_brand = max(1, spec.items // (15 * t_n))
    w = (np.arange(max(k_sell, k_brand)) + 1.0) ** -0.9
    seller = world.item_topic * k_sell + rng.choice(k_sell, size=i_n, p=w[:k_sell] / w[:k_sell].sum())
    brand = world.item_topic * k_brand + rng.choice(k_brand, size=i_n, p=w[:k_brand] / w[:k_brand].sum())
    seller_raw = _spread(seller, t_n * k_sell, spec, 3, factor=6)
    brand_raw = _spread(brand, t_n * k_brand, spec, 4, factor=6)
    # Items without a brand: a random set holding ~1% of the popularity mass (so ~1% of rows).
    perm = rng.permutation(i_n)
    n_brandless = int(np.searchsorted(np.cumsum(world.item_pop[perm]), _BRANDLESS_SHARE))
    brand_raw[perm[:n_brandless]] = -1
    return seller_raw, brand_raw


def _mmdd(t: np.ndarray, utc_offset_s: int) -> np.ndarray:
    days = ((t + utc_offset_s) // 86400).astype("datetime64[D]")
    month = (days.astype("datetime64[M]") - days.astype("datetime64[Y]")).astype(np.int64) + 1
    day = (days - days.astype("datetime64[M]")).astype(np.int64) + 1
    return month * 100 + day


def _tmall_chunk(world: _World, spec: SyntheticSpec, ci: int, u0: int, u1: int,
                 side: tuple[np.ndarray, np.ndarray]) -> dict[str, pl.DataFrame]:
    rng = _chunk_rng(spec, "tmall", _STREAM_EVENTS, ci)
    s = _simulate_slots(world, spec, rng, u1 - u0, TMALL_WINDOW, _FUNNEL_MODE)
    ev = _funnel(spec, rng, s, with_fav=True, same_day_utc_offset_s=8 * 3600)
    order = rng.permutation(len(ev.slot))  # the real file is not time-ordered
    slot = ev.slot[order]
    item = s.item[slot]
    brand = side[1][item]
    action = np.array([0, 3, 1, 2], dtype=np.int8)[ev.behavior[order]]  # VIEW, FAV, CART, BUY
    df = pl.DataFrame({
        "user_id": _user_raw_ids(s.user[slot] + u0, spec),
        "item_id": _spread(item, spec.items, spec, 1),
        "cat_id": _spread(world.item_cat[item], world.n_cats, spec, 2, factor=40),
        "seller_id": side[0][item],
        "brand_id": _null_where(brand, brand < 0),
        "time_stamp": _mmdd(np.floor(ev.time[order]).astype(np.int64), 8 * 3600),
        "action_type": action,
    })
    return {"user_log_format1.csv": df}


# ---------------------------------------------------------------------------- retailrocket
_RR_RECORD = np.dtype([("key", "f8"), ("ts", "i8"), ("visitor", "i8"), ("event", "i1"), ("item", "i8"), ("tid", "i8")])
_RR_EVENTS = ["view", "addtocart", "transaction"]


def _retailrocket_chunk(world: _World, spec: SyntheticSpec, ci: int, u0: int, u1: int) -> np.ndarray:
    rng = _chunk_rng(spec, "retailrocket", _STREAM_EVENTS, ci)
    s = _simulate_slots(world, spec, rng, u1 - u0, RETAILROCKET_WINDOW, _FUNNEL_MODE)
    ev = _funnel(spec, rng, s, with_fav=False, same_day_utc_offset_s=None)
    rec = np.empty(len(ev.slot), dtype=_RR_RECORD)
    ts_ms = np.floor(ev.time * 1000.0).astype(np.int64)
    rec["ts"] = ts_ms
    rec["key"] = ts_ms + rng.normal(0.0, 20_000.0, len(ts_ms))  # time order with local disorder
    users = s.user[ev.slot] + u0
    rec["visitor"] = _spread(users, spec.users, spec, 5, factor=3) - 1
    rec["event"] = np.array([0, -1, 1, 2], dtype=np.int8)[ev.behavior]  # no fav in RetailRocket
    rec["item"] = _spread(s.item[ev.slot], spec.items, spec, 1) - 1
    # One transaction id per (visitor, session) with purchases: items bought together share it.
    tid_src = users * _SESSION_CAP + s.sess[ev.slot]
    rec["tid"] = np.where(ev.behavior == BUY, _spread(tid_src, spec.users * _SESSION_CAP, spec, 6, factor=2) - 1, -1)
    return rec


def _rr_frame(rec: np.ndarray) -> pl.DataFrame:
    return pl.DataFrame({
        "timestamp": rec["ts"],
        "visitorid": rec["visitor"],
        "event": _str_col(rec["event"], _RR_EVENTS),
        "itemid": rec["item"],
        "transactionid": _null_where(rec["tid"], rec["tid"] < 0),
    })


def _rr_side_files(world: _World, spec: SyntheticSpec, files: _AtomicFiles) -> None:
    t_n, c_n = world.n_topics, world.n_cats
    node_raw = _spread(np.arange(t_n + c_n), t_n + c_n, spec, 7, factor=2) - 1  # roots then children
    tree = pl.DataFrame({
        "categoryid": node_raw,
        "parentid": pl.Series(np.r_[np.full(t_n, -1), node_raw[np.arange(c_n) // spec.categories_per_topic]]),
    }).with_columns(pl.when(pl.col("parentid") >= 0).then(pl.col("parentid")).alias("parentid"))
    perm = np.random.default_rng([spec.seed, _FMT_CODE["retailrocket"] * 2, _STREAM_META, 0]).permutation(tree.height)
    files.write("category_tree.csv", tree[perm])
    # Weekly snapshots (Sundays 03:00 UTC), as the real property files have.
    snap0 = int(datetime(2015, 5, 10, 3, tzinfo=timezone.utc).timestamp()) * 1000
    n_snaps, week_ms = 19, 7 * 86400 * 1000
    half = (spec.items + 1) // 2
    for part, (lo_all, hi_all) in enumerate(((0, half), (half, spec.items))):
        name = f"item_properties_part{part + 1}.csv"
        for ci, lo, hi in _chunks(hi_all - lo_all, CHUNK_ITEMS):
            rng = _chunk_rng(spec, "retailrocket", _STREAM_ITEMS, part * 1_000_000 + ci)
            idx = np.arange(lo_all + lo, lo_all + hi, dtype=np.int64)
            n = len(idx)
            raw = _spread(idx, spec.items, spec, 1) - 1
            snap = rng.integers(0, 6, n)
            ts = snap0 + snap * week_ms
            avail = (rng.random(n) < 0.7).astype(np.int64)
            price = (np.exp(rng.normal(8.0, 1.0, n)) // 120 * 120 + 120).astype(np.int64)
            topic = world.item_topic[idx]
            tok = 100_000 + topic[:, None] * 5000 + rng.integers(0, 300, (n, 2))
            again = np.flatnonzero(rng.random(n) < 0.25)  # availability changes later for some items
            later = snap0 + rng.integers(snap[again] + 1, n_snaps) * week_ms
            # some items were recategorized: an earlier snapshot holds another category (the latest
            # value is the item's category); the shuffle below puts it before or after the latest
            moved = np.flatnonzero((rng.random(n) < 0.05) & (snap > 0))
            earlier = snap0 + rng.integers(0, snap[moved]) * week_ms
            stale = node_raw[t_n + (world.item_cat[idx[moved]] + 1 + rng.integers(0, max(c_n - 1, 1), len(moved))) % c_n]
            frames = [
                pl.DataFrame({"timestamp": ts, "itemid": raw, "property": "categoryid",
                              "value": pl.Series(node_raw[t_n + world.item_cat[idx]]).cast(pl.String)}),
                pl.DataFrame({"timestamp": ts, "itemid": raw, "property": "available",
                              "value": pl.Series(avail).cast(pl.String)}),
                pl.DataFrame({"timestamp": ts, "itemid": raw, "property": "790",
                              "value": pl.Series(price).cast(pl.String)}).with_columns(
                    pl.format("n{}.000", pl.col("value")).alias("value")),
                pl.DataFrame({"timestamp": ts, "itemid": raw, "property": "888",
                              "value": pl.Series(tok[:, 0]).cast(pl.String) + " " + pl.Series(tok[:, 1]).cast(pl.String)}),
                pl.DataFrame({"timestamp": later, "itemid": raw[again], "property": "available",
                              "value": pl.Series(1 - avail[again]).cast(pl.String)}),
                pl.DataFrame({"timestamp": earlier, "itemid": raw[moved], "property": "categoryid",
                              "value": pl.Series(stale).cast(pl.String)}),
            ]
            df = pl.concat(frames)
            files.write(name, df[rng.permutation(df.height)])


# ---------------------------------------------------------------------------- kuaisar
def _kuaisar_chunk(world: _World, spec: SyntheticSpec, ci: int, u0: int, u1: int,
                   durations: np.ndarray) -> dict[str, pl.DataFrame]:
    rng = _chunk_rng(spec, "kuaisar", _STREAM_EVENTS, ci)
    s = _simulate_slots(world, spec, rng, u1 - u0, KUAISAR_WINDOW, _FLAG_MODE)
    f = _flags(spec, rng, s)
    total = len(s.time)
    search = f["click"] & (rng.random(total) < 0.015)
    related = search & (rng.random(total) < 0.4)
    duration = durations[s.item]
    frac = np.where(f["click"], rng.beta(2.0, 1.5, total) * np.where(rng.random(total) < 0.1, 2.0, 1.0),
                    np.minimum(rng.exponential(0.05, total), 0.3))
    playing = np.floor(duration * frac)
    ts_ms = np.floor(s.time * 1000.0).astype(np.int64)
    beijing = pl.from_epoch(pl.Series(ts_ms // 1000 + 8 * 3600), time_unit="s").dt.strftime("%Y-%m-%d %H:%M:%S")
    df = pl.DataFrame({
        "user_id": _user_raw_ids(s.user + u0, spec),
        "item_id": _spread(s.item, spec.items, spec, 1),
        "playing_time": playing.astype(np.float64),
        "duration_ms": duration.astype(np.float64),
        "time": beijing,
        "timestamp": ts_ms.astype(np.float64),
        "click": f["click"].astype(np.int8),
        "forward": f["share"].astype(np.int8),
        "like": f["like"].astype(np.int8),
        "follow": f["follow"].astype(np.int8),
        "search": search.astype(np.int8),
        "search_item_related": related.astype(np.int8),
    })
    return {"rec_inter.csv": df}


def _kuaisar_durations(spec: SyntheticSpec, n_items: int) -> np.ndarray:
    """Video length per item in ms: lognormal (median ~24 s), clipped to 3 s .. 10 min."""
    rng = _world_rng(spec, 11)
    return np.clip(np.floor(np.exp(rng.normal(10.1, 1.0, n_items))), 3000, 600_000)


def _kuaisar_items(world: _World, spec: SyntheticSpec, files: _AtomicFiles) -> None:
    names = pl.Series(world.topic_names)
    cats = pl.Series(world.cat_names)
    for ci, lo, hi in _chunks(spec.items, CHUNK_ITEMS):
        rng = _chunk_rng(spec, "kuaisar", _STREAM_ITEMS, ci)
        idx = np.arange(lo, hi, dtype=np.int64)
        n = len(idx)
        topic = world.item_topic[idx]
        cat = world.item_cat[idx]
        # Caption: token ids from the topic's own range (skewed to its first ids) plus some shared ones.
        length = 3 + rng.poisson(6.0, n)
        offsets = np.r_[0, np.cumsum(length)]
        tok_topic = np.repeat(topic, length)
        n_tok = int(offsets[-1])
        skewed = np.floor(400 * rng.random(n_tok) ** 2.5).astype(np.int64)  # frequent words first
        tokens = np.where(rng.random(n_tok) < 0.25, rng.integers(1, 200, n_tok), 1000 + tok_topic * 400 + skewed)
        caption = pl.from_arrow(pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(tokens)))
        caption = "[" + caption.list.eval(pl.element().cast(pl.String)).list.join(", ") + "]"
        authors_per_topic = max(1, spec.items // (8 * world.n_topics))
        author = _spread(topic * authors_per_topic + rng.integers(0, authors_per_topic, n),
                         world.n_topics * authors_per_topic, spec, 8, factor=5)
        upload = (np.datetime64("2023-05-21") - rng.integers(0, 365, n).astype("timedelta64[D]"))
        lvl1 = names.gather(topic)
        lvl2 = cats.gather(cat)
        has3 = rng.random(n) < 0.3
        word_idx = rng.integers(0, 5, n)
        # (topic, word) -> word string: a lookup over the few distinct pairs, not over items.
        uniq, inv = np.unique(topic * 5 + word_idx, return_inverse=True)
        word_of = pl.Series([world.topic_words[int(p) // 5][int(p) % 5] for p in uniq]).gather(inv.ravel())
        # Real catalogues list a name's parts in either order ("Food, Coffee & Tea" / "Coffee & Tea, Food"):
        # third-level names are "<category>, <word>" or "<word>, <category>", one id for both orders.
        flip = pl.Series(rng.random(n) < 0.5)
        lvl3 = pl.select(pl.when(~pl.Series(has3)).then(pl.lit("empty")).when(flip).then(word_of + ", " + lvl2)
                         .otherwise(lvl2 + ", " + word_of)).to_series()
        lvl3_id = np.where(has3, 10_000 + cat * 8 + word_idx, 0)
        # Repost chains: some items copy the caption and categories of their topic's first item in the
        # chunk verbatim, so item texts repeat exactly (the collision floor of text-based IDs).
        repost = rng.random(n) < 0.08
        heads = np.zeros(world.n_topics, dtype=np.int64)
        topics_here, first_pos = np.unique(topic, return_index=True)
        heads[topics_here] = first_pos
        src = np.where(repost, heads[topic], np.arange(n))
        caption, lvl2, lvl3, lvl3_id, cat = caption.gather(src), lvl2.gather(src), lvl3.gather(src), lvl3_id[src], cat[src]
        df = pl.DataFrame({
            "item_id": _spread(idx, spec.items, spec, 1),
            "caption": caption,
            "author_id": author,
            "item_type": pl.Series(["NORMAL"]).gather(np.zeros(n, np.int64)),
            "upload_time": pl.Series(upload).dt.strftime("%Y-%m-%d"),
            "upload_type": pl.Series(["LongImport"]).gather(np.zeros(n, np.int64)),
            "first_level_category_id": topic + 1,
            "first_level_category_name": lvl1,
            "first_level_category_name_en": lvl1,
            "second_level_category_id": _spread(cat, world.n_cats, spec, 2, factor=40),
            "second_level_category_name": lvl2,
            "second_level_category_name_en": lvl2,
            "third_level_category_id": lvl3_id,
            "third_level_category_name": lvl3,
            "third_level_category_name_en": lvl3,
            "fourth_level_category_id": np.zeros(n, np.int64),
            "fourth_level_category_name": pl.Series(["empty"]).gather(np.zeros(n, np.int64)),
            "fourth_level_category_name_en": pl.Series(["empty"]).gather(np.zeros(n, np.int64)),
        })
        files.write("item_features.csv", df)


# ---------------------------------------------------------------------------- tenrec
def _tenrec_chunk(world: _World, spec: SyntheticSpec, ci: int, u0: int, u1: int) -> dict[str, pl.DataFrame]:
    rng = _chunk_rng(spec, "tenrec", _STREAM_EVENTS, ci)
    s = _simulate_slots(world, spec, rng, u1 - u0, _UNTIMED_WINDOW, _FLAG_MODE)
    f = _flags(spec, rng, s)
    total = len(s.time)
    gender = rng.choice(3, size=s.n_users, p=[0.1, 0.5, 0.4])[s.user]
    age = rng.choice(8, size=s.n_users, p=[0.05, 0.1, 0.25, 0.25, 0.15, 0.1, 0.06, 0.04])[s.user]
    user_raw = _user_raw_ids(s.user + u0, spec)
    item_raw = _spread(s.item, spec.items, spec, 1)
    cat = world.item_cat[s.item]
    if spec.variant == "video":
        watching = np.where(f["click"], 1 + rng.geometric(0.75, total) - 1, 0)
        df = pl.DataFrame({
            "user_id": user_raw, "item_id": item_raw,
            "click": f["click"].astype(np.int8), "follow": f["follow"].astype(np.int8),
            "like": f["like"].astype(np.int8), "share": f["share"].astype(np.int8),
            "video_category": cat, "watching_times": watching, "gender": gender, "age": age,
        })
        return {"QK-video.csv": df}
    favorite = f["click"] & (rng.random(total) < np.minimum(spec.p_favorite * s.mult, 0.95))
    read = f["click"] | f["like"] | f["share"] | f["follow"] | favorite
    pct = np.where(read, np.ceil(rng.beta(2.0, 1.2, total) * 100).clip(1, 100), 0).astype(np.int64)
    df = pl.DataFrame({
        "user_id": user_raw, "item_id": item_raw,
        "click": read.astype(np.int8), "like": f["like"].astype(np.int8), "share": f["share"].astype(np.int8),
        "follow": f["follow"].astype(np.int8), "read": read.astype(np.int8), "favorite": favorite.astype(np.int8),
        "read_percentage": pct, "category_first": world.item_topic[s.item], "category_second": cat,
        "gender": gender, "age": age,
    })
    return {"QK-article.csv": df}


# ---------------------------------------------------------------------------- behavior-set splits
_SPLIT_FILES = tuple(RELEASE_SPLIT_FILES.values())


# the published QK-Video release's flag mix (train.txt: 133,468 lines, column sums click 93,302,
# like 67,700, share 5,846, follow 4,264): likes on about half the lines, and about 30% of the
# lines without a click (a like, share or follow alone)
RELEASE_LIKE, RELEASE_NO_CLICK, RELEASE_SHARE, RELEASE_FOLLOW = 0.46, 0.60, 0.012, 0.008


def _release_flags(f: dict[str, np.ndarray], rng: np.random.Generator, s: _Slots) -> dict[str, np.ndarray]:
    """``_flags`` reshaped to the release's mix: more likes (interest-matched ones first), then the
    click dropped from a share of the liked lines; shares and follows a little more often."""
    total = len(s.time)
    click = f["click"]
    boost = np.where(s.matched, 1.0, 0.45)
    like = f["like"] | (click & (rng.random(total) < RELEASE_LIKE * boost))
    share = f["share"] | (click & (rng.random(total) < RELEASE_SHARE * boost * np.where(like, 2.0, 0.5)))
    follow = f["follow"] | (click & (rng.random(total) < RELEASE_FOLLOW * boost * np.where(like, 2.0, 0.5)))
    click = click & ~(like & (rng.random(total) < RELEASE_NO_CLICK))
    return {"click": click, "like": like, "share": share, "follow": follow}


def _splits_chunk(world: _World, spec: SyntheticSpec, ci: int, u0: int, u1: int) -> dict[str, pl.DataFrame]:
    """The four files of an EIDP/BLADE release, with the quirks of the published QK-Video one.

    - valid and test hold one non-click-only set per user (the last two), ``between_val_test`` the
      click-only sets between them; users with fewer than two such sets are training-only;
    - a few users lose their test line (or valid line) as in the release, where ~4.5% have no test
      line and ~4.2% no valid line; valid/test items always occur in ``train.txt`` (a line whose item
      does not is withheld, as the release's item filter does);
    - ``train.txt`` and ``between_val_test.txt`` interleave blocks of users' lines (file order within
      a user stays the sequence order; most users' lines come in several blocks, as 92% of the
      release's do), and a few all-zero lines sit in ``train.txt``;
    - the flags follow the release's mix (``_release_flags``): about 30% of the lines have no click.
    """
    rng = _chunk_rng(spec, "behavior_set_splits", _STREAM_EVENTS, ci)
    s = _simulate_slots(world, spec, rng, u1 - u0, _UNTIMED_WINDOW, _FLAG_MODE)
    f = _release_flags(_flags(spec, rng, s), rng, s)
    any_flag = f["click"] | f["like"] | f["share"] | f["follow"]
    # exposures are dropped, except a few all-zero lines left in as in the release
    keep = np.flatnonzero(any_flag | (rng.random(len(any_flag)) < 0.002))
    user = s.user[keep]
    item = s.item[keep]
    flags = {k: v[keep] for k, v in f.items()}
    target = (flags["like"] | flags["share"] | flags["follow"]).astype(np.int64)  # not click-only
    per_user = np.bincount(user, weights=target, minlength=s.n_users).astype(np.int64)
    # Non-click-only sets at or after each row, inside its user.
    cum = np.cumsum(target)
    before_user = np.r_[0, np.cumsum(per_user)][user]
    from_end = per_user[user] - (cum - target - before_user)
    split_user = per_user[user] >= 2
    is_test = split_user & (target == 1) & (from_end == 1)
    is_valid = split_user & (target == 1) & (from_end == 2)
    after_test = split_user & (from_end == 0)  # click-only sets after the test set are not released
    zero = ~(flags["click"] | flags["like"] | flags["share"] | flags["follow"])
    between = split_user & (target == 0) & (from_end == 1)
    train = ~(is_test | is_valid | after_test | between)
    between &= ~zero  # all-zero lines only ever sit in train.txt
    # withheld evaluation lines: a small share at random, and every one whose item is not in train
    in_train = np.zeros(spec.items, dtype=bool)
    in_train[item[train]] = True
    lost = rng.random(s.n_users)
    is_test &= in_train[item] & (lost[user] >= 0.004)
    is_valid &= in_train[item] & ((lost[user] < 0.004) | (lost[user] >= 0.006))
    base = pl.DataFrame({
        "user": user + u0 + 1, "item": item + 1,
        "b1": flags["click"].astype(np.int8), "b2": flags["like"].astype(np.int8),
        "b3": flags["share"].astype(np.int8), "b4": flags["follow"].astype(np.int8),
    })
    block_len = 1 + rng.geometric(1 / 3, s.n_users)  # lines per block of one user

    def interleaved(mask: np.ndarray) -> pl.DataFrame:
        rows = np.flatnonzero(mask)
        u = user[rows]
        first = np.r_[0, np.flatnonzero(u[1:] != u[:-1]) + 1] if len(u) else np.zeros(0, np.int64)
        pos = np.arange(len(u)) - np.repeat(first, np.diff(np.r_[first, len(u)]))
        order = np.lexsort((rng.permutation(s.n_users)[u], pos // block_len[u]))  # block, then a user order
        return base[rows[order]]

    names = RELEASE_SPLIT_FILES
    return {names["train"]: interleaved(train), names["valid"]: base.filter(pl.Series(is_valid)),
            names["between"]: interleaved(between), names["test"]: base.filter(pl.Series(is_test))}


# ============================================================================ driver
def _files_of(fmt: str, spec: SyntheticSpec) -> list[str]:
    return {
        "taobao": ["UserBehavior.csv"],
        "tmall": ["user_log_format1.csv"],
        "retailrocket": ["events.csv", "item_properties_part1.csv", "item_properties_part2.csv", "category_tree.csv"],
        "kuaisar": ["rec_inter.csv", "item_features.csv"],
        "tenrec": ["QK-video.csv" if spec.variant == "video" else "QK-article.csv"],
        "behavior_set_splits": list(_SPLIT_FILES),
    }[fmt]


def _validate(fmt: str, spec: SyntheticSpec) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown synthetic format {fmt!r}; valid formats: {', '.join(FORMATS)}")
    if spec.users < 1 or spec.topics < 1 or spec.categories_per_topic < 1:
        raise ValueError("users, topics and categories_per_topic must be >= 1")
    if spec.items < spec.topics:
        raise ValueError(f"items ({spec.items}) must be >= topics ({spec.topics}): every topic needs an item")
    if spec.events_per_user <= 0 or spec.activity_shape <= 1:
        raise ValueError("events_per_user must be > 0 and activity_shape > 1")
    if spec.variant not in ("video", "article"):
        raise ValueError(f"variant must be 'video' or 'article', got {spec.variant!r}")


def _event_chunk_fn(fmt: str, world: _World, spec: SyntheticSpec) -> Callable[[int, int, int], object]:
    if fmt == "taobao":
        return lambda ci, u0, u1: _taobao_chunk(world, spec, ci, u0, u1)
    if fmt == "tmall":
        side = _tmall_item_side(world, spec)
        return lambda ci, u0, u1: _tmall_chunk(world, spec, ci, u0, u1, side)
    if fmt == "retailrocket":
        return lambda ci, u0, u1: _retailrocket_chunk(world, spec, ci, u0, u1)
    if fmt == "kuaisar":
        durations = _kuaisar_durations(spec, spec.items)
        return lambda ci, u0, u1: _kuaisar_chunk(world, spec, ci, u0, u1, durations)
    if fmt == "tenrec":
        return lambda ci, u0, u1: _tenrec_chunk(world, spec, ci, u0, u1)
    return lambda ci, u0, u1: _splits_chunk(world, spec, ci, u0, u1)


def _chunk_rows(out: object) -> int:
    if isinstance(out, np.ndarray):
        return len(out)
    return sum(df.height for df in out.values())  # type: ignore[union-attr]


def write_synthetic(fmt: str, out_dir: Path, spec: SyntheticSpec, *,
                    progress: Callable[[str], None] | None = None) -> list[Path]:
    """Write the raw files of format `fmt` into out_dir (created), return the paths written.

    Each file is written under a temporary name in out_dir and renamed into place when complete;
    other files in out_dir are left alone. Output is a pure function of (fmt, spec).
    """
    _validate(fmt, spec)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    say = progress or (lambda _msg: None)
    t0 = time.perf_counter()
    world = _build_world(spec)
    gen = _event_chunk_fn(fmt, world, spec)
    files = _AtomicFiles(out_dir, _files_of(fmt, spec))
    n_chunks = -(-spec.users // CHUNK_USERS)
    rows = 0
    rr_tmp: Path | None = None
    try:
        if fmt == "retailrocket":
            rr_tmp = out_dir / f".events.buckets-{os.getpid()}"
            rows = _write_retailrocket_events(gen, spec, files, rr_tmp, n_chunks, say, t0)
            _rr_side_files(world, spec, files)
        else:
            # Generate chunk i+1 while chunk i is being written (polars writes off the GIL).
            with ThreadPoolExecutor(max_workers=1) as pool:
                pending: Future[None] | None = None
                for ci, u0, u1 in _chunks(spec.users, CHUNK_USERS):
                    out = gen(ci, u0, u1)
                    if pending is not None:
                        pending.result()
                    rows += _chunk_rows(out)
                    pending = pool.submit(_write_frames, files, out)  # type: ignore[arg-type]
                    say(f"synthetic {fmt}: chunk {ci + 1}/{n_chunks}, {rows:,} rows, {time.perf_counter() - t0:.1f} s")
                if pending is not None:
                    pending.result()
            if fmt == "kuaisar":
                _kuaisar_items(world, spec, files)
        paths = files.commit()
    except BaseException:
        files.abort()
        raise
    finally:
        if rr_tmp is not None:
            shutil.rmtree(rr_tmp, ignore_errors=True)
    say(f"synthetic {fmt}: wrote {rows:,} event rows to {out_dir} in {time.perf_counter() - t0:.1f} s")
    return paths


def _write_frames(files: _AtomicFiles, out: dict[str, pl.DataFrame]) -> None:
    for name, df in out.items():
        files.write(name, df)


def _write_retailrocket_events(gen: Callable[[int, int, int], object], spec: SyntheticSpec, files: _AtomicFiles,
                               tmp: Path, n_chunks: int, say: Callable[[str], None], t0: float) -> int:
    """External bucket sort by (jittered) time: chunks -> time buckets on disk -> sorted buckets.

    The result equals one stable global sort by key, whatever the number of buckets.
    """
    tmp.mkdir(parents=True, exist_ok=True)
    w0, w1 = (x * 1000.0 for x in RETAILROCKET_WINDOW)
    n_buckets = int(min(256, max(1, math.ceil(spec.users * spec.events_per_user / RR_BUCKET_ROWS))))
    handles = [open(tmp / f"{b:04d}.bin", "wb") for b in range(n_buckets)]  # noqa: SIM115
    rows = 0
    try:
        for ci, u0, u1 in _chunks(spec.users, CHUNK_USERS):
            rec = gen(ci, u0, u1)
            assert isinstance(rec, np.ndarray)
            rows += len(rec)
            bucket = np.clip(((rec["key"] - w0) / (w1 - w0) * n_buckets).astype(np.int64), 0, n_buckets - 1)
            order = np.argsort(bucket, kind="stable")
            bounds = np.searchsorted(bucket[order], np.arange(n_buckets + 1))
            for b in range(n_buckets):
                if bounds[b + 1] > bounds[b]:
                    rec[order[bounds[b]:bounds[b + 1]]].tofile(handles[b])
            say(f"synthetic retailrocket: chunk {ci + 1}/{n_chunks}, {rows:,} rows, {time.perf_counter() - t0:.1f} s")
    finally:
        for h in handles:
            h.close()
    for b in range(n_buckets):
        rec = np.fromfile(tmp / f"{b:04d}.bin", dtype=_RR_RECORD)
        files.write("events.csv", _rr_frame(rec[np.argsort(rec["key"], kind="stable")]))
        (tmp / f"{b:04d}.bin").unlink()
    return rows


# ============================================================================ sizing and CLI
_PILOT_USERS = 10_000


def spec_for_rows(fmt: str, rows: int, *, seed: int = 0, **overrides: object) -> SyntheticSpec:
    """A spec whose output has approximately `rows` event rows (scales users and items), for benchmarks up to 100M rows.

    Rows per user are measured on a pilot chunk of the same model (funnel follow-ups and dropped
    exposures included); items scale with users at the base spec's items/users ratio unless given.
    "Event rows" are the interaction files only (not RetailRocket item properties or KuaiSAR item features).
    """
    if "users" in overrides:
        raise ValueError("spec_for_rows chooses users itself; pass users to SyntheticSpec instead")
    base = SyntheticSpec(seed=seed, **overrides)  # type: ignore[arg-type]
    _validate(fmt, base)
    pilot = replace(base, users=_PILOT_USERS, items=max(base.items, base.topics))
    world = _build_world(pilot)
    per_user = _chunk_rows(_event_chunk_fn(fmt, world, pilot)(0, 0, _PILOT_USERS)) / _PILOT_USERS
    users = max(1, round(rows / per_user))
    items = int(overrides["items"]) if "items" in overrides else max(base.topics, round(users * base.items / base.users))
    return replace(base, users=users, items=items)


def main(argv: list[str] | None = None) -> int:
    """CLI: python -m pipelines.synthetic --format taobao --out DIR (--rows N | --users N --items N) [--seed S] [--variant article]."""
    ap = argparse.ArgumentParser(prog="python -m pipelines.synthetic", description=__doc__.split("\n\n")[0])
    ap.add_argument("--format", required=True, choices=FORMATS)
    ap.add_argument("--out", required=True, type=Path, help="output folder (created)")
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--rows", type=int, help="approximate number of event rows (scales users and items)")
    size.add_argument("--users", type=int, help="number of users (default 2000)")
    ap.add_argument("--items", type=int, help="number of items (default 3000, or scaled with --rows)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--topics", type=int)
    ap.add_argument("--events-per-user", type=float)
    ap.add_argument("--variant", choices=("video", "article"), default="video", help="tenrec only")
    args = ap.parse_args(argv)
    overrides: dict[str, object] = {"variant": args.variant}
    if args.topics is not None:
        overrides["topics"] = args.topics
    if args.events_per_user is not None:
        overrides["events_per_user"] = args.events_per_user
    if args.items is not None:
        overrides["items"] = args.items

    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    try:
        if args.rows is not None:
            spec = spec_for_rows(args.format, args.rows, seed=args.seed, **overrides)
        else:
            users = {} if args.users is None else {"users": args.users}
            spec = SyntheticSpec(seed=args.seed, **users, **overrides)  # type: ignore[arg-type]
        say(f"synthetic {args.format}: {spec.users:,} users, {spec.items:,} items, seed {spec.seed}")
        paths = write_synthetic(args.format, args.out, spec, progress=say)
    except ValueError as e:
        ap.error(str(e))
    for p in paths:
        print(p)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
