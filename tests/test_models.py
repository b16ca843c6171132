"""DLRM / DCN-v2 / interaction blocks vs NumPy references computed from the flax params."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dmt_jax.models.dcn import DCNv2
from dmt_jax.models.dlrm import DLRM
from dmt_jax.models.interactions import MLP, CrossLayerV2, dot_interaction

RTOL, ATOL = 1e-5, 1e-6


def _np(tree):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def np_mlp(p, x, activate_last):
  n = len(p)
  for i in range(n):
    x = x @ p[f"dense_{i}"]["kernel"] + p[f"dense_{i}"]["bias"]
    if i < n - 1 or activate_last:
      x = np.maximum(x, 0.0)
  return x


def np_dot(x):
  b, n, _ = x.shape
  out = [[x[s, i] @ x[s, j] for i in range(n) for j in range(i)] for s in range(b)]
  return np.asarray(out).reshape(b, n * (n - 1) // 2)


def np_cross(p, x0, xl):
  if "w" in p:
    h = xl @ p["w"]["kernel"] + p["w"]["bias"]
  else:
    h = (xl @ p["v"]["kernel"]) @ p["u"]["kernel"] + p["u"]["bias"]
  return x0 * h + xl


def _inputs(b=4, num_dense=5, f=3, d=8, seed=0):
  r = np.random.default_rng(seed)
  return (r.normal(size=(b, num_dense)).astype(np.float32), r.normal(size=(b, f, d)).astype(np.float32))


def test_dot_interaction_row_order():
  x = np.random.default_rng(1).normal(size=(2, 5, 3)).astype(np.float32)
  got = np.asarray(dot_interaction(jnp.asarray(x)))
  assert got.shape == (2, 10)
  np.testing.assert_allclose(got, np_dot(x.astype(np.float64)), rtol=RTOL, atol=ATOL)
  # Entry i(i-1)/2 + j holds <x_i, x_j>: check one explicitly.
  np.testing.assert_allclose(got[:, 3 * 2 // 2 + 1], np.sum(x[:, 3] * x[:, 1], -1), rtol=RTOL)


def test_dot_interaction_single_vector_is_empty():
  assert dot_interaction(jnp.ones((2, 1, 4))).shape == (2, 0)


@pytest.mark.parametrize("activate_last", [False, True])
def test_mlp_vs_numpy(activate_last):
  x = np.random.default_rng(2).normal(size=(3, 6)).astype(np.float32)
  m = MLP((7, 4), activate_last=activate_last)
  params = m.init(jax.random.key(0), x)["params"]
  assert set(params) == {"dense_0", "dense_1"}
  np.testing.assert_allclose(m.apply({"params": params}, x), np_mlp(_np(params), x, activate_last),
                             rtol=RTOL, atol=ATOL)
  again = m.init(jax.random.key(0), x)["params"]  # deterministic given rng
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(again)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("low_rank", [None, 3])
def test_cross_layer_vs_numpy(low_rank):
  r = np.random.default_rng(3)
  x0, xl = r.normal(size=(2, 2, 6)).astype(np.float32)
  m = CrossLayerV2(low_rank)
  params = m.init(jax.random.key(1), x0, xl)["params"]
  assert set(params) == ({"w"} if low_rank is None else {"u", "v"})
  np.testing.assert_allclose(m.apply({"params": params}, x0, xl), np_cross(_np(params), x0, xl),
                             rtol=RTOL, atol=ATOL)


def test_dlrm_vs_numpy():
  dense, emb = _inputs()
  model = DLRM(bottom_mlp=(16, 8), top_mlp=(12, 6, 1))
  params = model.init(jax.random.key(0), dense, emb)["params"]
  assert set(params) == {"bottom_mlp", "top_mlp"}
  logits = np.asarray(model.apply({"params": params}, dense, emb))
  assert logits.shape == (4,)
  p = _np(params)
  z = np_mlp(p["bottom_mlp"], dense.astype(np.float64), activate_last=True)
  vectors = np.concatenate([z[:, None, :], emb.astype(np.float64)], axis=1)
  top_in = np.concatenate([z, np_dot(vectors)], axis=1)
  assert top_in.shape == (4, 8 + 4 * 3 // 2)
  want = np_mlp(p["top_mlp"], top_in, activate_last=False)[:, 0]
  np.testing.assert_allclose(logits, want, rtol=RTOL, atol=ATOL)


def test_dlrm_bad_args():
  dense, emb = _inputs(d=8)
  with pytest.raises(ValueError, match="bottom_mlp must end in the embedding dim D=8"):
    DLRM(bottom_mlp=(16, 4), top_mlp=(1,)).init(jax.random.key(0), dense, emb)
  with pytest.raises(ValueError, match="top_mlp must end in width 1"):
    DLRM(bottom_mlp=(8,), top_mlp=(4, 2)).init(jax.random.key(0), dense, emb)
  with pytest.raises(ValueError, match="emb \\[B, F, D\\]"):
    DLRM(bottom_mlp=(8,), top_mlp=(1,)).init(jax.random.key(0), dense, emb[:, 0])


@pytest.mark.parametrize("low_rank", [None, 4])
def test_dcn_vs_numpy(low_rank):
  dense, emb = _inputs()
  model = DCNv2(num_cross_layers=2, low_rank=low_rank, deep_mlp=(16, 8))
  params = model.init(jax.random.key(0), dense, emb)["params"]
  assert set(params) == {"cross_0", "cross_1", "deep_mlp", "logit"}
  logits = np.asarray(model.apply({"params": params}, dense, emb))
  assert logits.shape == (4,)
  p = _np(params)
  x0 = np.concatenate([dense, emb.reshape(4, -1)], axis=1).astype(np.float64)
  x = x0
  for i in range(2):
    x = np_cross(p[f"cross_{i}"], x0, x)
  x = np_mlp(p["deep_mlp"], x, activate_last=True)
  want = (x @ p["logit"]["kernel"] + p["logit"]["bias"])[:, 0]
  np.testing.assert_allclose(logits, want, rtol=RTOL, atol=ATOL)


def test_dcn_bad_args():
  dense, emb = _inputs()
  with pytest.raises(ValueError, match="low_rank must be >= 1"):
    DCNv2(num_cross_layers=1, low_rank=0, deep_mlp=(4,)).init(jax.random.key(0), dense, emb)
  with pytest.raises(ValueError, match="num_cross_layers must be >= 0"):
    DCNv2(num_cross_layers=-1, low_rank=None, deep_mlp=(4,)).init(jax.random.key(0), dense, emb)
