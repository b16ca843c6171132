"""Tower modules: shapes and K, identity exactness, vmap over stacked towers, argument errors."""

import jax
import numpy as np
import pytest

from dmt_jax.tower_modules import KINDS, effective_compression, make_tower_module, tower_output_vectors

B, F, D = 4, 6, 8


def _x(shape=(B, F, D), seed=0):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


@pytest.mark.parametrize("f, c, k", [(6, 1, 6), (6, 2, 3), (6, 4, 2), (6, 16, 1), (5, 2, 3), (6, 1.2, 5),
                                     (7, 7 / 3, 3)])
def test_output_vectors(f, c, k):
  assert tower_output_vectors("linear", f, c) == k
  assert effective_compression("linear", f, c) == pytest.approx(f / k)
  assert effective_compression("linear", f, c) <= c + 1e-9


@pytest.mark.parametrize("kind", KINDS)
def test_shapes(kind):
  c = 1 if kind == "identity" else 2.5
  k = tower_output_vectors(kind, F, c)
  assert k == (F if kind == "identity" else 3)
  m = make_tower_module(kind, F, D, c, hidden=(16,), num_cross_layers=2)
  x = _x()
  variables = m.init(jax.random.key(0), x)
  assert set(variables) <= {"params"}
  y = m.apply(variables, x)
  assert y.shape == (B, k, D)
  assert np.all(np.isfinite(np.asarray(y)))


def test_param_names():
  x = _x()
  names = {}
  for kind in KINDS:
    m = make_tower_module(kind, F, D, 1 if kind == "identity" else 2, hidden=(16,), num_cross_layers=2)
    names[kind] = set(m.init(jax.random.key(0), x).get("params", {}))
  assert names == {"identity": set(), "linear": {"proj"}, "mlp": {"mlp"}, "dcn": {"cross_0", "cross_1", "proj"},
                   "dot": {"proj"}, "mix": {"mix", "bias"}}


def test_identity_is_exact():
  m = make_tower_module("identity", F, D, 1)
  x = _x()
  np.testing.assert_array_equal(np.asarray(m.apply(m.init(jax.random.key(0), x), x)), x)


def test_dot_tower_single_feature():
  m = make_tower_module("dot", 1, D, 1)
  x = _x((B, 1, D))
  assert m.apply(m.init(jax.random.key(0), x), x).shape == (B, 1, D)


@pytest.mark.parametrize("kind", KINDS)
def test_vmap_over_stacked_towers(kind):
  c = 1 if kind == "identity" else 2
  m = make_tower_module(kind, F, D, c, hidden=(16,), num_cross_layers=2, low_rank=3 if kind == "dcn" else None)
  xs = _x((3, B, F, D), seed=1)
  xs[2, :, -2:] = 0.0  # third tower padded with zero features up to the common F_t
  rngs = jax.random.split(jax.random.key(7), 3)
  stacked = jax.vmap(m.init)(rngs, xs)
  ys = np.asarray(jax.jit(jax.vmap(m.apply))(stacked, xs))
  for t in range(3):
    own = m.init(rngs[t], xs[t])
    for a, b in zip(jax.tree.leaves(own), jax.tree.leaves(jax.tree.map(lambda p: p[t], stacked))):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_allclose(ys[t], np.asarray(m.apply(own, xs[t])), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("call, match", [
    (lambda: tower_output_vectors("conv", F, 2), "unknown tower module kind 'conv'"),
    (lambda: make_tower_module("conv", F, D, 2), "unknown tower module kind"),
    (lambda: tower_output_vectors("linear", F, 0.5), "compression ratio must be a finite number >= 1"),
    (lambda: tower_output_vectors("linear", F, float("inf")), "finite number >= 1"),
    (lambda: tower_output_vectors("identity", F, 2), "identity tower module cannot compress"),
    (lambda: tower_output_vectors("linear", 0, 1), "num_features >= 1"),
    (lambda: make_tower_module("linear", F, 0, 1), "dim must be >= 1"),
    (lambda: make_tower_module("dcn", F, D, 2, num_cross_layers=0), "num_cross_layers >= 1"),
    (lambda: make_tower_module("dcn", F, D, 2, low_rank=0), "low_rank must be >= 1"),
    (lambda: make_tower_module("mlp", F, D, 2, hidden=(0,)), "hidden widths must be >= 1"),
])
def test_bad_args(call, match):
  with pytest.raises(ValueError, match=match):
    call()


def test_wrong_feature_count_is_rejected():
  m = make_tower_module("linear", F, D, 2)
  with pytest.raises(ValueError, match=r"expects x of shape \[B, 6, 8\]"):
    m.init(jax.random.key(0), _x((B, F + 1, D)))


def test_mix_tower_is_the_feature_mixture_it_documents():
  m = make_tower_module("mix", F, D, 2)
  x = _x()
  v = m.init(jax.random.key(3), x)
  w, b = np.asarray(v["params"]["mix"]), np.asarray(v["params"]["bias"])
  assert w.shape == (3, F) and b.shape == (3, D)
  b = b + np.random.default_rng(1).normal(size=b.shape).astype(np.float32)   # non-zero bias too
  y = np.asarray(m.apply({"params": {"mix": w, "bias": b}}, x))
  want = np.stack([sum(w[k, f] * x[:, f] for f in range(F)) + b[k] for k in range(3)], axis=1)
  np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
