"""MovieLens-100K as a click task, read from the files shipped in the ``recbole==1.2.1`` wheel.

Fetch the wheel once (the library never downloads)::

    pip download --no-deps recbole==1.2.1 -d ~/.cache/dmt_jax

and pass the cache directory (or the wheel's path). The reader opens the wheel with ``zipfile`` and reads
``recbole/dataset_example/ml-100k/ml-100k.{inter,user,item}``: tab-separated with typed headers
(``user_id:token``); columns are found by name.

Task: label = 1 if rating >= 4 (about 55% of ratings). Sparse features (one table per feature, ids):

    user_id     [943]   row of the user in the .user file (file order)
    item_id     [1682]  row of the item in the .item file (file order)
    age         [7]     bucket of age: <18, 18-24, 25-34, 35-44, 45-49, 50-55, 56+
    gender      [2]     M = 0, F = 1
    occupation  [21]    index in ``OCCUPATIONS``
    zip2        [101]   first two zip-code characters if digits (00..99), else 100 (e.g. Canadian codes)
    genres      [19]    multi-hot: index in ``GENRES``, max_bag 19, padded -1, mean pooling
    year        [11]    release year bucket: 0 unknown, 1 <1950, 2 1950s, 3 60s, 4 70s, 5 80s, 6 1990-94,
                        7 1995, 8 1996, 9 1997, 10 1998+

Dense features float32 [N, 5]: age / 100; years since 1997-09-01 of the rating (``(t - 873072000) /
31536000``); sin and cos of the hour of day (UTC) of the rating; movie age at rating time in decades
(rating year - release year) / 10, 0 if the release year is unknown.

Split (deterministic, no seed): each user's ratings are ordered by (timestamp, item row, line); the last
``floor(eval_fraction * n_user)`` of them are eval, the rest train — a per-user temporal split. Rows keep
the .inter file order within each split.
"""

from __future__ import annotations

import dataclasses
import math
import os
import zipfile
from typing import Iterator

import numpy as np

from dmt_jax.features import Batch, FeatureSet, FeatureSpec, TableSpec

WHEEL = "recbole-1.2.1-py3-none-any.whl"
FETCH_COMMAND = "pip download --no-deps recbole==1.2.1 -d ~/.cache/dmt_jax"
MEMBER = "recbole/dataset_example/ml-100k/ml-100k.{}"
NUM_USERS, NUM_ITEMS = 943, 1682
GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
          "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
          "War", "Western")
OCCUPATIONS = ("administrator", "artist", "doctor", "educator", "engineer", "entertainment", "executive",
               "healthcare", "homemaker", "lawyer", "librarian", "marketing", "none", "other", "programmer",
               "retired", "salesman", "scientist", "student", "technician", "writer")
AGE_EDGES = (18, 25, 35, 45, 50, 56)
YEAR_EDGES = (1950, 1960, 1970, 1980, 1990, 1995, 1996, 1997, 1998)
GENDERS = {"M": 0, "F": 1}
# (name, vocab, max_bag, pooling) in slot order
FEATURES = (("user_id", NUM_USERS, 1, "sum"), ("item_id", NUM_ITEMS, 1, "sum"),
            ("age", len(AGE_EDGES) + 1, 1, "sum"), ("gender", 2, 1, "sum"),
            ("occupation", len(OCCUPATIONS), 1, "sum"), ("zip2", 101, 1, "sum"),
            ("genres", len(GENRES), len(GENRES), "mean"), ("year", len(YEAR_EDGES) + 2, 1, "sum"))
NUM_DENSE = 5
T0, YEAR_SECONDS = 873072000, 365 * 86400  # 1997-09-01 00:00 UTC


def movielens_feature_set(dim: int) -> FeatureSet:
  """The 8 sparse features above (one table each, width ``dim``) and 5 dense features."""
  tables = tuple(TableSpec(name, vocab, dim) for name, vocab, _, _ in FEATURES)
  feats = tuple(FeatureSpec(name, name, bag, pool) for name, _, bag, pool in FEATURES)
  return FeatureSet(tables, feats, NUM_DENSE)


@dataclasses.dataclass(frozen=True)
class MovieLens:
  """Both splits as whole numpy batches (train: ~80% of ratings, eval: the rest)."""
  train: Batch
  eval: Batch

  @staticmethod
  def feature_set(dim: int) -> FeatureSet:
    return movielens_feature_set(dim)


def find_wheel(cache_dir) -> str:
  """The wheel path: ``cache_dir`` itself if it is a file, else ``cache_dir/recbole-1.2.1-...whl``."""
  path = os.path.expanduser(os.fspath(cache_dir))
  if os.path.isdir(path):
    path = os.path.join(path, WHEEL)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"MovieLens-100K comes from the recbole wheel, not found at {path}; "
                            f"fetch it with:  {FETCH_COMMAND}")
  return path


def _read_table(zf: zipfile.ZipFile, ext: str, columns: tuple[str, ...]) -> tuple[str, list[list[str]]]:
  """Rows of ``ml-100k.<ext>`` restricted to ``columns`` (by header name, types stripped)."""
  name = MEMBER.format(ext)
  try:
    raw = zf.read(name)
  except KeyError:
    raise FileNotFoundError(f"{zf.filename} has no {name}; is it the recbole 1.2.1 wheel?") from None
  lines = raw.decode("utf-8", errors="replace").splitlines()
  header = [h.split(":")[0] for h in lines[0].split("\t")]
  missing = [c for c in columns if c not in header]
  if missing:
    raise ValueError(f"{name}: missing columns {missing}; header is {lines[0]!r}")
  idx = [header.index(c) for c in columns]
  rows = []
  for lineno, line in enumerate(lines[1:], 2):
    if not line:
      continue
    f = line.split("\t")
    if len(f) != len(header):
      raise ValueError(f"{name}:{lineno}: {len(f)} fields, header has {len(header)}")
    rows.append([f[i] for i in idx])
  return name, rows


def _bucket(value: float, edges) -> int:
  return int(np.searchsorted(np.asarray(edges), value, side="right"))


def _user_features(name, rows) -> dict[str, tuple[int, list[int], float]]:
  """user token -> (row, [age bucket, gender, occupation, zip2], age)."""
  if len(rows) > NUM_USERS:
    raise ValueError(f"{name}: {len(rows)} users, the feature set has room for {NUM_USERS}")
  out = {}
  for r, (uid, age, gender, occ, zip_code) in enumerate(rows):
    where = f"{name}: user {uid!r}"
    if gender not in GENDERS:
      raise ValueError(f"{where}: gender {gender!r} not in {sorted(GENDERS)}")
    if occ not in OCCUPATIONS:
      raise ValueError(f"{where}: occupation {occ!r} not in OCCUPATIONS")
    z = zip_code[:2]
    zip2 = int(z) if len(z) == 2 and z.isdigit() else 100
    out[uid] = (r, [_bucket(int(age), AGE_EDGES), GENDERS[gender], OCCUPATIONS.index(occ), zip2], float(age))
  return out


def _item_features(name, rows) -> dict[str, tuple[int, list[int], int, float | None]]:
  """item token -> (row, genre ids, year bucket, release year or None)."""
  if len(rows) > NUM_ITEMS:
    raise ValueError(f"{name}: {len(rows)} items, the feature set has room for {NUM_ITEMS}")
  out = {}
  for r, (iid, year, classes) in enumerate(rows):
    genres = []
    for g in classes.split():
      if g not in GENRES:
        raise ValueError(f"{name}: item {iid!r} has genre {g!r} not in GENRES")
      genres.append(GENRES.index(g))
    genres = sorted(set(genres)) or [GENRES.index("unknown")]
    y = float(year) if year.isdigit() else None
    out[iid] = (r, genres, 0 if y is None else 1 + _bucket(y, YEAR_EDGES), y)
  return out


def load_movielens(cache_dir, eval_fraction: float = 0.2) -> MovieLens:
  """Reads MovieLens-100K from the recbole wheel; returns train/eval ``Batch``es (see module docstring)."""
  if not 0.0 <= eval_fraction < 1.0:
    raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
  with zipfile.ZipFile(find_wheel(cache_dir)) as zf:
    uname, urows = _read_table(zf, "user", ("user_id", "age", "gender", "occupation", "zip_code"))
    iname, irows = _read_table(zf, "item", ("item_id", "release_year", "class"))
    rname, rrows = _read_table(zf, "inter", ("user_id", "item_id", "rating", "timestamp"))
  users, items = _user_features(uname, urows), _item_features(iname, irows)
  fs = movielens_feature_set(1)
  n = len(rrows)
  ids = np.full((n, fs.num_slots), -1, np.int32)
  dense = np.zeros((n, NUM_DENSE), np.float32)
  labels = np.zeros(n, np.float32)
  user_row = np.zeros(n, np.int64)
  item_row = np.zeros(n, np.int64)
  stamp = np.zeros(n, np.float64)
  g0 = int(fs.slot_offsets[fs.feature_index("genres")])
  for k, (uid, iid, rating, ts) in enumerate(rrows):
    if uid not in users or iid not in items:
      raise ValueError(f"{rname}:{k + 2}: unknown {'user' if uid not in users else 'item'} "
                       f"{uid if uid not in users else iid!r}")
    ur, (age_b, gender, occ, zip2), age = users[uid]
    ir, genres, year_b, year = items[iid]
    t = float(ts)
    ids[k, :g0] = [ur, ir, age_b, gender, occ, zip2]
    ids[k, g0:g0 + len(genres)] = genres
    ids[k, g0 + len(GENRES)] = year_b
    hour = 2 * math.pi * ((t % 86400) / 86400)
    rating_year = 1970 + t / (365.2425 * 86400)
    dense[k] = [age / 100, (t - T0) / YEAR_SECONDS, math.sin(hour), math.cos(hour),
                0.0 if year is None else (rating_year - year) / 10]
    labels[k] = 1.0 if float(rating) >= 4 else 0.0
    user_row[k], item_row[k], stamp[k] = ur, ir, t
  weights = (ids >= 0).astype(np.float32)
  is_eval = per_user_temporal_split(user_row, stamp, item_row, eval_fraction)
  take = lambda m: Batch(dense[m], ids[m], weights[m], labels[m])  # noqa: E731
  return MovieLens(take(~is_eval), take(is_eval))


def per_user_temporal_split(user: np.ndarray, time: np.ndarray, tiebreak: np.ndarray,
                            eval_fraction: float) -> np.ndarray:
  """bool [N]: the last ``floor(eval_fraction * n_u)`` ratings of each user by (time, tiebreak, row)."""
  n = len(user)
  order = np.lexsort((np.arange(n), tiebreak, time, user))  # by user, then time, tiebreak, row
  u_sorted = user[order]
  starts = np.flatnonzero(np.r_[True, u_sorted[1:] != u_sorted[:-1]])
  counts = np.diff(np.r_[starts, n])
  rank = np.arange(n) - np.repeat(starts, counts)  # position within the user's ordered ratings
  n_eval = np.floor(eval_fraction * counts).astype(np.int64)
  is_eval = np.zeros(n, bool)
  is_eval[order] = rank >= np.repeat(counts - n_eval, counts)
  return is_eval


def iterate_batches(data: Batch, global_batch: int, epoch: int = 0, seed: int | None = 0,
                    process_index: int = 0, num_processes: int = 1,
                    drop_remainder: bool = True) -> Iterator[Batch]:
  """One epoch of ``data`` in global batches; yields this process's rows ``[p*B/P, (p+1)*B/P)`` of each.

  Rows are shuffled by a permutation seeded by ``(seed, epoch)``; ``seed=None`` keeps the order. With
  ``drop_remainder`` the last ``N mod global_batch`` rows of the epoch's order are not visited.
  """
  if global_batch % num_processes:
    raise ValueError(f"global_batch {global_batch} is not divisible by num_processes {num_processes}")
  n = data.size
  order = (np.arange(n) if seed is None
           else np.random.default_rng(np.random.SeedSequence([seed, epoch])).permutation(n))
  per = global_batch // num_processes
  stop = n - n % global_batch if drop_remainder else n
  for start in range(0, stop, global_batch):
    rows = order[start:min(start + global_batch, n)]
    if len(rows) < global_batch:  # last partial batch: split as evenly as possible
      mine = np.array_split(rows, num_processes)[process_index]
    else:
      mine = rows[process_index * per:(process_index + 1) * per]
    yield Batch(*(np.asarray(x)[mine] for x in data))
