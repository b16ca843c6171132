"""MovieLens-100K reader: exact feature construction on a tiny fake wheel, split, the real wheel."""

import math
import os
import zipfile

import numpy as np
import pytest

from dmt_jax.data import movielens as ml
from dmt_jax.features import validate_batch

USER = "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n" \
       "7\t17\tM\tstudent\t94043\n" \
       "3\t50\tF\twriter\tT8H1N\n"
# columns deliberately in another order than recbole's, plus an unused one
ITEM = "item_id:token\tclass:token_seq\tmovie_title:token_seq\trelease_year:token\n" \
       "10\tAction Sci-Fi Action\tA\t1977\n" \
       "20\t\tB\tunknown\n" \
       "30\tFilm-Noir\tC\t1998\n"
T = 875000000  # 1997-09-23 07:33:20 UTC
INTER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + "".join(
    f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in [
        ("7", "10", 5, T), ("3", "20", 3, T + 10), ("7", "30", 4, T + 100), ("7", "20", 1, T + 50),
        ("3", "10", 4, T + 5), ("7", "10", 2, T + 200), ("3", "30", 5, T + 1)])


def fake_wheel(directory, user=USER, item=ITEM, inter=INTER):
  path = os.path.join(directory, ml.WHEEL)
  with zipfile.ZipFile(path, "w") as z:
    for ext, text in (("user", user), ("item", item), ("inter", inter)):
      z.writestr(ml.MEMBER.format(ext), text)
  return path


def test_feature_set_layout():
  fs = ml.movielens_feature_set(16)
  assert [f.name for f in fs.features] == ["user_id", "item_id", "age", "gender", "occupation", "zip2",
                                           "genres", "year"]
  assert [fs.table(f.table).vocab_size for f in fs.features] == [943, 1682, 7, 2, 21, 101, 19, 11]
  assert fs.features[6].max_bag == 19 and fs.num_slots == 26 and fs.num_dense == 5 and fs.dims == {16}


def test_features_exact(tmp_path):
  fake_wheel(tmp_path)
  d = ml.load_movielens(tmp_path, eval_fraction=0.0)
  b = d.train
  assert d.eval.size == 0 and b.size == 7
  genres = lambda *g: [ml.GENRES.index(x) for x in g] + [-1] * (19 - len(g))  # noqa: E731
  user7 = [0, 0, 0, ml.OCCUPATIONS.index("student"), 94]  # row 0, age 17 -> bucket 0, M, zip "94"
  user3 = [1, 5, 1, ml.OCCUPATIONS.index("writer"), 100]  # row 1, age 50 -> 50-55, F, Canadian zip
  item10 = [0], genres("Action", "Sci-Fi"), [4]  # deduplicated genres, 1970s
  item20 = [1], genres("unknown"), [0]  # no genre -> unknown, unknown year
  item30 = [2], genres("Film-Noir"), [10]  # 1998+
  expect = []
  for (u, it) in [(user7, item10), (user3, item20), (user7, item30), (user7, item20), (user3, item10),
                  (user7, item10), (user3, item30)]:
    expect.append([u[0]] + it[0] + u[1:] + it[1] + it[2])
  assert b.ids.tolist() == expect
  assert b.ids.dtype == np.int32 and b.weights.dtype == np.float32 and b.dense.dtype == np.float32
  np.testing.assert_array_equal(b.weights, (b.ids >= 0).astype(np.float32))
  assert b.labels.tolist() == [1, 0, 1, 0, 1, 0, 1]
  hour = 2 * math.pi * (T % 86400) / 86400
  rating_year = 1970 + T / (365.2425 * 86400)
  np.testing.assert_allclose(b.dense[0], [0.17, (T - ml.T0) / ml.YEAR_SECONDS, math.sin(hour), math.cos(hour),
                                          (rating_year - 1977) / 10], rtol=1e-5)
  assert b.dense[1, 4] == 0.0  # unknown release year
  validate_batch(ml.movielens_feature_set(4), b)


def test_per_user_temporal_split(tmp_path):
  fake_wheel(tmp_path)
  d = ml.load_movielens(tmp_path, eval_fraction=0.5)
  # user 7 has 4 ratings (times T, T+100, T+50, T+200): last 2 by time -> T+100, T+200 are eval.
  # user 3 has 3 (T+10, T+5, T+1): floor(1.5) = 1 -> T+10 is eval. Rows keep file order.
  def time(b):
    t = b.dense[:, 1].astype(np.float64) * ml.YEAR_SECONDS + ml.T0
    return np.rint(t - T).astype(int).tolist()

  assert time(d.eval) == [10, 100, 200]
  assert time(d.train) == [0, 50, 5, 1]


def test_split_tiebreak_is_deterministic():
  user = np.array([0, 0, 0, 0, 1, 1])
  t = np.array([5, 5, 5, 1, 2, 2])
  item = np.array([3, 1, 2, 9, 4, 4])
  # user 0 order: (1,9), (5,1), (5,2), (5,3) -> last 2 are items 2, 3; user 1: tie on everything -> last row
  assert ml.per_user_temporal_split(user, t, item, 0.5).tolist() == [True, False, True, False, False, True]


def test_missing_wheel_names_the_command(tmp_path):
  with pytest.raises(FileNotFoundError, match="pip download --no-deps recbole==1.2.1"):
    ml.load_movielens(tmp_path)


def test_bad_files_raise(tmp_path):
  fake_wheel(tmp_path, inter=INTER + "99\t10\t4\t1\n")
  with pytest.raises(ValueError, match="ml-100k.inter:9: unknown user '99'"):
    ml.load_movielens(tmp_path)
  fake_wheel(tmp_path, user=USER.replace("\tgender:token", "\tsex:token"))
  with pytest.raises(ValueError, match="missing columns"):
    ml.load_movielens(tmp_path)


def test_iterate_batches_shards_and_shuffles(tmp_path):
  fake_wheel(tmp_path)
  data = ml.load_movielens(tmp_path, eval_fraction=0.0).train
  full = list(ml.iterate_batches(data, 6, epoch=1, seed=0, drop_remainder=False))
  assert [b.size for b in full] == [6, 1]
  parts = [list(ml.iterate_batches(data, 6, epoch=1, seed=0, process_index=p, num_processes=3))
           for p in range(3)]
  np.testing.assert_array_equal(np.concatenate([p[0].ids for p in parts]), full[0].ids)
  other = next(ml.iterate_batches(data, 6, epoch=2, seed=0))
  assert not np.array_equal(other.dense, full[0].dense)


def test_real_wheel():
  cache = os.path.expanduser("~/.cache/dmt_jax")
  if not os.path.exists(os.path.join(cache, ml.WHEEL)):
    print(f"skipping: no {ml.WHEEL} in {cache}; fetch it with: {ml.FETCH_COMMAND}")
    pytest.skip(f"recbole wheel absent from {cache}; fetch it with: {ml.FETCH_COMMAND}")
  d = ml.load_movielens(cache)
  assert d.train.size + d.eval.size == 100_000
  assert 19_000 <= d.eval.size <= 20_000
  fs = ml.movielens_feature_set(8)
  for b in (d.train, d.eval):
    validate_batch(fs, b)
    assert 0.45 < b.labels.mean() < 0.6
  ids = np.concatenate([d.train.ids, d.eval.ids])
  assert len(np.unique(ids[:, 0])) == 943 and len(np.unique(ids[:, 1])) == 1682
