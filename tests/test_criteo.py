"""Criteo TSV reader: parsing conventions, gzip, batching, malformed-line policies, stable hashing."""

import gzip
import math

import numpy as np
import pytest

from dmt_jax.data import criteo
from dmt_jax.features import validate_batch

VOCABS = [1000] * 13 + [7] * 13


def make_line(label=1, ints=None, cats=None):
  ints = [str(i) for i in range(13)] if ints is None else ints
  cats = [f"{0x1000 + j:08x}" for j in range(26)] if cats is None else cats
  return "\t".join([str(label)] + [str(x) for x in ints] + list(cats))


def random_lines(n, seed=0):
  rng = np.random.default_rng(seed)
  lines = []
  for _ in range(n):
    ints = ["" if rng.random() < 0.1 else str(int(rng.integers(-3, 500))) for _ in range(13)]
    cats = ["" if rng.random() < 0.1 else f"{int(rng.integers(0, 40)):08x}" for _ in range(26)]
    lines.append(make_line(int(rng.random() < 0.3), ints, cats))
  return lines


def write(path, lines, gz=False):
  data = ("\n".join(lines) + "\n").encode()
  if gz:
    data = gzip.compress(data)
  path.write_bytes(data)
  return path


def _ref_splitmix_id(value, column, vocab):
  """Pure-Python reference of the documented hash."""
  mask = (1 << 64) - 1
  z = (value + (column + 1) * 0x9E3779B97F4A7C15) & mask
  z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
  z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
  z ^= z >> 31
  return 1 + z % (vocab - 1)


def read_all(paths, batch_size=1000, encoder=None, policy="fail"):
  r = criteo.CriteoReader(paths, batch_size, encoder or criteo.HashEncoder(VOCABS), policy)
  batches = list(r)
  return batches, r


def test_parses_one_line_exactly(tmp_path):
  ints = ["5", "", "-7", "0", "123456789012"] + ["1"] * 8
  cats = ["68fd1e64", "", "FFFFFFFFFFFFFFFF"] + ["0"] * 23
  p = write(tmp_path / "day_0", [make_line(0, ints, cats)])
  (b,), r = read_all([p])
  expect_dense = [math.log1p(5), 0, 0, 0, math.log1p(123456789012)] + [math.log1p(1)] * 8
  np.testing.assert_allclose(b.dense[0], expect_dense, rtol=1e-6)
  assert b.dense.dtype == np.float32 and b.ids.dtype == np.int32 and b.weights.dtype == np.float32
  assert b.labels.tolist() == [0.0]
  vals = [0x68fd1e64, None, 0xFFFFFFFFFFFFFFFF] + [0] * 23
  expect_ids = [criteo.MISSING_ID if v is None else _ref_splitmix_id(v, c, VOCABS[c])
                for c, v in enumerate(vals)]
  assert b.ids[0].tolist() == expect_ids
  np.testing.assert_array_equal(b.weights, 1.0)
  assert r.stats.as_dict()["rows"] == 1 and r.stats.lines == 1


def test_hash_ids_are_pinned():
  """Ids must never change between runs, machines or versions (checkpoints depend on them)."""
  enc = criteo.HashEncoder([1000] * 26)
  v = np.array([[0x68fd1e64] * 26, [0xFFFFFFFFFFFFFFFF] * 26], np.uint64)
  assert enc.encode(v, np.ones(v.shape, bool))[:, :4].tolist() == [[165, 653, 32, 700], [459, 304, 122, 946]]
  mod = criteo.HashEncoder([1000] * 26, "mod")
  assert mod.encode(v, np.ones(v.shape, bool))[:, 0].tolist() == [0x68fd1e64 % 999 + 1, (2**64 - 1) % 999 + 1]


def test_gzip_detected_by_magic_bytes(tmp_path):
  lines = random_lines(50)
  plain = write(tmp_path / "train.txt", lines)
  gz = write(tmp_path / "day_1", lines, gz=True)  # no .gz suffix on purpose
  (a,), _ = read_all([plain])
  (b,), _ = read_all([gz])
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)


def test_missing_values_and_validate(tmp_path):
  p = write(tmp_path / "t", random_lines(200))
  batches, r = read_all([p], batch_size=64)
  fs = r.feature_set(8)
  for b in batches:
    validate_batch(fs, b)
  ids = np.concatenate([b.ids for b in batches])
  assert (ids == criteo.MISSING_ID).any() and (ids > 0).any()
  assert r.stats.rows == 200 and sum(r.stats.malformed.values()) == 0


def test_batches_span_files_and_remainder(tmp_path):
  p1 = write(tmp_path / "a", random_lines(30, 1))
  p2 = write(tmp_path / "b", random_lines(25, 2))
  batches, r = read_all([p1, p2], batch_size=20)
  assert [b.size for b in batches] == [20, 20, 15]
  (whole,), _ = read_all([p1, p2], batch_size=1000)
  np.testing.assert_array_equal(np.concatenate([b.ids for b in batches]), whole.ids)
  rd = criteo.CriteoReader([p1, p2], 20, criteo.HashEncoder(VOCABS), drop_remainder=True, chunk_rows=7)
  assert [b.size for b in rd] == [20, 20]
  assert rd.dropped_remainder == 15 and rd.stats.rows == 55


MALFORMED = {
    "field_count": make_line()[: -len("\t00001019")],  # 39 fields
    "field_count_empty": "",
    "bad_label": make_line(label=2),
    "bad_label_text": "x" + make_line()[1:],
    "bad_int": make_line(ints=["1.5"] + ["0"] * 12),
    "bad_int_dash": make_line(ints=["0"] * 12 + ["-"]),
    "bad_hex": make_line(cats=["zz"] + ["1"] * 25),
    "bad_hex_long": make_line(cats=["1" * 17] + ["1"] * 25),
    "bad_hex_prefix": make_line(cats=["0x1f"] + ["1"] * 25),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_fail_names_file_line_and_reason(tmp_path, case):
  reason = case if case in criteo.REASONS else case.rsplit("_", 1)[0]
  p = write(tmp_path / "day_3", random_lines(4) + [MALFORMED[case]] + random_lines(2))
  with pytest.raises(criteo.MalformedLineError, match=rf"{p}:5: {reason}"):
    read_all([p])


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_skip_counts(tmp_path, case):
  reason = case if case in criteo.REASONS else case.rsplit("_", 1)[0]
  good = random_lines(6)
  p = write(tmp_path / "day_3", good[:4] + [MALFORMED[case]] + good[4:])
  (b,), r = read_all([p], policy="skip")
  (ref,), _ = read_all([write(tmp_path / "ref", good)])
  np.testing.assert_array_equal(b.ids, ref.ids)
  assert r.stats.rows == 6 and r.stats.lines == 7
  assert r.stats.malformed == {k: int(k == reason) for k in criteo.REASONS}
  assert r.stats.first_malformed == {reason: f"{p}:5"}


def test_all_reasons_counted_together(tmp_path):
  bad = [MALFORMED[k] for k in sorted(MALFORMED)]
  p = write(tmp_path / "mix", random_lines(3) + bad + random_lines(3, 1))
  _, r = read_all([p], policy="skip")
  assert r.stats.malformed == {"field_count": 2, "bad_label": 2, "bad_int": 2, "bad_hex": 3}
  assert r.stats.rows == 6 and r.stats.lines == 6 + len(bad)


def test_crlf_line_endings(tmp_path):
  lines = random_lines(5)
  p = tmp_path / "crlf"
  p.write_bytes(("\r\n".join(lines) + "\r\n").encode())
  (a,), _ = read_all([p])
  (b,), _ = read_all([write(tmp_path / "lf", lines)])
  np.testing.assert_array_equal(a.ids, b.ids)


def test_build_vocab_threshold_and_roundtrip(tmp_path):
  cats = lambda v: [v] + ["a"] * 25  # noqa: E731
  lines = [make_line(cats=cats("ff")) for _ in range(3)] + [make_line(cats=cats("0a")) for _ in range(2)]
  lines += [make_line(cats=cats("01")), make_line(cats=cats(""))]
  p = write(tmp_path / "v", lines)
  vocab = criteo.build_vocab([p], threshold=2)
  assert vocab.values[0].tolist() == [0x0a, 0xff]
  assert vocab.vocab_sizes[0] == 4 and vocab.vocab_sizes[1] == 3
  (b,), _ = read_all([p], encoder=vocab)
  assert b.ids[:, 0].tolist() == [3, 3, 3, 2, 2, criteo.OOV_ID, criteo.MISSING_ID]
  vocab.save(tmp_path / "vocab.npz")
  again = criteo.CriteoVocab.load(tmp_path / "vocab.npz")
  assert again.threshold == 2 and all(np.array_equal(x, y) for x, y in zip(again.values, vocab.values))


def test_bad_arguments(tmp_path):
  with pytest.raises(ValueError, match="policy"):
    criteo.CriteoReader([], 10, criteo.HashEncoder(VOCABS), policy="ignore")
  with pytest.raises(ValueError, match="26 vocab sizes"):
    criteo.HashEncoder([10] * 3)


def test_truncated_gzip_names_file(tmp_path):
  data = gzip.compress(("\n".join(random_lines(2000)) + "\n").encode())
  p = tmp_path / "day_9"
  p.write_bytes(data[: len(data) // 2])
  with pytest.raises(OSError, match=rf"{p}: cannot read past line \d+"):
    read_all([p])
