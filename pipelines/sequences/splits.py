"""Split protocols over behavior-set steps.

Every protocol returns the same two tables:
- roles: one row per step (user_id, step, role), role in train / valid / between / test /
  excluded, so every kept step lands in exactly one role;
- examples: one row per evaluation target (user_id, role, target_step, history_end,
  item_id, behaviors); the target's history is the user's steps [0, history_end).

Protocols:
- ``leave_one_out``: the last step holding a target behavior is test, the previous such step
  valid; steps between them are "between" (test history only); steps after test are excluded;
  users with fewer than two target steps are excluded (and counted).
- ``eidp``: EIDP/BLADE: as above with "target" = any non-auxiliary behavior, so the steps
  between valid and test are auxiliary-only (the release's between_val_test); as in those
  releases, users without two non-auxiliary steps stay in training (train only).
- ``session``: GAMER: the last session is test, the one before valid; every step of a held-out
  session is a target whose history ends at the session start; users need three sessions.
- ``temporal``: a global cut: steps before ``valid_from`` train; the first target step in
  [valid_from, test_from) of each user is valid, the first at or after test_from is test; other
  steps at or after valid_from are history only ("between") up to a user's last target, later
  ones excluded. Nothing after a cut reaches training (no cross-user future leak).
- ``released``: a published split release (EIDP/BLADE ``train.txt`` / ``valid.txt`` /
  ``between_val_test.txt`` / ``test.txt``) used as published: every step keeps the role of the
  file its line came from. A valid line is the user's valid target with the user's train lines as
  history; a test line the test target with train + valid + between lines as history, in file
  order. Users without a valid (test) line get no valid (test) example; they are counted.

``PROTOCOL_TABLE`` is the one place that names the protocols: adding one is a function plus an entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from pipelines.registry import DatasetConfig
from schemas import columns as c

ROLES = ("train", "valid", "between", "test", "excluded")
TRAIN, VALID, BETWEEN, TEST, EXCLUDED = range(len(ROLES))  # role codes: positions in ROLES


def role_column(code: np.ndarray | pl.Series) -> pl.Series:
    """The ``role`` column from role codes: a gather from the five names (0.07 s for 5M rows, where
    building the strings from a numpy object array took 0.3-0.4 s and a when/then chain 0.3 s)."""
    return pl.Series("role", ROLES, dtype=pl.String).gather(pl.Series(code).cast(pl.UInt32))
SPLIT_FILE_FORMAT = "behavior_set_splits"


# Named sets of users a protocol reports, by bit (a split's per-user state stores them as a bitmask):
# users excluded from evaluation, and the protocol-specific counts of the report.
USER_FLAGS = ("excluded", "users_training_only", "users_without_valid", "users_without_test")


@dataclass
class Split:
    protocol: str
    roles: pl.DataFrame
    examples: pl.DataFrame
    # flag name (USER_FLAGS) -> the dense ids of the users it applies to. Sets of users, not counts:
    # a refresh that recomputes some users replaces exactly their part of every count.
    flagged: dict[str, np.ndarray] = field(default_factory=dict)
    note: str = ""

    @property
    def users_excluded(self) -> int:
        return len(self.flagged.get("excluded", ()))

    @property
    def counts(self) -> dict[str, int]:
        """Protocol-specific user counts for the report (every flag but ``excluded``)."""
        return {k: len(v) for k, v in self.flagged.items() if k != "excluded"}


def mask_of(cfg: DatasetConfig, names: list[str]) -> int:
    """Bitmask of the named behaviors; a clear error names an unknown behavior and the vocabulary."""
    m = 0
    for n in names:
        m |= cfg.behavior_bit(n)
    return m


def _two_last(steps: pl.DataFrame, is_target: pl.Expr, protocol: str, short_users_train: bool = False) -> Split:
    """Shared by leave_one_out and eidp: last target step = test, previous target step = valid.

    Steps are contiguous per user and user ids are dense, so per-user values broadcast to rows by
    numpy indexing instead of joins.
    """
    targets = steps.select(c.USER_ID, "step", is_target.alias("__t")).filter(pl.col("__t"))
    last2 = (
        targets.group_by(c.USER_ID)
        .agg(pl.col("step").tail(2).alias("__s"))
        .filter(pl.col("__s").list.len() == 2)
        .select(c.USER_ID, pl.col("__s").list.get(0).alias("valid"), pl.col("__s").list.get(1).alias("test"))
    )
    user = steps[c.USER_ID].to_numpy()
    step = steps["step"].to_numpy().astype(np.int64)
    size = int(user.max()) + 1 if len(user) else 0
    valid_of = np.full(size, -1, dtype=np.int64)
    test_of = np.full(size, -1, dtype=np.int64)
    valid_of[last2[c.USER_ID].to_numpy()] = last2["valid"].to_numpy()
    test_of[last2[c.USER_ID].to_numpy()] = last2["test"].to_numpy()
    v, t = valid_of[user], test_of[user]
    code = np.select([t < 0, step < v, step == v, step < t, step == t], [0 if short_users_train else 4, 0, 1, 2, 3],
                     default=4)
    roles = steps.select(c.USER_ID, "step").with_columns(role_column(code))
    picked = np.flatnonzero((code == VALID) | (code == TEST))
    examples = _examples_at(steps, picked, code[picked], step[picked])
    short = np.setdiff1d(np.unique(user), last2[c.USER_ID].to_numpy())
    if short_users_train:  # a count, not note text: a split over several user shards adds them up
        return Split(protocol, roles, examples, {"users_training_only": short},
                     note="users without two target steps are training-only (users_training_only)")
    return Split(protocol, roles, examples, {"excluded": short})


def _examples_at(steps: pl.DataFrame, rows: np.ndarray, roles: np.ndarray, history_end: np.ndarray) -> pl.DataFrame:
    """Examples for target steps given by row positions in ``steps`` (``roles``: their role codes)."""
    picked = steps[rows]
    return picked.select(
        c.USER_ID, role_column(roles), pl.col("step").alias("target_step"),
        pl.Series("history_end", history_end.astype(np.uint32)), c.ITEM_ID, c.BEHAVIORS, c.TIMESTAMP,
    ).sort(c.USER_ID, "role", "target_step", descending=[False, True, False])


def _examples(steps: pl.DataFrame, targets: pl.DataFrame, history_end: pl.Expr) -> pl.DataFrame:
    """Examples for target (user_id, step, role) rows, joined to their steps."""
    return (
        targets.join(steps, on=[c.USER_ID, "step"], how="left")
        .select(
            c.USER_ID, "role", pl.col("step").alias("target_step"), history_end.cast(pl.UInt32).alias("history_end"),
            c.ITEM_ID, c.BEHAVIORS, c.TIMESTAMP,
        )
        .sort(c.USER_ID, "role", "target_step", descending=[False, True, False])
    )


def leave_one_out(steps: pl.DataFrame, cfg: DatasetConfig, targets: list[str] | None = None) -> Split:
    t = mask_of(cfg, targets or cfg.targets)
    return _two_last(steps, (pl.col(c.BEHAVIORS) & t) != 0, "leave_one_out")


def eidp(steps: pl.DataFrame, cfg: DatasetConfig) -> Split:
    aux = mask_of(cfg, cfg.auxiliary)
    return _two_last(steps, (pl.col(c.BEHAVIORS) & ~pl.lit(aux, pl.UInt16)) != 0, "eidp", short_users_train=True)


def session(steps: pl.DataFrame, cfg: DatasetConfig) -> Split:
    if cfg.time.unit == "none":
        raise ValueError(f"dataset '{cfg.name}' has no time column, so it has no sessions: "
                         "use the leave_one_out, eidp or temporal-free protocols")
    # steps come in (user, step) order and a user's sessions count up from 0, so the per-user and
    # per-session values are read at run boundaries with numpy (no group-bys or joins)
    user = steps[c.USER_ID].to_numpy()
    session_of = steps["session"].to_numpy().astype(np.int64)
    step = steps["step"].to_numpy().astype(np.int64)
    n = len(user)
    if n == 0:
        return Split("session", steps.select(c.USER_ID, "step").with_columns(role_column(np.zeros(0, np.uint32))),
                     _examples_at(steps, np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)))
    user_starts = np.r_[True, user[1:] != user[:-1]]
    if (user[1:] < user[:-1]).any() or ((step[1:] <= step[:-1]) & ~user_starts[1:]).any():
        raise ValueError("session split: steps must come in (user_id, step) order, as the steps table stores them")
    user_run = np.cumsum(user_starts) - 1
    last = session_of[np.r_[np.flatnonzero(user_starts)[1:] - 1, n - 1]][user_run]  # the user's last session
    session_starts = user_starts | np.r_[True, session_of[1:] != session_of[:-1]]
    start = step[np.flatnonzero(session_starts)][np.cumsum(session_starts) - 1]  # first step of the row's session
    code = np.select([last < 2, session_of == last, session_of == last - 1], [EXCLUDED, TEST, VALID], default=TRAIN)
    roles = steps.select(c.USER_ID, "step").with_columns(role_column(code))
    picked = np.flatnonzero((code == VALID) | (code == TEST))
    examples = _examples_at(steps, picked, code[picked], start[picked])
    return Split("session", roles, examples, {"excluded": user[user_starts][last[user_starts] < 2]})


def temporal(steps: pl.DataFrame, cfg: DatasetConfig, valid_from_ms: int, test_from_ms: int,
             targets: list[str] | None = None) -> Split:
    if cfg.time.unit == "none":
        raise ValueError(f"dataset '{cfg.name}' has no time column: a temporal split needs timestamps")
    if not valid_from_ms < test_from_ms:
        raise ValueError("temporal split: valid_from must be before test_from")
    if steps[c.TIMESTAMP].null_count():
        raise ValueError(f"dataset '{cfg.name}': a temporal split needs a timestamp on every step")
    t = mask_of(cfg, targets or cfg.targets)
    # per-user values in arrays indexed by the dense user id (as in _two_last), no group-by or join
    user = steps[c.USER_ID].to_numpy()
    step = steps["step"].to_numpy().astype(np.int64)
    ts = steps[c.TIMESTAMP].to_numpy()
    is_t = (steps[c.BEHAVIORS].to_numpy() & t) != 0
    size = int(user.max()) + 1 if len(user) else 0

    def first_step(mask: np.ndarray) -> np.ndarray:
        """Per user id, the smallest step among the rows of ``mask``; -1 for none."""
        out = np.full(size, np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(out, user[mask], step[mask])
        out[out == np.iinfo(np.int64).max] = -1
        return out

    valid_of = first_step(is_t & (ts >= valid_from_ms) & (ts < test_from_ms))
    test_of = first_step(is_t & (ts >= test_from_ms))
    v, te = valid_of[user], test_of[user]
    code = np.select([ts < valid_from_ms, step == v, step == te, step < np.maximum(v, te)],
                     [TRAIN, VALID, TEST, BETWEEN], default=EXCLUDED)
    roles = steps.select(c.USER_ID, "step").with_columns(role_column(code))
    picked = np.flatnonzero((code == VALID) | (code == TEST))
    examples = _examples_at(steps, picked, code[picked], step[picked])
    present = np.unique(user)
    no_eval = present[(valid_of[present] < 0) & (test_of[present] < 0)]
    return Split("temporal", roles, examples, {"excluded": no_eval},
                 note=f"cut: valid from {valid_from_ms} ms, test from {test_from_ms} ms (UTC)")


def quantile_cuts(steps: pl.DataFrame, valid_q: float = 0.8, test_q: float = 0.9) -> tuple[int, int]:
    """Default temporal cuts: quantiles of step times."""
    q = steps.select(pl.col(c.TIMESTAMP).quantile(valid_q, "lower").alias("v"),
                     pl.col(c.TIMESTAMP).quantile(test_q, "lower").alias("t")).row(0)
    return int(q[0]), int(q[1])


def released(steps: pl.DataFrame, cfg: DatasetConfig) -> Split:
    """Roles from the release's own files: the role of the file each step's line was read from.

    Ingest reads the files train, valid, between, test (``DatasetConfig.reading_order``) and keeps
    each line's file index in ``event_order``, so a user's steps are train lines, then the valid
    line, then between lines, then the test line, in file order, however the release interleaves
    users inside a file.
    """
    file_roles = np.array([ROLES.index(role) for role, _ in cfg.reading_order()], dtype=np.int64)
    file_index = (steps[c.EVENT_ORDER].to_numpy() >> c.LINE_BITS).astype(np.int64)
    if file_index.size and file_index.max() >= file_roles.size:
        raise ValueError(f"dataset '{cfg.name}': a step's file index {int(file_index.max())} is beyond the "
                         f"registry's files {[f for _, f in cfg.reading_order()]}")
    code = file_roles[file_index]
    user = steps[c.USER_ID].to_numpy()
    step = steps["step"].to_numpy().astype(np.int64)
    present = np.unique(user)
    flagged: dict[str, np.ndarray] = {}
    for role in ("valid", "test"):
        per_user = np.bincount(user[code == ROLES.index(role)], minlength=int(user.max()) + 1 if user.size else 0)
        if (per_user > 1).any():
            raise ValueError(
                f"dataset '{cfg.name}': {int((per_user > 1).sum())} users have more than one {role} line "
                f"(e.g. dense user {int(np.argmax(per_user > 1))}); a release holds one {role} set per user")
        flagged[f"users_without_{role}"] = present[per_user[present] == 0]
    # file order is sequence order, so the release's roles must come in order within each user
    if user.size > 1:
        same = user[1:] == user[:-1]
        if (same & (code[1:] < code[:-1])).any():
            raise ValueError(f"dataset '{cfg.name}': a user's steps do not follow the release's file order "
                             "(train, valid, between, test); was the steps table built with merging across lines?")
    roles = steps.select(c.USER_ID, "step").with_columns(role_column(code))
    picked = np.flatnonzero((code == VALID) | (code == TEST))
    examples = _examples_at(steps, picked, code[picked], step[picked])
    return Split("released", roles, examples, flagged,
                 note="roles as released; users without a valid (test) line get no valid (test) example "
                      "(users_without_valid, users_without_test)")


@dataclass(frozen=True)
class SplitInputs:
    """What a protocol may need beyond one shard of steps: options and global statistics."""

    cfg: DatasetConfig
    targets: list[str] | None = None
    cuts: tuple[int, int] | None = None  # temporal: (valid_from_ms, test_from_ms), computed over all shards


@dataclass(frozen=True)
class Protocol:
    name: str
    run: Callable[[pl.DataFrame, SplitInputs], Split]
    description: str
    needs_time: bool = False
    split_files_only: bool = False
    needs_cuts: bool = False

    def not_applicable(self, cfg: DatasetConfig) -> str | None:
        """Why this protocol does not apply to a dataset (None when it does)."""
        if self.needs_time and cfg.time.unit == "none":
            return f"dataset '{cfg.name}' has no time column: the {self.name} split needs timestamps"
        if self.split_files_only and cfg.format != SPLIT_FILE_FORMAT:
            return (f"dataset '{cfg.name}' is not a split release (format {cfg.format}): the {self.name} split "
                    f"takes roles from {SPLIT_FILE_FORMAT} files")
        return None


PROTOCOL_TABLE: dict[str, Protocol] = {p.name: p for p in (
    Protocol("leave_one_out", lambda s, i: leave_one_out(s, i.cfg, i.targets),
             "last target step test, the previous one valid"),
    Protocol("eidp", lambda s, i: eidp(s, i.cfg),
             "EIDP/BLADE rule on raw logs: last two non-auxiliary steps are test and valid"),
    Protocol("session", lambda s, i: session(s, i.cfg), "GAMER: last session test, the one before valid",
             needs_time=True),
    Protocol("temporal", lambda s, i: temporal(s, i.cfg, *i.cuts, i.targets),  # type: ignore[misc]
             "global time cuts", needs_time=True, needs_cuts=True),
    Protocol("released", lambda s, i: released(s, i.cfg), "the roles of a published split release, as published",
             split_files_only=True),
)}
PROTOCOLS = tuple(PROTOCOL_TABLE)


def default_protocol(cfg: DatasetConfig) -> str:
    """The protocol models train and evaluate on unless the registry says otherwise: a published
    release's own split for split-file datasets, leave-one-out for raw logs."""
    return "released" if cfg.format == SPLIT_FILE_FORMAT else "leave_one_out"


def check_protocol(cfg: DatasetConfig, protocol: str, key: str) -> str:
    """Validate a protocol named in the registry under ``key``; returns it."""
    from pipelines.registry import RegistryError

    if protocol not in PROTOCOL_TABLE:
        raise RegistryError(f"datasets.{cfg.name}.{key}: {protocol!r} is not one of {list(PROTOCOLS)}")
    why = PROTOCOL_TABLE[protocol].not_applicable(cfg)
    if why:
        raise RegistryError(f"datasets.{cfg.name}.{key}: {why}")
    return protocol
