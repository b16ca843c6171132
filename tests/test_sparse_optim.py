"""Row-sparse optimizers: equal to a dense step on the dense gradient, O(rows touched) in cost."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dmt_jax.embedding.engine import EmbeddingEngine, EngineConfig
from dmt_jax.embedding.sparse_optim import SparseOptimizer, dedupe_rows, dense_reference_step
from dmt_jax.features import FeatureSet, FeatureSpec, TableSpec
from dmt_jax.topology import Topology, make_mesh

R, W = 20, 4      # block rows, width
OPTS = {"sgd": SparseOptimizer("sgd", 0.5),
        "adagrad": SparseOptimizer("adagrad", 0.1, initial_accumulator=0.1),
        "rowwise_adagrad": SparseOptimizer("rowwise_adagrad", 0.2)}


def np_step(opt, table, acc, g):
  """Independent numpy (float64) dense step: the formulas of the module docstring."""
  table, g = table.astype(np.float64), g.astype(np.float64)
  if opt.name == "sgd":
    return table - opt.learning_rate * g, acc
  if opt.name == "adagrad":
    acc = acc + g * g
    return table - opt.learning_rate * g / np.sqrt(acc + opt.eps), acc
  acc = acc + (g * g).mean(-1)
  return table - opt.learning_rate * g / np.sqrt(acc + opt.eps)[:, None], acc


def dense_grad(rows, grads, num_rows):
  """Scatter-add row gradients into a dense [V, W] gradient, skipping sentinel rows (>= V)."""
  g = np.zeros((num_rows, grads.shape[1]), np.float32)
  ok = rows < num_rows
  np.add.at(g, rows[ok], grads[ok])
  return g


def _rows_grads(rng, step):
  # duplicates (3 x row 2, 2 x row 7, row 0 and R-1 edges), sentinels R in the middle and at the end
  rows = np.array([[2, 7, R, 2, 0, 19, 7, 2, R, 11, R, 5],
                   [7, 3, 3, R, 19, 14, 14, 14, 7, 1, R, R]][step], np.int32)
  grads = rng.normal(size=(rows.size, W)).astype(np.float32)
  grads[rows == R] = 0.0                      # empty slots carry zero gradient (the engine's contract)
  return rows, grads


@functools.lru_cache(maxsize=None)
def _apply(name):
  return jax.jit(OPTS[name].apply)


@pytest.mark.parametrize("name", list(OPTS))
def test_apply_equals_dense_step(name):
  opt = OPTS[name]
  rng = np.random.default_rng(0)
  table = rng.normal(size=(R, W)).astype(np.float32)
  state = opt.init_state((R, W))
  ref_t, ref_s = jnp.asarray(table), state
  np_t, np_s = table.astype(np.float64), (np.asarray(state, np.float64) if name != "sgd" else ())
  blk = jnp.asarray(table)
  all_touched = np.zeros(R, bool)
  for step in range(2):
    rows, grads = _rows_grads(rng, step)
    g = dense_grad(rows, grads, R)
    touched = np.zeros(R, bool)
    touched[rows[rows < R]] = True
    all_touched |= touched
    prev_blk, prev_state = np.asarray(blk), (np.asarray(state) if name != "sgd" else None)
    blk, state = _apply(name)(blk, state, jnp.asarray(rows), jnp.asarray(grads))
    ref_t, ref_s = dense_reference_step(opt, ref_t, ref_s, jnp.asarray(g))
    np_t, np_s = np_step(opt, np_t, np_s, g)
    blk_np, ref_np = np.asarray(blk), np.asarray(ref_t)
    # dense_reference_step itself matches the documented formulas
    np.testing.assert_allclose(ref_np, np_t, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(blk_np[touched], ref_np[touched], rtol=1e-6, atol=1e-6)
    assert not np.array_equal(blk_np[touched], prev_blk[touched])
    assert np.array_equal(blk_np[~touched], prev_blk[~touched])
    assert np.array_equal(blk_np[~all_touched], ref_np[~all_touched])   # rows no step touched
    if name != "sgd":
      st, rs = np.asarray(state), np.asarray(ref_s)
      assert st.shape == ((R, W) if name == "adagrad" else (R,))
      np.testing.assert_allclose(rs, np_s, rtol=1e-6, atol=1e-7)
      np.testing.assert_allclose(st[touched], rs[touched], rtol=1e-6, atol=1e-7)
      assert np.array_equal(st[~touched], prev_state[~touched])
      assert np.array_equal(st[~all_touched], rs[~all_touched])
  assert (~all_touched).any()
  assert np.array_equal(np.asarray(blk)[~all_touched], table[~all_touched])


def test_invalid_optimizer():
  with pytest.raises(ValueError, match="embedding optimizer"):
    SparseOptimizer("adam", 0.1)
  with pytest.raises(ValueError, match="learning rate"):
    SparseOptimizer("sgd", 0.0)


# --- through the engine: row_wise on a 2x4 mesh ------------------------------------------------------

B, D = 2, 4
FS = FeatureSet(
    tables=(TableSpec("t0", 37, D), TableSpec("t1", 20, D)),
    features=(FeatureSpec("a", "t0", 3, "sum", True), FeatureSpec("b", "t1", 2, "mean"),
              FeatureSpec("c", "t0", 1)),
    num_dense=1)


def _batch(rng):
  Bg = 8 * B
  ids = np.full((Bg, FS.num_slots), -1, np.int32)
  w = np.zeros((Bg, FS.num_slots), np.float32)
  offs = FS.slot_offsets
  for i, f in enumerate(FS.features):
    V = FS.table(f.table).vocab_size
    x = rng.integers(0, V // 2, (Bg, f.max_bag))          # only half of each table: untouched rows
    x[rng.random(x.shape) < 0.3] = -1
    ids[:, offs[i]:offs[i + 1]] = x
    ww = rng.uniform(0.5, 1.5, x.shape) if f.weighted else np.ones(x.shape)
    w[:, offs[i]:offs[i + 1]] = np.where(x >= 0, ww, 0)
  return ids, w


def _table_grads(ids, w, ct):
  """Dense table gradient of sum(emb * ct), by explicit loops."""
  g = {t.name: np.zeros((t.vocab_size, t.dim), np.float64) for t in FS.tables}
  offs = FS.slot_offsets
  for i, f in enumerate(FS.features):
    x, ww = ids[:, offs[i]:offs[i + 1]], w[:, offs[i]:offs[i + 1]]
    for b in range(x.shape[0]):
      n = (x[b] >= 0).sum()
      for j in range(x.shape[1]):
        if x[b, j] >= 0:
          s = ww[b, j] / (max(n, 1) if f.pooling == "mean" else 1)
          g[f.table][x[b, j]] += s * ct[b, i]
  return g


@pytest.mark.parametrize("name", ["adagrad", "rowwise_adagrad"])
def test_engine_row_wise_matches_dense(name):
  opt = OPTS[name]
  topo = Topology((("host", 2), ("device", 4)), "host")
  eng = EmbeddingEngine(FS, topo, make_mesh(topo), EngineConfig(sharding="row_wise"), opt,
                        batch_per_device=B)
  tabs = eng.init_logical(jax.random.key(1))
  blocks = eng.tables_from_logical(tabs)
  state = eng.init_optimizer_state(blocks)

  def step(blocks, state, ids, w, ct):
    routed = eng.route(ids, w)
    rows = eng.gather(blocks, routed)
    d_rows = jax.grad(lambda r: jnp.sum(eng.embed(r, None, routed) * ct))(rows)
    return eng.update(blocks, state, routed, d_rows)

  step = jax.jit(step)
  rng = np.random.default_rng(5)
  ref_t = {k: v.astype(np.float64) for k, v in tabs.items()}
  ref_s = {t.name: np.full((t.vocab_size, D) if name == "adagrad" else (t.vocab_size,),
                           opt.initial_accumulator) for t in FS.tables}
  for _ in range(2):
    ids, w = _batch(rng)
    ct = rng.normal(size=(8 * B, FS.num_features, D)).astype(np.float32)
    g = _table_grads(ids, w, ct)
    blocks, state = step(blocks, state, jnp.asarray(ids), jnp.asarray(w), jnp.asarray(ct))
    for k in ref_t:
      ref_t[k], ref_s[k] = np_step(opt, ref_t[k], ref_s[k], g[k])
  new_t, new_s = eng.tables_to_logical(blocks), eng.optimizer_state_to_logical(state)
  for t in FS.tables:
    k = t.name
    np.testing.assert_allclose(new_t[k], ref_t[k], rtol=1e-5, atol=1e-6, err_msg=k)
    np.testing.assert_allclose(new_s[k], ref_s[k], rtol=1e-5, atol=1e-6, err_msg=k)
    half = t.vocab_size // 2                                  # rows >= half never looked up
    assert np.array_equal(new_t[k][half:], tabs[k][half:])
    assert (new_s[k][half:] == opt.initial_accumulator).all()
    assert not np.array_equal(new_t[k][:half], tabs[k][:half])


# --- cost: O(rows touched), never O(table) ------------------------------------------------------------

BIG = 10 ** 6


def _walk(jaxpr):
  """Every equation, descending into sub-jaxprs (jit, custom_jvp, ...)."""
  for e in jaxpr.eqns:
    yield e
    for p in e.params.values():
      for q in (p if isinstance(p, (tuple, list)) else (p,)):
        inner = q.jaxpr if hasattr(q, "jaxpr") and hasattr(q.jaxpr, "eqns") else q
        if hasattr(inner, "eqns"):
          yield from _walk(inner)


@pytest.mark.parametrize("name", list(OPTS))
def test_update_cost_is_rows_touched(name):
  """Structural: on a 10^6-row block with 16 touched rows, only gathers/scatters see the big arrays,
  and XLA's cost analysis counts flops of the order of the touched rows, far below the table size."""
  opt = OPTS[name]
  n = 16
  blk = jax.ShapeDtypeStruct((BIG, W), jnp.float32)
  st = () if name == "sgd" else jax.ShapeDtypeStruct((BIG, W) if name == "adagrad" else (BIG,), jnp.float32)
  rows = jax.ShapeDtypeStruct((n,), jnp.int32)
  grads = jax.ShapeDtypeStruct((n, W), jnp.float32)
  jaxpr = jax.make_jaxpr(opt.apply)(blk, st, rows, grads).jaxpr
  big_ops = set()
  nested = ("pjit", "jit", "closed_call", "custom_jvp_call", "custom_vjp_call")
  for e in _walk(jaxpr):
    if e.primitive.name in nested:
      continue
    avals = [v.aval for v in list(e.invars) + list(e.outvars) if hasattr(v, "aval")]
    if any(BIG in getattr(a, "shape", ()) for a in avals):
      big_ops.add(e.primitive.name)
  assert big_ops and big_ops <= {"scatter-add", "scatter", "gather"}, big_ops
  cost = jax.jit(opt.apply).lower(blk, st, rows, grads).compile().cost_analysis()
  if isinstance(cost, list):
    cost = cost[0]
  flops = cost.get("flops", None)
  if flops is None:
    pytest.skip("this backend's cost analysis reports no flops")
  assert flops < BIG * W / 100, flops


@pytest.mark.parametrize("case", ["zipf", "all_same", "all_distinct", "with_sentinels", "one"])
def test_dedupe_rows_equals_unique_with_inverse(case):
  """The single-sort dedupe returns exactly what jnp.unique(size=n, fill_value, return_inverse) does."""
  rng = np.random.default_rng(7)
  rows = {"zipf": rng.zipf(1.3, 257) % 50, "all_same": np.full(64, 3), "all_distinct": rng.permutation(64),
          "with_sentinels": np.where(rng.random(100) < 0.3, 40, rng.integers(0, 40, 100)),
          "one": np.array([5])}[case].astype(np.int32)
  fill = 40 if case == "with_sentinels" else 1000
  uniq, inv = jax.jit(dedupe_rows, static_argnums=1)(jnp.asarray(rows), fill)
  want_u, want_inv = jnp.unique(jnp.asarray(rows), size=rows.size, fill_value=fill, return_inverse=True)
  np.testing.assert_array_equal(np.asarray(uniq), np.asarray(want_u))
  np.testing.assert_array_equal(np.asarray(inv), np.asarray(want_inv).ravel())
  np.testing.assert_array_equal(np.asarray(uniq)[np.asarray(inv)], rows)     # uniq[inv] reconstructs rows
