"""Capacity overflow accounting of the id all-to-all, and clear errors for impossible configurations."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dmt_jax.embedding.engine import EmbeddingEngine, EngineConfig
from dmt_jax.embedding.sparse_optim import SparseOptimizer
from dmt_jax.features import (BadInputError, Batch, FeatureSet, FeatureSpec, TableSpec,
                              validate_batch)
from dmt_jax.topology import Topology, make_mesh

B, N, D = 2, 8, 4
FS = FeatureSet(
    tables=(TableSpec("t0", 64, D), TableSpec("t1", 40, D), TableSpec("t2", 30, D), TableSpec("t3", 20, D)),
    features=(FeatureSpec("f0", "t0", 3, "sum", True), FeatureSpec("f1", "t1", 2),
              FeatureSpec("f2", "t2", 1, "mean"), FeatureSpec("f3", "t3", 1),
              FeatureSpec("f4", "t0", 1)),
    num_dense=3)
SGD = SparseOptimizer("sgd", 0.1)
TOPO = Topology((("host", 2), ("device", 4)), "host")


@pytest.fixture(scope="module")
def mesh():
  return make_mesh(TOPO)


def _engine(mesh, topo=TOPO, fs=FS, **cfg):
  return EmbeddingEngine(fs, topo, mesh, EngineConfig(**cfg), SGD, batch_per_device=B)


# --- capacity -------------------------------------------------------------------------------------

def _skewed_batch(seed=0):
  """Every id of t0 / t4-features in row shard 0, every id of t1..t3 in row shard 3 (8 members)."""
  rng = np.random.default_rng(seed)
  ids = np.full((B * N, FS.num_slots), -1, np.int32)
  offs = FS.slot_offsets
  for i, f in enumerate(FS.features):
    V = FS.table(f.table).vocab_size
    rps = -(-V // N)
    shard = 0 if f.table == "t0" else 3
    x = rng.integers(shard * rps, (shard + 1) * rps, (B * N, f.max_bag))
    x[rng.random(x.shape) < 0.25] = -1
    ids[:, offs[i]:offs[i + 1]] = x
  w = (ids >= 0).astype(np.float32)
  return ids, w


def _expected_overflow(ids, C):
  """Per source device: sum over destination members of max(0, ids sent there - C)."""
  offs = FS.slot_offsets
  out = np.zeros(N, np.int64)
  for p in range(N):
    sent = np.zeros(N, np.int64)
    for i, f in enumerate(FS.features):
      x = ids[p * B:(p + 1) * B, offs[i]:offs[i + 1]]
      rps = -(-FS.table(f.table).vocab_size // N)
      np.add.at(sent, x[x >= 0] // rps, 1)
    out[p] = np.maximum(sent - C, 0).sum()
  return out


@pytest.mark.parametrize("cf", [0.5, 1.0])
def test_overflow_counted(mesh, cf):
  eng = _engine(mesh, sharding="row_wise", capacity_factor=cf)
  C = math.ceil(cf * B * FS.num_slots / N)        # ceil(x * rows_in * slots * n_c / M)
  assert eng.capacity == C
  ids, w = _skewed_batch()
  ov = np.asarray(jax.jit(eng.route)(jnp.asarray(ids), jnp.asarray(w))["overflow"]).reshape(-1)
  want = _expected_overflow(ids, C)
  assert want.sum() > 0
  np.testing.assert_array_equal(ov, want)
  assert int(ov.sum()) == int(want.sum())


def test_no_overflow_without_capacity_factor(mesh):
  eng = _engine(mesh, sharding="row_wise", capacity_factor=None)
  ids, w = _skewed_batch()
  assert eng.capacity >= _expected_overflow(ids, 0).max()      # every id of a device fits one bucket
  ov = np.asarray(jax.jit(eng.route)(jnp.asarray(ids), jnp.asarray(w))["overflow"])
  assert int(ov.sum()) == 0


def test_bad_capacity_factor(mesh):
  with pytest.raises(ValueError, match="capacity_factor"):
    _engine(mesh, sharding="row_wise", capacity_factor=0.0)


# --- topology -------------------------------------------------------------------------------------

def test_topology_errors():
  with pytest.raises(ValueError, match="needs 6 devices but 8"):
    make_mesh(Topology((("host", 3), ("device", 2)), "host"))
  with pytest.raises(ValueError, match="unique"):
    Topology((("host", 2), ("host", 4)))
  with pytest.raises(ValueError, match="'rack' is not a topology level"):
    Topology((("host", 2), ("device", 4)), "rack")
  with pytest.raises(ValueError, match="'host' must have size >= 1"):
    Topology((("host", 0), ("device", 8)))
  with pytest.raises(ValueError, match="at least one level"):
    Topology(())
  with pytest.raises(ValueError, match="name=size"):
    Topology.from_string("host2,device=4")
  with pytest.raises(ValueError, match="no tower_level"):
    Topology((("host", 2), ("device", 4))).local_axes
  t = Topology.from_string("rack=2,host=2,device=2", "host")
  assert (t.peer_axes, t.local_axes, t.num_groups, t.group_size) == (("rack", "host"), ("device",), 4, 2)


# --- towers ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("towers,match", [
    ([[0, 4], [1, 0], [2], [3]], "'f0' is in tower 0 and tower 1"),
    ([[0, 4], [1]], r"\['f2', 'f3'\] are in no tower"),
    ([[0, 4], [], [2], [1, 3]], "tower 1 is empty"),
    ([[0, 4], [1], [2, 3]], "3 towers do not fit 2 tower groups"),
    ([[0], [1], [4, 2], [3]], "table 't0' is used by features in two tower groups"),
    ([[0, 4], [1, 9], [2], [3]], "feature index 9"),
    ([], "at least one tower"),
])
def test_tower_errors(mesh, towers, match):
  with pytest.raises(ValueError, match=match):
    _engine(mesh, mode="towers", sharding="row_wise", towers=towers)


def test_tower_mode_config_errors(mesh):
  with pytest.raises(ValueError, match="needs a tower assignment"):
    _engine(mesh, mode="towers", sharding="row_wise")
  with pytest.raises(ValueError, match="table_wise, row_wise or column_wise"):
    _engine(mesh, mode="towers", sharding="data_parallel", towers=[[0, 4, 1], [2, 3]])
  flat_topo = Topology((("host", 2), ("device", 4)))
  with pytest.raises(ValueError, match="tower_level"):
    _engine(mesh, topo=flat_topo, mode="towers", sharding="row_wise", towers=[[0, 4, 1], [2, 3]])
  with pytest.raises(ValueError, match="table_row_wise needs a topology with a tower_level"):
    _engine(mesh, topo=flat_topo, sharding="table_row_wise")
  with pytest.raises(ValueError, match="mode"):
    _engine(mesh, mode="hybrid")
  # a valid assignment builds (no compile)
  eng = _engine(mesh, mode="towers", sharding="row_wise", towers=[[0, 4], [1], [2], [3]])
  assert eng.num_towers == 4


# --- engine / plan --------------------------------------------------------------------------------

def test_engine_errors(mesh):
  with pytest.raises(ValueError, match="dim 4 is not divisible into 8 column shards"):
    _engine(mesh, sharding="column_wise")
  with pytest.raises(ValueError, match="dim 4 is not divisible into 3 column shards"):
    _engine(mesh, sharding="column_wise", routing_axes=("device",), num_col_shards=3)
  with pytest.raises(ValueError, match="dim 4 is not divisible into 3"):
    _engine(mesh, mode="towers", sharding="column_wise", towers=[[0, 4], [1], [2], [3]], num_col_shards=3)
  with pytest.raises(ValueError, match="sharding must be one of"):
    _engine(mesh, sharding="model_parallel")
  with pytest.raises(ValueError, match="routing axis 'rack'"):
    _engine(mesh, sharding="row_wise", routing_axes=("rack",))
  with pytest.raises(ValueError, match="batch_per_device"):
    EmbeddingEngine(FS, TOPO, mesh, EngineConfig(), SGD)
  two = FeatureSet((TableSpec("t0", 10, D), TableSpec("t1", 10, D)),
                   (FeatureSpec("a", "t0"), FeatureSpec("b", "t1")), 1)
  topo42 = Topology((("host", 4), ("device", 2)), "host")
  with pytest.raises(ValueError, match="2 tables cannot give work to 4 groups"):
    _engine(make_mesh(topo42), topo=topo42, fs=two, sharding="table_row_wise")
  mixed = FeatureSet((TableSpec("t0", 10, 4), TableSpec("t1", 10, 8)),
                     (FeatureSpec("a", "t0"), FeatureSpec("b", "t1")), 1)
  with pytest.raises(ValueError, match="share one dim"):
    _engine(mesh, fs=mixed, sharding="row_wise")


def test_feature_set_errors():
  with pytest.raises(ValueError, match="unknown table 'tx'"):
    FeatureSet((TableSpec("t0", 10, D),), (FeatureSpec("a", "tx"),), 1)
  with pytest.raises(ValueError, match="duplicate feature names"):
    FeatureSet((TableSpec("t0", 10, D),), (FeatureSpec("a", "t0"), FeatureSpec("a", "t0")), 1)
  with pytest.raises(ValueError, match="vocab_size must be > 0"):
    TableSpec("t0", 0, D)
  with pytest.raises(ValueError, match="pooling"):
    FeatureSpec("a", "t0", 1, "max")
  with pytest.raises(ValueError, match="max_bag"):
    FeatureSpec("a", "t0", 0)


# --- validate_batch -------------------------------------------------------------------------------

def _good_batch():
  rng = np.random.default_rng(0)
  ids, w = _skewed_batch()
  return Batch(rng.normal(size=(B * N, FS.num_dense)).astype(np.float32), ids, w,
               (rng.random(B * N) < 0.5).astype(np.float32))


def test_validate_batch_ok():
  validate_batch(FS, _good_batch())


def test_validate_batch_errors():
  good = _good_batch()
  col = FS.slot_offsets[FS.feature_index("f1")]
  ids = good.ids.copy()
  ids[3, col] = 40                                   # == vocab of t1
  with pytest.raises(BadInputError, match=r"feature 'f1' \(table 't1', vocab 40\) has id 40 in row 3"):
    validate_batch(FS, good._replace(ids=ids))
  ids = good.ids.copy()
  ids[5, FS.slot_offsets[FS.feature_index("f4")]] = -2
  with pytest.raises(BadInputError, match="feature 'f4' .* has id -2 in row 5"):
    validate_batch(FS, good._replace(ids=ids))
  dense = good.dense.copy()
  dense[2, 1] = np.nan
  with pytest.raises(BadInputError, match="non-finite dense feature 1 in row 2"):
    validate_batch(FS, good._replace(dense=dense))
  w = good.weights.copy()
  w[4, FS.slot_offsets[FS.feature_index("f2")]] = np.inf
  with pytest.raises(BadInputError, match="non-finite weight for feature 'f2' in row 4"):
    validate_batch(FS, good._replace(weights=w))
  with pytest.raises(BadInputError, match="labels must be 0/1"):
    validate_batch(FS, good._replace(labels=good.labels + 0.5))
  with pytest.raises(BadInputError, match="ids shape"):
    validate_batch(FS, good._replace(ids=good.ids[:, :-1]))
