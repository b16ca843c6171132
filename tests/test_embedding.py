"""EmbeddingEngine vs a single-device numpy reference: forward pooling, row gradients, logical layout.

Every case (mesh x sharding type, plus row-wise over a subset of axes and identity-tower SPTT) runs
route -> gather -> embed -> vjp -> update once, in one jit, cached per module; the tests below then
compare its outputs with numpy references written here.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dmt_jax.embedding.engine import EmbeddingEngine, EngineConfig
from dmt_jax.embedding.sparse_optim import SparseOptimizer
from dmt_jax.features import FeatureSet, FeatureSpec, TableSpec
from dmt_jax.topology import Topology, make_mesh

B = 2      # samples per device
N = 8      # devices
D = 8      # embedding dim

# Several features share t0; t5 is smaller than the 8 row shards of a row-wise table.
FS = FeatureSet(
    tables=(TableSpec("t0", 50, D), TableSpec("t1", 70, D), TableSpec("t2", 30, D),
            TableSpec("t3", 90, D), TableSpec("t4", 40, D), TableSpec("t5", 6, D)),
    features=(FeatureSpec("a", "t0", 3, "sum", True),
              FeatureSpec("b", "t1", 1),
              FeatureSpec("c", "t2", 2, "mean"),
              FeatureSpec("d", "t3", 4),
              FeatureSpec("e", "t4", 1),
              FeatureSpec("f", "t0", 2, "mean"),
              FeatureSpec("g", "t5", 3, "mean", True),
              FeatureSpec("h", "t0", 1, "sum", True)),
    num_dense=3)

# Every bag the same length (2), so table-/column-wise lookups take the static path (lookup.py); still
# multi-hot with padding, weights, mean pooling and a shared table.
FS_UNIFORM = FeatureSet(
    tables=(TableSpec("t0", 50, D), TableSpec("t1", 70, D), TableSpec("t2", 30, D),
            TableSpec("t3", 90, D), TableSpec("t4", 40, D)),
    features=(FeatureSpec("a", "t0", 2, "sum", True), FeatureSpec("b", "t1", 2),
              FeatureSpec("c", "t2", 2, "mean"), FeatureSpec("d", "t3", 2),
              FeatureSpec("e", "t4", 2, "mean", True), FeatureSpec("f", "t0", 2, "mean"),
              FeatureSpec("g", "t1", 2, "sum", True), FeatureSpec("h", "t3", 2)),
    num_dense=3)

MESHES = {"1x8": (("host", 1), ("device", 8)),
          "2x4": (("host", 2), ("device", 4)),
          "4x2": (("host", 4), ("device", 2)),
          "2x2x2": (("rack", 2), ("host", 2), ("device", 2))}
KINDS = ("table_wise", "row_wise", "column_wise", "data_parallel", "table_row_wise")

# Identity towers; features of t0 (a, f, h = 0, 5, 7) stay in one group; feature order permuted.
TOWERS = {"2x4": [[5, 0], [7, 1], [4, 2, 6], [3]],        # 2 groups x 2 towers
          "2x2x2": [[5, 0, 7], [1, 6], [4, 2], [3]]}      # 4 groups (rack x host) x 1 tower

CASES = {}
for _m in ("1x8", "2x4", "4x2"):
  for _k in KINDS:
    CASES[f"{_m}-{_k}"] = (_m, EngineConfig(mode="flat", sharding=_k))
CASES["2x4-row_wise-device"] = ("2x4", EngineConfig(mode="flat", sharding="row_wise",
                                                    routing_axes=("device",)))
for _m in TOWERS:
  for _k in ("table_wise", "row_wise", "column_wise"):
    CASES[f"towers-{_m}-{_k}"] = (_m, EngineConfig(mode="towers", sharding=_k, towers=TOWERS[_m]))
# Uniform bags: table-, column-wise and data-parallel take the static path (mixed bags above bucket);
# each has a twin forced onto the bucketed path.
TOWERS_UNIFORM = [[5, 0], [6, 1], [4, 2], [7, 3]]          # 2 groups x 2 towers, tables kept in a group
for _m in ("1x8", "2x4"):
  for _k in ("table_wise", "column_wise", "data_parallel"):
    CASES[f"uniform-{_m}-{_k}"] = (_m, EngineConfig(mode="flat", sharding=_k), FS_UNIFORM)
for _k in ("table_wise", "column_wise"):
  CASES[f"uniform-towers-2x4-{_k}"] = ("2x4", EngineConfig(mode="towers", sharding=_k, towers=TOWERS_UNIFORM),
                                       FS_UNIFORM)
for _name in [n for n in CASES if n.startswith("uniform-") and "1x8" not in n]:
  _m, _cfg, _fs = CASES[_name]
  CASES[_name + "-bucketed"] = (_m, dataclasses.replace(_cfg, static_routing=False), _fs)


# --- numpy references --------------------------------------------------------------------------

def make_batch(seed=0, FS=FS):
  """Multi-hot ids with -1 padding (some bags empty), weights 1 for unweighted features, 0 at padding."""
  rng = np.random.default_rng(seed)
  Bg = B * N
  ids = np.full((Bg, FS.num_slots), -1, np.int32)
  w = np.zeros((Bg, FS.num_slots), np.float32)
  offs = FS.slot_offsets
  for i, f in enumerate(FS.features):
    V = FS.table(f.table).vocab_size
    x = rng.integers(0, V, (Bg, f.max_bag))
    L = rng.integers(0, f.max_bag + 1, (Bg,))
    L[:2] = f.max_bag
    x[0, 0], x[1, 0] = V - 1, 0          # first and last row of every table
    x[np.arange(f.max_bag)[None] >= L[:, None]] = -1
    ids[:, offs[i]:offs[i + 1]] = x
    ww = rng.uniform(0.5, 1.5, x.shape) if f.weighted else np.ones(x.shape)
    w[:, offs[i]:offs[i + 1]] = np.where(x >= 0, ww, 0.0)
  return ids, w


def _scales(ids, w, i, FS=FS):
  """[Bg, bag] multiplier of each id of feature i (weight, / count for mean), 0 at padding."""
  f = FS.features[i]
  offs = FS.slot_offsets
  x = ids[:, offs[i]:offs[i + 1]]
  s = np.where(x >= 0, w[:, offs[i]:offs[i + 1]], 0.0).astype(np.float64)
  if f.pooling == "mean":
    s = s / np.maximum((x >= 0).sum(1), 1)[:, None]
  return x, s


def ref_lookup(tables, ids, w, FS=FS):
  out = []
  for i, f in enumerate(FS.features):
    x, s = _scales(ids, w, i, FS)
    T = tables[f.table].astype(np.float64)
    out.append((T[np.maximum(x, 0)] * s[..., None]).sum(1))
  return np.stack(out, 1)


def ref_grad(ids, w, ct, FS=FS):
  """Dense d(sum(emb * ct)) / d(table) for every table, by explicit loops over ids."""
  g = {t.name: np.zeros((t.vocab_size, t.dim)) for t in FS.tables}
  for i, f in enumerate(FS.features):
    x, s = _scales(ids, w, i, FS)
    for b in range(x.shape[0]):
      for j in range(x.shape[1]):
        if x[b, j] >= 0:
          g[f.table][x[b, j]] += s[b, j] * ct[b, i].astype(np.float64)
  return g


def touched_rows(ids, FS=FS):
  t = {tb.name: np.zeros(tb.vocab_size, bool) for tb in FS.tables}
  offs = FS.slot_offsets
  for i, f in enumerate(FS.features):
    x = ids[:, offs[i]:offs[i + 1]]
    t[f.table][x[x >= 0]] = True
  return t


# --- one cached run per case ----------------------------------------------------------------------

def case_features(name):
  return CASES[name][2] if len(CASES[name]) > 2 else FS


@functools.lru_cache(maxsize=None)
def run_case(name):
  mesh_name, cfg = CASES[name][:2]
  fs = case_features(name)
  topo = Topology(MESHES[mesh_name], "host")
  eng = EmbeddingEngine(fs, topo, make_mesh(topo), cfg, SparseOptimizer("sgd", 1.0), batch_per_device=B)
  tabs = eng.init_logical(jax.random.key(0))
  blocks = eng.tables_from_logical(tabs)
  opt = eng.init_optimizer_state(blocks)
  ids, w = make_batch(FS=fs)
  ct = np.random.default_rng(1).normal(size=(B * N, fs.num_features, D)).astype(np.float32)

  def step(blocks, opt, ids, w, ct):
    routed = eng.route(ids, w)
    rows = eng.gather(blocks, routed)
    emb, vjp = jax.vjp(lambda r: eng.embed(r, None, routed), rows)
    (d_rows,) = vjp(ct)
    nb, no = eng.update(blocks, opt, routed, d_rows)
    return emb, nb, routed["overflow"]

  args = (blocks, opt, jnp.asarray(ids), jnp.asarray(w), jnp.asarray(ct))
  # LLVM -O0 halves the CPU compile time of these tiny programs; the XLA graph is unchanged.
  compiled = jax.jit(step).lower(*args).compile({"xla_backend_optimization_level": 0})
  emb, nb, overflow = compiled(*args)
  return dict(fs=fs, eng=eng, tabs=tabs, ids=ids, w=w, ct=ct, emb=np.asarray(emb), new_blocks=np.asarray(nb),
              new=eng.tables_to_logical(nb), roundtrip=eng.tables_to_logical(blocks),
              overflow=np.asarray(overflow))


@functools.lru_cache(maxsize=None)
def reference_grads(fs_name):
  fs = {"FS": FS, "FS_UNIFORM": FS_UNIFORM}[fs_name]
  ids, w = make_batch(FS=fs)
  ct = np.random.default_rng(1).normal(size=(B * N, fs.num_features, D)).astype(np.float32)
  return ref_grad(ids, w, ct, fs)


def test_reference_sanity():
  """The numpy references themselves: a hand-computed bag and a finite-difference-free check."""
  ids, w = make_batch()
  tabs = {t.name: np.random.default_rng(3).normal(size=(t.vocab_size, t.dim)) for t in FS.tables}
  e = ref_lookup(tabs, ids, w)
  i = FS.feature_index("g")           # mean, weighted
  o = FS.slot_offsets[i]
  x, ww = ids[0, o:o + 3], w[0, o:o + 3]
  want = sum(ww[j] * tabs["t5"][x[j]] for j in range(3) if x[j] >= 0) / max((x >= 0).sum(), 1)
  np.testing.assert_allclose(e[0, i], want, rtol=1e-12)
  # the reference gradient is the adjoint of the reference lookup (linear in the tables)
  ct = np.random.default_rng(4).normal(size=e.shape)
  g = ref_grad(ids, w, ct)
  lhs = float((e * ct).sum())
  rhs = float(sum((g[k] * tabs[k]).sum() for k in tabs))
  np.testing.assert_allclose(lhs, rhs, rtol=1e-10)
  assert (ids == -1).any() and (w[ids == -1] == 0).all()


@pytest.mark.parametrize("name", list(CASES))
def test_forward(name):
  r = run_case(name)
  fs = r["fs"]
  assert r["emb"].shape == (B * N, fs.num_features, D)
  np.testing.assert_allclose(r["emb"], ref_lookup(r["tabs"], r["ids"], r["w"], fs), rtol=0, atol=1e-6)
  assert int(r["overflow"].sum()) == 0


@pytest.mark.parametrize("name", list(CASES))
def test_roundtrip(name):
  r = run_case(name)
  for t in r["fs"].tables:
    assert r["roundtrip"][t.name].dtype == r["tabs"][t.name].dtype
    assert np.array_equal(r["roundtrip"][t.name], r["tabs"][t.name]), t.name


@pytest.mark.parametrize("name", list(CASES))
def test_gradient(name):
  r = run_case(name)
  fs = r["fs"]
  grads = reference_grads("FS" if fs is FS else "FS_UNIFORM")
  touched = touched_rows(r["ids"], fs)
  for t in fs.tables:
    old, new = r["tabs"][t.name], r["new"][t.name]
    implied = old.astype(np.float64) - new.astype(np.float64)      # SGD lr=1: old - new = grad
    np.testing.assert_allclose(implied, grads[t.name], rtol=1e-5, atol=1e-6, err_msg=t.name)
    untouched = ~touched[t.name]
    assert np.array_equal(new[untouched], old[untouched]), t.name
  assert all(touched[t].any() for t in touched) and sum((~touched[t]).sum() for t in touched) > 100


@pytest.mark.parametrize("name", list(CASES))
def test_routing_path(name):
  """Uniform-bag, id-independent layouts take the static path unless told otherwise; row-wise and
  mixed bag lengths (the static path would pad) always bucket."""
  eng = run_case(name)["eng"]
  static = name.startswith("uniform-") and not name.endswith("-bucketed")
  assert eng.static_routing == static


def test_static_and_bucketed_paths_agree():
  """Same layout, both routing paths: identical embeddings and updated tables (up to summation order)."""
  pairs = [(n[:-len("-bucketed")], n) for n in CASES if n.endswith("-bucketed")]
  assert len(pairs) == 5
  for a, b in pairs:
    ra, rb = run_case(a), run_case(b)
    np.testing.assert_allclose(ra["emb"], rb["emb"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(ra["new_blocks"], rb["new_blocks"], rtol=0, atol=1e-6)


def test_replicas_stay_equal():
  """Replicated shards get every replica's row gradients: copies stay identical after the update."""
  for m in ("1x8", "2x4", "4x2"):
    nb = run_case(f"{m}-data_parallel")["new_blocks"]
    assert all(np.array_equal(nb[0], nb[p]) for p in range(1, N)), m
  nb = run_case("2x4-row_wise-device")["new_blocks"]       # routed over "device", replicated over "host"
  nb = nb.reshape(2, 4, *nb.shape[1:])
  assert np.array_equal(nb[0], nb[1])
  assert not np.array_equal(nb[0, 0], nb[0, 1])
