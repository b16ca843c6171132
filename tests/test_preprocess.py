"""Criteo preprocessing: raw -> shards round trip, per-process coverage, position restore, resume."""

import gzip
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from dmt_jax.data import criteo, shards

VOCABS = [50] * 26
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _lines(start, n, seed):
  """Rows numbered from ``start``: I1 = row number, so every record is identifiable."""
  rng = np.random.default_rng(seed)
  out = []
  for r in range(start, start + n):
    ints = [str(r)] + ["" if rng.random() < 0.1 else str(int(rng.integers(-2, 99))) for _ in range(12)]
    cats = ["" if rng.random() < 0.1 else f"{int(rng.integers(0, 1 << 32)):08x}" for _ in range(26)]
    out.append("\t".join([str(int(rng.random() < 0.3))] + ints + cats))
  return out


@pytest.fixture
def raw(tmp_path):
  """Three 'days': plain, gzip, and one with two malformed lines; 37 + 41 + 30 good rows."""
  d = tmp_path / "raw"
  d.mkdir()
  (d / "day_0").write_text("\n".join(_lines(0, 37, 0)) + "\n")
  (d / "day_1").write_bytes(gzip.compress(("\n".join(_lines(37, 41, 1)) + "\n").encode()))
  day2 = _lines(78, 30, 2)
  (d / "day_2").write_text("\n".join(day2[:5] + ["garbage", "2" + day2[5][1:]] + day2[5:]) + "\n")
  return [d / "day_0", d / "day_1", d / "day_2"]


def _write(raw, out, **kw):
  return shards.write_shards(raw, out, criteo.HashEncoder(VOCABS), "skip", kw.pop("rows_per_shard", 16), **kw)


def _row_numbers(batch):
  return np.rint(np.expm1(batch.dense[:, 0].astype(np.float64))).astype(int)


def test_round_trip_equals_direct_reader(raw, tmp_path):
  manifest = _write(raw, tmp_path / "out")
  direct = criteo.CriteoReader(raw, 10, criteo.HashEncoder(VOCABS), "skip")
  expected = list(direct)
  got = list(shards.ShardReader(tmp_path / "out", 10, shuffle=False, num_epochs=1))
  assert [b.size for b in got] == [b.size for b in expected] == [10] * 10 + [8]
  for a, b in zip(got, expected):
    for x, y in zip(a, b):
      np.testing.assert_array_equal(x, y)
      assert x.dtype == y.dtype
  assert manifest["totals"]["rows"] == 108 and manifest["totals"]["lines"] == 110
  assert manifest["totals"]["malformed"] == {"field_count": 1, "bad_label": 1, "bad_int": 0, "bad_hex": 0}
  assert [s["rows"] for s in manifest["inputs"][0]["shards"]] == [16, 16, 5]
  on_disk = json.loads((tmp_path / "out" / "manifest.json").read_text())
  assert on_disk == manifest and on_disk["vocab_sizes"] == VOCABS
  ids = np.load(tmp_path / "out" / "day_0-00000.ids.npy")
  assert ids.dtype == np.int32 and ids.shape == (16, 26)
  assert np.load(tmp_path / "out" / "day_0-00000.labels.npy").dtype == np.uint8


@pytest.mark.parametrize("n", [1, 2, 3, 5, 17, 64, 1000, 4099])
def test_permutation_is_a_bijection(n):
  p = shards.permute(np.arange(n), n, seed=3, epoch=1)
  assert sorted(p.tolist()) == list(range(n))
  if n > 16:
    assert not np.array_equal(p, np.arange(n))
    assert not np.array_equal(p, shards.permute(np.arange(n), n, seed=3, epoch=2))


@pytest.mark.parametrize("num_processes", [1, 2, 3, 4])
def test_processes_cover_every_record_once_per_epoch(raw, tmp_path, num_processes):
  _write(raw, tmp_path / "out")
  epoch0, epoch1 = [], []
  for p in range(num_processes):
    r = shards.ShardReader(tmp_path / "out", 7, p, num_processes, shuffle=True, seed=5, num_epochs=2)
    rows = np.concatenate([_row_numbers(b) for b in r])
    n = r.records_per_epoch
    assert len(rows) == 2 * n and n in (108 // num_processes, -(-108 // num_processes))
    epoch0.append(rows[:n])
    epoch1.append(rows[n:])
  for epoch in (epoch0, epoch1):
    assert sorted(np.concatenate(epoch).tolist()) == list(range(108))
  assert not np.array_equal(np.concatenate(epoch0), np.concatenate(epoch1))  # reshuffled


def test_shuffle_is_seeded(raw, tmp_path):
  _write(raw, tmp_path / "out")
  def first(seed):
    return _row_numbers(next(shards.ShardReader(tmp_path / "out", 20, seed=seed)))

  np.testing.assert_array_equal(first(1), first(1))
  assert not np.array_equal(first(1), first(2))


@pytest.mark.parametrize("skip", [0, 3, 11, 16])  # 16 batches of 13 > one epoch of 108
def test_restore_resumes_identically(raw, tmp_path, skip):
  _write(raw, tmp_path / "out")
  a = shards.ShardReader(tmp_path / "out", 13, 1, 2, seed=9)
  for _ in range(skip):
    next(a)
  state = json.loads(json.dumps(a.state()))
  assert all(isinstance(v, int) for v in state.values())
  expected = [next(a) for _ in range(6)]
  b = shards.ShardReader(tmp_path / "out", 13, 1, 2, seed=9)
  b.restore(state)
  for x, y in zip(expected, [next(b) for _ in range(6)]):
    for u, v in zip(x, y):
      np.testing.assert_array_equal(u, v)
  with pytest.raises(ValueError, match="seed"):
    shards.ShardReader(tmp_path / "out", 13, 1, 2, seed=8).restore(state)


def test_resume_skips_done_days_and_redoes_broken_ones(raw, tmp_path):
  out = tmp_path / "out"
  _write(raw[:2], out)
  logs = []
  _write(raw, out, log=logs.append)
  assert [m.split(":")[0] for m in logs] == ["day_0", "day_1", "day_2"]
  assert "skipped" in logs[0] and "skipped" in logs[1] and "skipped" not in logs[2]
  os.remove(out / "day_1-00001.dense.npy")
  logs.clear()
  manifest = _write(raw, out, log=logs.append)
  assert ["skipped" in m for m in logs] == [True, False, True]
  assert [e["name"] for e in manifest["inputs"]] == ["day_0", "day_1", "day_2"]
  assert manifest["totals"]["rows"] == 108
  with pytest.raises(ValueError, match="fresh output directory"):
    _write(raw, out, rows_per_shard=8)


def test_parallel_workers_write_the_same_shards(raw, tmp_path):
  """Days converted by 2 worker processes: same manifest (order = input order) and same arrays."""
  one = _write(raw, tmp_path / "one")
  two = _write(raw, tmp_path / "two", workers=2)
  strip = lambda m: json.loads(json.dumps(m).replace(str(tmp_path / "two"), "").replace(str(tmp_path / "one"), ""))
  assert strip(one) == strip(two)
  assert [e["name"] for e in two["inputs"]] == ["day_0", "day_1", "day_2"]
  names = sorted(f for f in os.listdir(tmp_path / "one") if f.endswith(".npy"))
  assert names == sorted(f for f in os.listdir(tmp_path / "two") if f.endswith(".npy")) and len(names) > 9
  for f in names:
    np.testing.assert_array_equal(np.load(tmp_path / "one" / f), np.load(tmp_path / "two" / f))
  with pytest.raises(ValueError, match=r"day_2:6"):     # a worker's fail-policy error reaches the caller
    shards.write_shards(raw, tmp_path / "fail", criteo.HashEncoder(VOCABS), "fail", 16, workers=2)


def test_script_end_to_end(raw, tmp_path):
  out = tmp_path / "script_out"
  cmd = [sys.executable, os.path.join(REPO, "experiments", "preprocess_criteo.py"),
         f"--input={raw[0].parent}/day_*", f"--output_dir={out}", "--vocab_sizes=50", "--policy=skip",
         "--rows_per_shard=32", "--workers=2"]
  res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120)
  assert res.returncode == 0, res.stderr
  manifest = shards.read_manifest(out)
  assert manifest["totals"]["rows"] == 108 and manifest["vocab_sizes"] == VOCABS
  res = subprocess.run(cmd[:2] + [f"--input={raw[0].parent}/day_*", f"--output_dir={tmp_path / 'v'}",
                                  "--threshold=2", "--policy=skip"], capture_output=True, text=True,
                       cwd=REPO, timeout=120)
  assert res.returncode == 0, res.stderr
  assert (tmp_path / "v" / "vocab.npz").exists()
