"""Tower partitioner: costs, affinity, balanced partition, baselines, errors, towers file, flat->DMT init."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dmt_jax import config_base
from dmt_jax import partitioner as tp
from dmt_jax.data import pipeline
from dmt_jax.features import FeatureSet, FeatureSpec, TableSpec


def tiny_source():
  return pipeline.make_source(config_base.get_config("dlrm", "flat", "tiny"))


def noisy_planted_affinity(group_of, noise=0.6, seed=0):
  """1 within a planted group, 0 across, plus U(0, noise) symmetric noise."""
  r = np.random.default_rng(seed).random((len(group_of),) * 2) * noise
  a = (group_of[:, None] == group_of[None]).astype(float) + (r + r.T) / 2
  np.fill_diagonal(a, 0)
  return a


def assert_limits_hold(part, costs, cons):
  fc = costs.matrix()
  limits = cons.limits(fc.sum(0))
  for t in part.towers:
    assert t, "empty tower"
    assert np.all(fc[t].sum(0) <= limits * (1 + 1e-9)), (t, fc[t].sum(0), limits)
  k = cons.num_towers // cons.num_groups
  if cons.group_memory_bytes is not None:
    for g in range(cons.num_groups):
      feats = [f for t in part.towers[g * k:(g + 1) * k] for f in t]
      assert costs.table_bytes[feats].sum() <= cons.group_memory_bytes * (1 + 1e-9)
  assert sorted(f for t in part.towers for f in t) == list(range(len(fc)))


# --- small pieces ------------------------------------------------------------------------------------

def test_adjusted_rand_index_values():
  assert tp.adjusted_rand_index([0, 0, 1, 1], [5, 5, 7, 7]) == 1.0
  assert tp.adjusted_rand_index([0, 0, 1, 1, 2, 2], [1, 1, 2, 2, 0, 0]) == 1.0
  # Hubert & Arabie example value, checked by hand: {0,0,0,1,1,1} vs {0,0,1,1,2,2}
  assert tp.adjusted_rand_index([0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 2, 2]) == pytest.approx(0.24242424, abs=1e-6)
  # random labelings average to ~0
  rng = np.random.default_rng(0)
  vals = [tp.adjusted_rand_index(rng.integers(0, 4, 40), rng.integers(0, 4, 40)) for _ in range(200)]
  assert abs(np.mean(vals)) < 0.02


def test_feature_costs_shared_table_and_optimizer_state():
  fs = FeatureSet((TableSpec("a", 100, 8), TableSpec("b", 50, 8)),
                  (FeatureSpec("x", "a", 2), FeatureSpec("y", "a", 1), FeatureSpec("z", "b", 3)), 0)
  c = tp.feature_costs(fs, None, "adagrad")
  # adagrad keeps one accumulator per value: 2 * V * D * 4 bytes, split over the table's 2 features
  np.testing.assert_allclose(c.table_bytes, [100 * 8 * 8 / 2, 100 * 8 * 8 / 2, 50 * 8 * 8])
  np.testing.assert_allclose(tp.feature_costs(fs, None, "rowwise_adagrad").table_bytes[2], 50 * 9 * 4)
  np.testing.assert_allclose(tp.feature_costs(fs, None, "sgd").table_bytes[2], 50 * 8 * 4)
  np.testing.assert_allclose(c.lookup, [16, 8, 24])          # max_bag x dim without batches
  np.testing.assert_allclose(c.width, [8, 8, 8])
  assert tp.table_units(fs) == [[0, 1], [2]]


def test_pooling_factor_measured_on_batches():
  src = tiny_source()
  c = tp.feature_costs(src.fs, [src.train_batch(0), src.train_batch(1)])
  fs = src.fs
  assert c.pooling_factor[0] == 1.0
  assert 1.0 < c.pooling_factor[3] < 2.0 and 1.0 < c.pooling_factor[10] < 3.0   # multi-hot (max_bag 2, 3)
  np.testing.assert_allclose(c.lookup, c.pooling_factor * fs.uniform_dim())


def test_pooled_embeddings_match_sum_and_mean_pooling():
  fs = FeatureSet((TableSpec("a", 4, 2),), (FeatureSpec("s", "a", 2, "sum"), FeatureSpec("m", "a", 2, "mean")), 0)
  tab = {"a": np.arange(8, dtype=np.float32).reshape(4, 2)}
  ids = np.array([[1, 3, 0, -1]])
  w = np.array([[1.0, 1.0, 1.0, 0.0]], np.float32)
  e = tp.pooled_embeddings(fs, tab, ids, w)
  np.testing.assert_allclose(e[0, 0], tab["a"][1] + tab["a"][3])
  np.testing.assert_allclose(e[0, 1], tab["a"][0])


def test_interaction_affinity_finds_the_model_pairs():
  """A model with y = <e0, e1> + <e2, e3> + sum(e4): affinity only on the planted pairs."""
  rng = np.random.default_rng(0)
  emb = rng.normal(size=(256, 5, 3)).astype(np.float32)
  def logit(dense, e):
    e = np.asarray(e)
    return (e[:, 0] * e[:, 1]).sum(-1) + (e[:, 2] * e[:, 3]).sum(-1) + e[:, 4].sum(-1)
  a = tp.interaction_affinity(logit, np.zeros((256, 0), np.float32), emb, chunk=3)
  assert a[0, 1] > 1 and a[2, 3] > 1
  mask = np.ones_like(a, bool)
  mask[[0, 1, 2, 3], [1, 0, 3, 2]] = False
  assert np.abs(a[mask]).max() < 1e-5
  d = tp.dot_affinity(emb)
  assert d.shape == (5, 5) and np.all(np.diag(d) == 0)


# --- partitions ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", tp.METHODS)
def test_every_method_respects_the_limits(method):
  src = tiny_source()
  fs = src.fs
  costs = tp.feature_costs(fs, [src.train_batch(0)])
  cons = tp.Constraints(4, 2, 0.25, group_memory_bytes=1.0e6)
  a = noisy_planted_affinity(src.gen.group_of)
  part = tp.partition(fs, costs, cons, method, a, seed=3)
  assert_limits_hold(part, costs, cons)
  rep = part.report
  assert set(rep["imbalance"]) == set(tp.COSTS)
  assert all(v <= 1.25 + 1e-9 for v in rep["imbalance"].values())
  assert rep["objective"] <= rep["upper_bound"] + 1e-9


def test_affinity_recovers_planted_groups_and_random_does_not():
  src = tiny_source()
  fs, truth = src.fs, src.gen.group_of
  costs = tp.feature_costs(fs, [src.train_batch(0)])
  cons = tp.Constraints(4, 2, 0.25)
  a = noisy_planted_affinity(truth)
  part = tp.partition(fs, costs, cons, "affinity", a, seed=0)
  assert tp.adjusted_rand_index(truth, part.labels(16)) == 1.0
  rand = [tp.adjusted_rand_index(truth, tp.partition(fs, costs, cons, "random", a, seed=s).labels(16))
          for s in range(10)]
  assert np.mean(rand) < 0.2
  baselines = [tp.partition(fs, costs, cons, m, a, seed=0).report["objective"] for m in tp.METHODS[1:]]
  assert part.report["objective"] > max(baselines)


def test_partition_is_deterministic_per_seed():
  src = tiny_source()
  costs = tp.feature_costs(src.fs, None)
  a = noisy_planted_affinity(src.gen.group_of, noise=3.0)
  cons = tp.Constraints(4, 2, 0.3)
  for m in ("affinity", "random"):
    assert tp.partition(src.fs, costs, cons, m, a, seed=5).towers == tp.partition(src.fs, costs, cons, m, a, seed=5).towers
  assert tp.partition(src.fs, costs, cons, "random", a, seed=1).towers != tp.partition(src.fs, costs, cons, "random", a, seed=2).towers


def test_features_sharing_a_table_stay_together():
  tables = tuple(TableSpec(f"t{i}", 100, 4) for i in range(6))
  feats = tuple(FeatureSpec(f"f{i}", f"t{i % 6}") for i in range(8))     # f6 shares t0, f7 shares t1
  fs = FeatureSet(tables, feats, 0)
  a = np.ones((8, 8))
  a[0, 6] = a[6, 0] = a[1, 7] = a[7, 1] = 0.0                            # affinity would split them
  part = tp.partition(fs, tp.feature_costs(fs), tp.Constraints(2, 2, 1.0), "affinity", a)
  lab = part.labels(8)
  assert lab[0] == lab[6] and lab[1] == lab[7]


def test_infeasible_requests_name_the_binding_constraint():
  src = tiny_source()
  fs = src.fs
  costs = tp.feature_costs(fs, [src.train_batch(0)])
  a = noisy_planted_affinity(src.gen.group_of)
  # pooling factors 1.94 (f3) and 1.86 (f10): with 4 features per tower (width tolerance 0) a 10%
  # lookup tolerance cannot be met, while 10% on table bytes can
  with pytest.raises(tp.InfeasiblePartition, match="binding constraint: lookup"):
    tp.partition(fs, costs, tp.Constraints(4, 2, {"lookup": 0.1, "width": 0.0}), "affinity", a)
  with pytest.raises(tp.InfeasiblePartition, match="group memory"):
    tp.partition(fs, costs, tp.Constraints(4, 2, 0.25, group_memory_bytes=1e5), "affinity", a)
  with pytest.raises(tp.InfeasiblePartition, match="only 16 table units"):
    tp.partition(fs, costs, tp.Constraints(32, 2), "random", a)
  with pytest.raises(tp.InfeasiblePartition, match="table_bytes balance.*'f14'"):   # vocab 1300 of 15,200
    tp.partition(fs, costs, tp.Constraints(16, 2, {"table_bytes": 0.2}), "greedy_cost")
  with pytest.raises(tp.InfeasiblePartition, match="round_robin breaks a constraint: table_bytes"):
    tp.partition(fs, costs, tp.Constraints(4, 2, {"table_bytes": 0.1}), "round_robin")
  with pytest.raises(ValueError, match="multiple of num_groups"):
    tp.Constraints(3, 2)


def test_towers_file_round_trips(tmp_path):
  from dmt_jax import train
  src = tiny_source()
  fs = src.fs
  costs = tp.feature_costs(fs, [src.train_batch(0)])
  part = tp.partition(fs, costs, tp.Constraints(4, 2), "affinity", noisy_planted_affinity(src.gen.group_of))
  path = str(tmp_path / "towers.json")
  tp.save_towers(path, part, fs, {"measure": "test"})
  spec = json.load(open(path))
  assert spec["towers"] == part.feature_names(fs) and spec["tower_indices"] == part.towers
  assert spec["method"] == "affinity" and spec["measure"] == "test" and "tower_costs" in spec
  assert tp.load_towers(path, fs) == part.towers
  cfg = config_base.get_config("dlrm", "dmt", "tiny")
  cfg.towers.file = path
  assert train.parse_towers(cfg, fs) == part.towers


# --- flat -> DMT -------------------------------------------------------------------------------------

def _logits(exp, state, batch):
  from dmt_jax import train
  logits, overflow = train.make_eval_step(exp)(state, train.to_global(exp, batch))
  assert int(overflow) == 0
  return np.asarray(logits)


@pytest.mark.slow
def test_flat_checkpoint_to_dmt_partition_and_identity_conversion(tmp_path):
  """Flat run -> partition.py (CLI) -> converted DMT-identity model == flat model; init_from trains."""
  import os
  import subprocess
  import sys
  from dmt_jax import checkpoint as ckpt_lib
  from dmt_jax import convert, train
  flat_dir, towers = str(tmp_path / "flat"), str(tmp_path / "towers.json")
  cfg = config_base.get_config("dlrm", "flat", "tiny,steps=20")
  cfg.checkpoint_every, cfg.eval_every = 20, 0
  train.train_and_evaluate(cfg, flat_dir)

  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = subprocess.run([sys.executable, os.path.join(root, "experiments", "partition.py"),
                        "--config=" + os.path.join(root, "experiments/configs/flat_dlrm.py") + ":tiny",
                        f"--workdir={flat_dir}", "--num_towers=4", "--method=affinity", f"--output={towers}",
                        "--num_sample_batches=1"], capture_output=True, text=True, timeout=600, cwd=root)
  assert out.returncode == 0, out.stderr[-3000:]
  spec = json.load(open(towers))
  assert spec["method"] == "affinity" and spec["measure"] == "interaction" and len(spec["towers"]) == 4
  assert spec["imbalance"]["width"] == 1.0 and spec["source"]["step"] == 20

  flat_exp = train.build_experiment(cfg)
  _, logical = ckpt_lib.load_logical(flat_dir)
  flat_state = ckpt_lib.state_from_logical(flat_exp, logical)
  batch = next(iter(flat_exp.source.eval_batches()))
  want = _logits(flat_exp, flat_state, batch)

  dcfg = config_base.get_config("dlrm", "dmt", "tiny")
  dcfg.towers.file, dcfg.towers.num_towers = towers, 4
  dcfg.towers.module, dcfg.towers.compression = "identity", 1.0
  dexp = train.build_experiment(dcfg)
  dstate, report = convert.init_state_from_checkpoint(dexp, flat_dir)
  assert report["reinitialised"] == [] and report["source_step"] == 20
  np.testing.assert_allclose(_logits(dexp, dstate, batch), want, rtol=1e-5, atol=1e-6)

  # a compressing tower module: tables carried over, bottom MLP kept, first top layer + towers fresh
  dcfg.towers.module, dcfg.towers.compression = "dot", 4.0
  dcfg.num_train_steps, dcfg.eval_every, dcfg.checkpoint_every, dcfg.init_from = 2, 0, 0, flat_dir
  dexp = train.build_experiment(dcfg)
  new, report = convert.logical_from_checkpoint(flat_dir, dexp)
  assert "['dense']['bottom_mlp']['dense_0']['kernel']" in report["kept"]
  assert any("top_mlp']['dense_0']" in k for k in report["reinitialised"])
  for name, tab in logical["tables"].items():
    np.testing.assert_array_equal(new["tables"][name], tab)
  result = train.train_and_evaluate(dcfg, str(tmp_path / "dmt"))
  assert np.isfinite(result["auc"])


@pytest.mark.slow
def test_tp_recovers_planted_groups_from_a_briefly_trained_flat_model():
  """300 flat steps on a planted-interaction task, then TP on the model's learned interactions.

  The task is the tiny layout with 16 tables of 50 rows and a stronger, flatter-popularity planted
  signal (``SyntheticClickData(latent_mean=0.5, signal_std=5, zipf_exponent=0.8)``): there a DLRM
  learns the pairwise structure within a few hundred steps. (On the default tiny task it takes
  ~4000 steps; see BENCHMARKS.md.)
  """
  from dmt_jax import train
  from dmt_jax.data.synthetic import SyntheticClickData
  cfg = config_base.get_config("dlrm", "flat", "tiny")
  cfg.data.vocab_sizes = (50,) * 16
  cfg.learning_rate = 3e-3
  exp = train.build_experiment(cfg)
  gen = SyntheticClickData(exp.fs, seed=0, num_planted_groups=4, latent_mean=0.5, signal_std=5.0,
                           zipf_exponent=0.8)
  exp.source.gen = gen
  state = train.init_state(exp, 0)
  step = train.make_train_step(exp, train.state_shardings(state))
  for s in range(300):
    state, out = step(state, train.to_global(exp, exp.source.train_batch(s)))
    # Wait for each step, as train.train_and_evaluate does: 300 steps dispatched without a sync once
    # aborted the whole pytest process (XLA:CPU, 8 emulated devices, after ~500 earlier tests).
    assert np.isfinite(float(out["loss"])), s
  tables = exp.engine.tables_to_logical(state["tables"])
  batches = [exp.source.train_batch(1000 + i) for i in range(4)]
  fs = exp.fs
  emb = tp.pooled_embeddings(fs, tables, np.concatenate([b.ids for b in batches]),
                             np.concatenate([b.weights for b in batches]))
  params = jax.device_get(state["params"]["dense"])
  logit_fn = jax.jit(lambda d, e: exp.model.apply({"params": params}, d, e))
  affinity = tp.interaction_affinity(logit_fn, np.concatenate([b.dense for b in batches]), emb)
  costs = tp.feature_costs(fs, batches)
  cons = tp.Constraints(4, 2)
  part = tp.partition(fs, costs, cons, "affinity", affinity, seed=0)
  assert tp.adjusted_rand_index(gen.group_of, part.labels(16)) >= 0.9, part.towers
  assert_limits_hold(part, costs, cons)
  rand = [tp.adjusted_rand_index(gen.group_of, tp.partition(fs, costs, cons, "random", affinity, seed=s).labels(16))
          for s in range(5)]
  assert max(rand) < 0.5
