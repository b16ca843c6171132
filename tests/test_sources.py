"""Criteo and MovieLens data sources: pure-by-step batches, process shares, splits, malformed lines, and
end-to-end training on a Criteo-format file with malformed lines (raw and preprocessed, flat and DMT)."""

import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from dmt_jax import config_base
from dmt_jax.data import criteo, movielens as ml, shards
from dmt_jax.data.criteo_source import CriteoSource
from dmt_jax.data.movielens_source import MovieLensSource
from dmt_jax.data.pipeline import make_source
from dmt_jax.features import validate_batch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB = 50
GOOD = 600
BAD = ["garbage", "2" + "\t1" * 13 + "\tab" * 26, "1" + "\tx" * 13 + "\tab" * 26,
       "0" + "\t1" * 13 + "\tzz" * 26, "1\t2\t3"]  # field_count, bad_label, bad_int, bad_hex, field_count
BAD_REASONS = {"field_count": 2, "bad_label": 1, "bad_int": 1, "bad_hex": 1}


def _lines(n, seed=0):
  """Rows with I1 = row number (identifiable after log1p); the label depends on C1 (learnable)."""
  rng = np.random.default_rng(seed)
  out = []
  for r in range(n):
    c1 = int(rng.integers(0, 8))
    label = int(rng.random() < (0.8 if c1 < 3 else 0.15))
    ints = [str(r)] + ["" if rng.random() < 0.1 else str(int(rng.integers(-2, 99))) for _ in range(12)]
    cats = [f"{c1:08x}"] + ["" if rng.random() < 0.1 else f"{int(rng.integers(0, 200)):08x}"
                            for _ in range(25)]
    out.append("\t".join([str(label)] + ints + cats))
  return out


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
  """Two Criteo-format 'days' (400 + 200 good rows); day_1 has the malformed lines at lines 11..15."""
  d = tmp_path_factory.mktemp("criteo_raw")
  lines = _lines(GOOD)
  (d / "day_0").write_text("\n".join(lines[:400]) + "\n")
  day1 = lines[400:]
  (d / "day_1").write_text("\n".join(day1[:10] + BAD + day1[10:]) + "\n")
  return d


@pytest.fixture(scope="module")
def shard_dir(raw, tmp_path_factory):
  out = tmp_path_factory.mktemp("criteo_shards")
  shards.write_shards([raw / "day_0", raw / "day_1"], out, criteo.HashEncoder([VOCAB] * 26), "skip",
                      rows_per_shard=128)
  return out


def _data_cfg(path, **kw):
  c = config_base.get_config("dlrm", "flat", "tiny").data
  c.source, c.path, c.vocab_sizes, c.malformed_policy = "criteo", str(path), (VOCAB,), "skip"
  c.update(kw)
  return c


def _row_numbers(b):
  return np.rint(np.expm1(b.dense[:, 0].astype(np.float64))).astype(int)


def _assert_batches_equal(a, b):
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
    assert x.dtype == y.dtype


# --- Criteo source -------------------------------------------------------------------------------

def test_raw_and_shards_give_identical_batches(raw, shard_dir):
  a = CriteoSource(_data_cfg(f"{raw}/day_*"), 64, 32, 0)
  b = CriteoSource(_data_cfg(shard_dir), 64, 32, 0)
  assert a.fs == b.fs and a.fs.num_dense == 13 and a.fs.num_features == 26
  assert [t.vocab_size for t in b.fs.tables] == [VOCAB] * 26
  for step in (0, 5, 17):
    _assert_batches_equal(a.train_batch(step), b.train_batch(step))
  for x, y in zip(a.eval_batches(), b.eval_batches()):
    _assert_batches_equal(x, y)
  assert a.stats() == b.stats()
  assert a.stats()["data/malformed_lines"] == 5
  assert {r: a.stats()[f"data/malformed/{r}"] for r in BAD_REASONS} == BAD_REASONS


def test_train_batch_is_pure_and_covers_each_epoch_once(shard_dir):
  src = CriteoSource(_data_cfg(shard_dir, eval_fraction=0.25), 50, 50, 0)
  assert src.num_train == 450 and src.num_eval_records == 150
  rows = np.concatenate([_row_numbers(src.train_batch(s)) for s in range(18)])  # 900 rows = 2 epochs
  assert sorted(rows[:450].tolist()) == list(range(450)) == sorted(rows[450:].tolist())
  assert not np.array_equal(rows[:450], rows[450:])  # reshuffled per epoch
  again = CriteoSource(_data_cfg(shard_dir, eval_fraction=0.25), 50, 50, 0)
  _assert_batches_equal(again.train_batch(13), src.train_batch(13))  # any order, any instance
  other = CriteoSource(_data_cfg(shard_dir, eval_fraction=0.25, seed=1), 50, 50, 0)
  assert not np.array_equal(_row_numbers(other.train_batch(0)), _row_numbers(src.train_batch(0)))
  plain = CriteoSource(_data_cfg(shard_dir, eval_fraction=0.25, shuffle=False), 50, 50, 0)
  assert _row_numbers(plain.train_batch(9)).tolist() == list(range(50))  # epoch 1 starts over
  # eval: the last 150 records in order, full batches only
  assert [_row_numbers(b).tolist() for b in src.eval_batches()] == [list(range(450 + 50 * i, 500 + 50 * i))
                                                                     for i in range(3)]


@pytest.mark.parametrize("num_processes", [2, 4])
def test_process_shares_union_is_the_single_process_batch(shard_dir, num_processes):
  one = CriteoSource(_data_cfg(shard_dir), 64, 32, 0)
  parts = [CriteoSource(_data_cfg(shard_dir), 64, 32, 0, p, num_processes) for p in range(num_processes)]
  for step in (0, 3, 8, 40):  # 540 train records: step 8 spans the epoch boundary
    got = [p.train_batch(step) for p in parts]
    _assert_batches_equal([np.concatenate(x) for x in zip(*got)], one.train_batch(step))
  for i, full in enumerate(one.eval_batches()):
    got = [list(p.eval_batches())[i] for p in parts]
    _assert_batches_equal([np.concatenate(x) for x in zip(*got)], full)


def test_splits(raw, shard_dir):
  last = CriteoSource(_data_cfg(shard_dir, eval_last_input=True), 40, 40, 0)
  assert (last.num_train, last.num_eval_records) == (400, 200)
  assert _row_numbers(next(last.eval_batches()))[:3].tolist() == [400, 401, 402]
  sep = CriteoSource(_data_cfg(f"{raw}/day_0", eval_path=f"{raw}/day_1"), 40, 40, 0)
  assert (sep.num_train, sep.num_eval_records) == (400, 200)
  assert sep.stats()["data/malformed_lines"] == 5  # counted in the eval data too
  _assert_batches_equal(next(sep.eval_batches()), next(last.eval_batches()))
  with pytest.raises(ValueError, match="fewer than one eval batch"):
    CriteoSource(_data_cfg(shard_dir), 64, 128, 0)
  with pytest.raises(ValueError, match="not both"):
    CriteoSource(_data_cfg(shard_dir, eval_last_input=True, eval_path=str(shard_dir)), 40, 40, 0)


def test_bad_paths_and_vocab_sizes(tmp_path, raw):
  with pytest.raises(FileNotFoundError, match="matches no file"):
    CriteoSource(_data_cfg(tmp_path / "nope*"), 8, 8, 0)
  with pytest.raises(FileNotFoundError, match="preprocess_criteo"):
    CriteoSource(_data_cfg(tmp_path), 8, 8, 0)
  with pytest.raises(ValueError, match="26 values"):
    CriteoSource(_data_cfg(raw / "day_0", vocab_sizes=(10, 20)), 8, 8, 0)


def test_shards_override_config_vocab_sizes_loudly(shard_dir, caplog):
  """Shards carry their hashed vocab sizes; a different config value is reported, never silently used."""
  same = CriteoSource(_data_cfg(shard_dir), 64, 32, 0)
  assert same.stats()["data/config_vocab_sizes_overridden"] == 0
  with caplog.at_level("WARNING"):
    other = CriteoSource(_data_cfg(shard_dir, vocab_sizes=(VOCAB + 7,)), 64, 32, 0)
  assert "overridden by the shards' manifest" in caplog.text
  assert other.stats()["data/config_vocab_sizes_overridden"] == 1
  assert [t.vocab_size for t in other.fs.tables] == [t.vocab_size for t in same.fs.tables] == [VOCAB] * 26


def test_raw_fail_policy_names_file_and_line(raw):
  with pytest.raises(criteo.MalformedLineError, match=r"day_1:11: field_count"):
    CriteoSource(_data_cfg(f"{raw}/day_*", malformed_policy="fail"), 64, 32, 0)


# --- MovieLens source -----------------------------------------------------------------------------

def _fake_wheel(directory, num_ratings=400, seed=0):
  """A recbole-layout wheel with 6 users, 10 items and random ratings (rating = 1 + (u + i + noise) % 5)."""
  rng = np.random.default_rng(seed)
  user = "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n" + "".join(
      f"{u}\t{20 + 7 * u}\t{'MF'[u % 2]}\t{ml.OCCUPATIONS[u]}\t{10000 + 1111 * u}\n" for u in range(6))
  item = "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n" + "".join(
      f"{i}\tM{i}\t{1960 + 4 * i}\t{ml.GENRES[1 + i]} {ml.GENRES[2 + i % 5]}\n" for i in range(10))
  inter = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + "".join(
      f"{u}\t{i}\t{1 + (u + i + int(rng.integers(0, 2))) % 5}\t{880000000 + k * 977}\n"
      for k, (u, i) in enumerate(zip(rng.integers(0, 6, num_ratings), rng.integers(0, 10, num_ratings))))
  path = os.path.join(directory, ml.WHEEL)
  with zipfile.ZipFile(path, "w") as z:
    for ext, text in (("user", user), ("item", item), ("inter", inter)):
      z.writestr(ml.MEMBER.format(ext), text)
  return directory


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
  return _fake_wheel(tmp_path_factory.mktemp("ml"))


def _ml_cfg(path, **kw):
  c = config_base.get_config("dlrm", "flat", "movielens").data
  c.path = str(path)
  c.update(kw)
  return c


def test_movielens_batches_match_iterate_batches(wheel):
  src = MovieLensSource(_ml_cfg(wheel, seed=3), 48, 16, 0)
  assert src.fs == ml.movielens_feature_set(16)
  n = src.num_train
  assert src.steps_per_epoch == n // 48
  for epoch in (0, 1):
    expected = list(ml.iterate_batches(src.data.train, 48, epoch=epoch, seed=3))
    for i, b in enumerate(expected):
      _assert_batches_equal(src.train_batch(epoch * src.steps_per_epoch + i), b)
  validate_batch(src.fs, src.train_batch(0))
  again = MovieLensSource(_ml_cfg(wheel, seed=3), 48, 16, 0)
  _assert_batches_equal(again.train_batch(7), src.train_batch(7))
  other = MovieLensSource(_ml_cfg(wheel, seed=4), 48, 16, 0)
  assert not np.array_equal(other.train_batch(0).ids, src.train_batch(0).ids)
  plain = MovieLensSource(_ml_cfg(wheel, shuffle=False), 48, 16, 0)
  np.testing.assert_array_equal(plain.train_batch(1).ids, src.data.train.ids[48:96])


def test_movielens_eval_and_process_shares(wheel):
  one = MovieLensSource(_ml_cfg(wheel), 48, 16, 0)
  ev = one.data.eval
  assert one.num_eval == ev.size // 16 and one.stats()["data/eval_rows_used"] == 16 * one.num_eval
  np.testing.assert_array_equal(np.concatenate([b.ids for b in one.eval_batches()]), ev.ids[:16 * one.num_eval])
  assert MovieLensSource(_ml_cfg(wheel), 48, 16, 2).num_eval == 2
  for P in (2, 4):
    parts = [MovieLensSource(_ml_cfg(wheel), 48, 16, 0, p, P, data=one.data) for p in range(P)]
    for step in (0, 9):
      _assert_batches_equal([np.concatenate(x) for x in zip(*(p.train_batch(step) for p in parts))],
                            one.train_batch(step))
    got = [np.concatenate(x) for x in zip(*(next(p.eval_batches()) for p in parts))]
    _assert_batches_equal(got, next(one.eval_batches()))


# --- presets and end-to-end ----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["flat_dlrm", "dmt_dlrm", "flat_dcn", "dmt_dcn"])
@pytest.mark.parametrize("preset", ["criteo_kaggle", "criteo_1tb"])
def test_criteo_presets_build(shard_dir, name, preset):
  from dmt_jax import train
  model, mode = name.split("_")[1], name.split("_")[0]
  c = config_base.get_config(model, mode, preset)
  assert c.data.source == "criteo" and c.data.path.startswith("/data/criteo")
  assert bool(c.data.eval_last_input) == (preset == "criteo_1tb")
  c.data.path, c.topology = str(shard_dir), "host=2,device=4"  # 8 fake devices; vocabs from the manifest
  c.batch_size, c.eval_batch_size = 256, 64
  c.towers.num_towers = 2
  if preset == "criteo_1tb":  # two inputs: day_1 is the eval day
    c.eval_batch_size = 200 // 8 * 8
  exp = train.build_experiment(c)
  assert [t.vocab_size for t in exp.fs.tables] == [VOCAB] * 26 and exp.fs.uniform_dim() == 128


def _tiny_criteo(name, path, steps=4, **kw):
  model, mode = name.split("_")[1], name.split("_")[0]
  c = config_base.get_config(model, mode, "tiny")
  c.data.source, c.data.path, c.data.vocab_sizes = "criteo", str(path), (VOCAB,)
  c.data.malformed_policy = "skip"
  c.data.eval_fraction, c.eval_batch_size, c.num_eval_batches = 0.25, 64, 0
  c.num_train_steps, c.eval_every, c.checkpoint_every = steps, 0, 0
  c.update(kw)
  return c


def _metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


@pytest.mark.slow
def test_main_trains_on_preprocessed_criteo_with_malformed_lines(raw, tmp_path):
  """Preprocess (skip policy) with the script, then train flat DLRM through main.py."""
  out = tmp_path / "shards"
  pre = subprocess.run([sys.executable, "experiments/preprocess_criteo.py", f"--input={raw}/day_*",
                        f"--output_dir={out}", f"--vocab_sizes={VOCAB}", "--policy=skip"],
                       capture_output=True, text=True, cwd=REPO, timeout=300)
  assert pre.returncode == 0, pre.stderr
  wd = tmp_path / "w"
  res = subprocess.run([sys.executable, "experiments/main.py", "--config=experiments/configs/flat_dlrm.py:tiny",
                        f"--workdir={wd}", "--config.data.source=criteo", f"--config.data.path={out}",
                        "--config.data.eval_fraction=0.25", "--config.eval_batch_size=64",
                        "--config.num_eval_batches=0", "--config.num_train_steps=4", "--config.eval_every=0"],
                       capture_output=True, text=True, cwd=REPO, timeout=600)
  assert res.returncode == 0, res.stderr[-3000:]
  final = json.loads(res.stdout.strip().splitlines()[-1])
  assert final["data/malformed_lines"] == 5 and final["num_examples"] == 128 and 0 <= final["auc"] <= 1
  lines = _metrics(wd)
  assert lines[0]["data/malformed_lines"] == 5 and lines[0]["data/malformed/bad_hex"] == 1
  assert lines[-1]["step"] == 4 and "eval/auc" in lines[-1]


@pytest.mark.slow
@pytest.mark.parametrize("name,kind", [("dmt_dlrm", "shards"), ("flat_dlrm", "raw"), ("dmt_dcn", "raw")])
def test_train_on_criteo_with_malformed_lines(raw, shard_dir, tmp_path, name, kind):
  from dmt_jax import train
  path = shard_dir if kind == "shards" else f"{raw}/day_*"
  result = train.train_and_evaluate(_tiny_criteo(name, path), str(tmp_path))
  assert result["data/malformed_lines"] == 5 and result["num_examples"] == 128
  assert np.isfinite(result["logloss"])
  assert _metrics(tmp_path)[0]["data/malformed_lines"] == 5


@pytest.mark.slow
def test_main_fail_policy_stops_with_file_and_line(raw, tmp_path):
  res = subprocess.run([sys.executable, "experiments/main.py", "--config=experiments/configs/dmt_dlrm.py:tiny",
                        f"--workdir={tmp_path}", "--config.data.source=criteo", f"--config.data.path={raw}/day_*",
                        "--config.data.vocab_sizes=(50,)", "--config.data.malformed_policy=fail"],
                       capture_output=True, text=True, cwd=REPO, timeout=300)
  assert res.returncode != 0
  assert f"{raw}/day_1:11: field_count" in res.stderr


@pytest.mark.slow
@pytest.mark.parametrize("name,towers", [("flat_dlrm", 0), ("dmt_dcn", 4)])
def test_train_on_movielens_fixture(wheel, tmp_path, name, towers):
  from dmt_jax import train
  model, mode = name.split("_")[1], name.split("_")[0]
  c = config_base.get_config(model, mode, "movielens")
  c.data.path, c.batch_size, c.eval_batch_size, c.num_train_steps = str(wheel), 64, 32, 6
  c.towers.num_towers = towers
  result = train.train_and_evaluate(c, str(tmp_path))
  assert result["num_examples"] == 32 * (make_source(c).data.eval.size // 32)
  assert np.isfinite(result["logloss"]) and result["data/train_records"] > 0
