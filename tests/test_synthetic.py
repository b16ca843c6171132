"""Synthetic click generator: determinism, sharding, layout conventions, planted structure."""

import numpy as np
import pytest

from dmt_jax.data.synthetic import SyntheticClickData
from dmt_jax.features import FeatureSet, FeatureSpec, TableSpec, simple_feature_set, validate_batch


def _auc(scores, labels):
  order = np.argsort(scores, kind="stable")
  ranks = np.empty(len(scores))
  ranks[order] = np.arange(1, len(scores) + 1)
  pos = labels == 1
  npos, nneg = pos.sum(), (~pos).sum()
  return (ranks[pos].sum() - npos * (npos + 1) / 2) / (npos * nneg)


def _mixed_fs():
  """Bags of several lengths, a weighted and a mean-pooled feature, two features sharing a table."""
  tables = (TableSpec("a", 300, 8), TableSpec("b", 50, 8), TableSpec("c", 1000, 8), TableSpec("d", 7, 8))
  feats = (FeatureSpec("f0", "a"), FeatureSpec("f1", "b", max_bag=4),
           FeatureSpec("f2", "c", max_bag=3, weighted=True),
           FeatureSpec("f3", "a", max_bag=2, pooling="mean"),
           FeatureSpec("f4", "d"), FeatureSpec("f5", "c"))
  return FeatureSet(tables, feats, num_dense=5)


@pytest.fixture(scope="module")
def mixed():
  return SyntheticClickData(_mixed_fs(), seed=3, num_planted_groups=2, block_size=64)


def _eq(b1, b2):
  for x, y in zip(b1, b2):
    np.testing.assert_array_equal(x, y)


def test_deterministic_per_seed(mixed):
  again = SyntheticClickData(_mixed_fs(), seed=3, num_planted_groups=2, block_size=64)
  _eq(mixed.batch(5, 128), again.batch(5, 128))
  assert again.planted_groups == mixed.planted_groups
  other = SyntheticClickData(_mixed_fs(), seed=4, num_planted_groups=2, block_size=64)
  assert not np.array_equal(mixed.batch(5, 128).ids, other.batch(5, 128).ids)


def test_steps_and_splits_differ(mixed):
  a, b, e = mixed.batch(0, 128), mixed.batch(1, 128), mixed.batch(0, 128, "eval")
  assert not np.array_equal(a.ids, b.ids)
  assert not np.array_equal(a.ids, e.ids)
  with pytest.raises(ValueError, match="split"):
    mixed.batch(0, 128, "test")


@pytest.mark.parametrize("num_processes", [1, 2, 3, 4])
def test_process_shards_concatenate_to_single_process_batch(mixed, num_processes):
  gb = 192  # per-process shards (192, 96, 64, 48 rows) straddle the 64-row blocks
  full = mixed.batch_with_logits(7, gb)
  shards = [mixed.batch_with_logits(7, gb, "train", p, num_processes) for p in range(num_processes)]
  for s in shards:
    assert s.batch.size == gb // num_processes
  for i in range(4):
    np.testing.assert_array_equal(np.concatenate([s.batch[i] for s in shards]), full.batch[i])
  np.testing.assert_array_equal(np.concatenate([s.true_logits for s in shards]), full.true_logits)


def test_rows_do_not_depend_on_batch_size(mixed):
  _eq(mixed.batch(2, 100), [x[:100] for x in mixed.batch(2, 300)])


def test_bad_sharding_raises(mixed):
  with pytest.raises(ValueError, match="not divisible by num_processes"):
    mixed.batch(0, 100, num_processes=3)
  with pytest.raises(ValueError, match="process_index"):
    mixed.batch(0, 96, process_index=3, num_processes=3)


def test_shapes_dtypes_and_padding(mixed):
  fs = mixed.fs
  b = mixed.batch(0, 512)
  assert b.dense.shape == (512, 5) and b.dense.dtype == np.float32
  assert b.ids.shape == (512, fs.num_slots) and b.ids.dtype == np.int32
  assert b.weights.shape == (512, fs.num_slots) and b.weights.dtype == np.float32
  assert b.labels.shape == (512,) and b.labels.dtype == np.float32
  assert np.all(b.dense >= 0)  # log1p of counts
  validate_batch(fs, b)
  offs = fs.slot_offsets
  for i, f in enumerate(fs.features):
    ids, w = b.ids[:, offs[i]:offs[i + 1]], b.weights[:, offs[i]:offs[i + 1]]
    real = ids >= 0
    assert real[:, 0].all(), "every bag has at least one id"
    assert np.all(np.diff(real.astype(int), axis=1) <= 0), "padding only after the real ids"
    assert np.all(ids[~real] == -1) and np.all(w[~real] == 0.0)
    assert ids.max() < fs.table(f.table).vocab_size
    if f.weighted:
      assert np.all(w[real] > 0) and len(np.unique(w[real])) > 10
    else:
      assert np.all(w[real] == 1.0)
    if f.max_bag > 1:
      assert len(np.unique(real.sum(1))) > 1, "bag lengths vary"


def test_popularity_is_power_law_and_differs_per_feature():
  fs = simple_feature_set([500, 500], 8, num_dense=0)
  d = SyntheticClickData(fs, seed=0, num_planted_groups=1)
  ids = d.batch(0, 20000).ids
  c0, c1 = np.bincount(ids[:, 0], minlength=500), np.bincount(ids[:, 1], minlength=500)
  top = np.sort(c0)[::-1]
  assert top[0] > 20 * np.median(top)  # heavy head
  assert np.argmax(c0) != np.argmax(c1) or np.argsort(c0)[-5:].tolist() != np.argsort(c1)[-5:].tolist()


def test_planted_groups_partition_features():
  fs = simple_feature_set([100] * 11, 8)
  d = SyntheticClickData(fs, seed=1, num_planted_groups=3)
  groups = d.planted_groups
  assert len(groups) == 3
  assert sorted(i for g in groups for i in g) == list(range(11))
  assert all(len(g) >= 3 for g in groups)
  assert d.planted_groups != SyntheticClickData(fs, seed=2, num_planted_groups=3).planted_groups
  with pytest.raises(ValueError, match="num_planted_groups"):
    SyntheticClickData(fs, seed=1, num_planted_groups=12)


@pytest.fixture(scope="module")
def criteo_like():
  return SyntheticClickData(simple_feature_set([1000] * 12, 16), seed=0)


def test_base_rate_and_bayes_auc(criteo_like):
  lb = criteo_like.batch_with_logits(0, 16384, "eval")
  y = lb.batch.labels
  assert 0.2 <= y.mean() <= 0.35
  assert _auc(lb.true_logits, y) >= 0.85
  np.testing.assert_allclose(criteo_like.true_logits(lb.batch), lb.true_logits, rtol=1e-5, atol=1e-5)


def _swap_feature(d, batch, f, perm):
  ids = batch.ids.copy()
  w = batch.weights.copy()
  o = d.fs.slot_offsets
  ids[:, o[f]:o[f + 1]] = ids[perm, o[f]:o[f + 1]]
  w[:, o[f]:o[f + 1]] = w[perm, o[f]:o[f + 1]]
  return batch._replace(ids=ids, weights=w)


def test_no_cross_group_interactions(criteo_like):
  """The mixed second difference of the true logit in two features is 0 iff they are in different groups."""
  d = criteo_like
  b = d.batch(0, 512)
  perm = np.random.default_rng(0).permutation(512)
  g0, g1 = d.planted_groups[0], d.planted_groups[1]

  def mixed_diff(f, g):
    bf, bg = _swap_feature(d, b, f, perm), _swap_feature(d, b, g, perm)
    bfg = _swap_feature(d, bf, g, perm)
    return d.true_logits(bfg) - d.true_logits(bf) - d.true_logits(bg) + d.true_logits(b)

  np.testing.assert_allclose(mixed_diff(g0[0], g1[0]), 0.0, atol=1e-4)
  assert np.abs(mixed_diff(g0[0], g0[1])).mean() > 0.1
