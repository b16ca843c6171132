"""SPTT semantic preservation and DMT communication properties.

DMT with identity tower modules must compute the flat model's function: same logits, loss, gradients
of every parameter and parameters after 3 training steps (relative error <= 1e-5), for DLRM and
DCN-v2, on a 2x4 and a 2x2x2 mesh, with several towers per group.
"""

import jax
import numpy as np
import pytest

from dmt_jax import config_base, train
from dmt_jax.analysis.step_report import step_report

RTOL = 1e-5


def _config(model, mode, topology="host=2,device=4", **over):
  c = config_base.get_config(model, mode, "tiny")
  c.topology = topology
  c.batch_size = 64
  c.eval_batch_size = 64
  c.data.vocab_sizes = (300, 200, 250, 150, 300, 220, 180, 260)
  c.data.max_bags = (1, 2, 1, 1, 3, 1, 1, 2)
  c.model.bottom_mlp = (32, 16)
  c.model.top_mlp = (32, 1)
  c.model.deep_mlp = (32,)
  config_base.set_fields(c, over)
  return c


def _run(config, steps):
  """(per-step outputs, logits of step 0, final state as numpy logical tables + params)."""
  exp = train.build_experiment(config)
  state = train.init_state(exp, 0)
  step_fn = train.make_train_step(exp, train.state_shardings(state))
  eval_fn = train.make_eval_step(exp)
  b0 = train.to_global(exp, exp.source.train_batch(0))
  logits0 = np.asarray(eval_fn(state, b0)[0])
  losses = []
  snaps = []
  for s in range(steps):
    snaps.append(_snapshot(exp, state))
    state, out = step_fn(state, train.to_global(exp, exp.source.train_batch(s)))
    losses.append(float(out["loss"]))
  snaps.append(_snapshot(exp, state))
  return exp, losses, logits0, snaps


def _snapshot(exp, state):
  return {"dense": jax.tree.map(np.asarray, jax.device_get(state["params"]["dense"])),
          "towers": jax.tree.map(np.asarray, jax.device_get(state["params"]["towers"])),
          "tables": exp.engine.tables_to_logical(state["tables"])}


def _close(a, b, what):
  fa, fb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(fa) == len(fb), what
  for x, y in zip(fa, fb):
    scale = max(np.abs(y).max(), 1e-6)
    err = np.abs(x - y).max() / scale
    assert err <= RTOL, f"{what}: relative error {err:.3g}"


@pytest.mark.parametrize("model,topology,num_towers,local", [
    ("dlrm", "host=2,device=4", 2, "table_wise"),
    ("dcn", "host=2,device=4", 4, "column_wise"),
    ("dlrm", "rack=2,host=2,device=2", 4, "row_wise"),
    ("dcn", "rack=2,host=2,device=2", 8, "table_wise"),
])
def test_identity_towers_equal_flat(model, topology, num_towers, local):
  """Logits, loss, gradients (via SGD lr=1 steps) and params after 3 Adam/Adagrad steps."""
  common = dict(topology=topology)
  # Gradients: with plain SGD at lr=1, params_after - params_before = -grad for every parameter.
  sgd = dict(optimizer="sgd", learning_rate=1.0, embedding_optimizer="sgd", embedding_learning_rate=1.0)
  flat = _config(model, "flat", **common, **sgd)
  dmt = _config(model, "dmt", **common, **sgd, sharding=local, **{
      "towers.module": "identity", "towers.compression": 1.0, "towers.num_towers": num_towers,
      "towers.assignment": "round_robin"})
  _, lf, logits_f, snaps_f = _run(flat, 1)
  _, ld, logits_d, snaps_d = _run(dmt, 1)
  _close(logits_d, logits_f, "logits")
  assert abs(ld[0] - lf[0]) <= RTOL * abs(lf[0])
  grad = lambda s: jax.tree.map(lambda a, b: a - b, s[0], s[1])
  _close(grad(snaps_d), grad(snaps_f), "gradients (dense params and every table)")

  # Parameters after 3 steps with the real optimizers (Adam dense, Adagrad embeddings).
  flat3 = _config(model, "flat", **common)
  dmt3 = _config(model, "dmt", **common, sharding=local, **{
      "towers.module": "identity", "towers.compression": 1.0, "towers.num_towers": num_towers,
      "towers.assignment": "round_robin"})
  _, lf3, _, sf3 = _run(flat3, 3)
  _, ld3, _, sd3 = _run(dmt3, 3)
  np.testing.assert_allclose(ld3, lf3, rtol=RTOL)
  _close(sd3[-1], sf3[-1], "parameters after 3 steps")


def _report(model, mode, **over):
  return step_report(train.build_experiment(_config(model, mode, **over)))


ALLOWED_CROSS = {"ids_exchange", "tower_output_exchange", "dense_sync"}


@pytest.fixture(scope="module")
def dmt_reports():
  # Tower params on their group: every collective that crosses towers is an exchange of ids or tower
  # outputs, or the dense all-reduce (the replicated placement below adds the towers' gradients to it).
  return {c: _report("dlrm", "dmt", **{"towers.compression": float(c), "towers.param_placement": "group"})
          for c in (1, 2, 4, 8)}


def test_no_embedding_tensor_crosses_towers(dmt_reports):
  rep = dmt_reports[4]
  cross = [c for c in rep["collectives"] if c["scope"] == "cross_tower"]
  assert cross, "a DMT step must exchange ids and tower outputs across towers"
  for c in cross:
    assert c["role"] in ALLOWED_CROSS, c
    if c["role"] == "dense_sync":   # dense gradients only: never produced inside the embedding shard_map
      assert "shard_map" not in c["op_name"], c
  roles = {c["role"] for c in cross}
  assert {"ids_exchange", "tower_output_exchange"} <= roles
  intra = {c["role"] for c in rep["collectives"] if c["scope"] == "intra_tower"}
  assert "intra_tower_lookup" in intra


def test_replicated_tower_params_train_like_group_placement():
  """Same losses, dense params, tables and tower params after 3 Adam/Adagrad steps; one all-reduce less."""
  runs, reports = {}, {}
  for place in ("group", "replicated"):
    c = _config("dlrm", "dmt", **{"towers.module": "mix", "towers.num_towers": 4,
                                  "towers.param_placement": place})
    exp, losses, logits0, snaps = _run(c, 3)
    assert exp.engine.cfg.replicate_tower_params == (place == "replicated")
    assert snaps[-1]["towers"], "the mix towers have parameters"
    runs[place] = (losses, logits0, snaps[-1])
    reports[place] = step_report(exp)
  (lg, g0, sg), (lr, r0, sr) = runs["group"], runs["replicated"]
  np.testing.assert_allclose(lr, lg, rtol=RTOL)
  _close(r0, g0, "logits")
  _close(sr, sg, "dense params, tower params and tables after 3 steps")
  reduce_ops = {p: [c for c in r["collectives"] if c["op"] == "all-reduce"] for p, r in reports.items()}
  assert any(c["scope"] == "intra_tower" for c in reduce_ops["group"]), "group: tower grads reduced in-group"
  assert not any(c["scope"] == "intra_tower" for c in reduce_ops["replicated"])
  assert len(reduce_ops["replicated"]) < len(reduce_ops["group"])


def test_param_placement_auto_follows_tower_param_bytes():
  small = train.build_experiment(_config("dlrm", "dmt", **{"towers.module": "mix"}))
  assert small.engine.cfg.replicate_tower_params
  big = train.build_experiment(_config("dlrm", "dmt", **{"towers.module": "mlp", "towers.hidden": (4096,)}))
  assert not big.engine.cfg.replicate_tower_params
  with pytest.raises(ValueError, match="param_placement"):
    train.build_experiment(_config("dlrm", "dmt", **{"towers.param_placement": "everywhere"}))


def test_tower_output_bytes_fall_as_one_over_c(dmt_reports):
  # 8 features / 2 towers = 4 per tower: K = 4, 2, 1, 1 for c = 1, 2, 4, 8 (ceil(F_t / c)).
  out = {c: r["bytes_by_role"]["tower_output_exchange"] for c, r in dmt_reports.items()}
  assert out[1] == 2 * out[2] == 4 * out[4]
  ids = {c: r["bytes_by_role"]["ids_exchange"] for c, r in dmt_reports.items()}
  assert len(set(ids.values())) == 1, "ids traffic does not depend on c"


def test_dmt_cross_tower_bytes_below_flat_table_wise(dmt_reports):
  flat = _report("dlrm", "flat")
  assert dmt_reports[4]["embedding_cross_tower_bytes"] <= 0.30 * flat["embedding_cross_tower_bytes"]


def test_bf16_tower_exchange_error_is_bounded():
  """bf16 on the wire (forward and backward) stays within bf16 rounding of the f32 result."""
  base = dict(optimizer="sgd", learning_rate=1.0, embedding_optimizer="sgd", embedding_learning_rate=1.0)
  f32 = _config("dlrm", "dmt", **base)
  bf16 = _config("dlrm", "dmt", **base, **{"towers.wire_dtype": "bfloat16"})
  _, l32, lg32, s32 = _run(f32, 1)
  _, l16, lg16, s16 = _run(bf16, 1)
  assert not np.array_equal(lg16, lg32), "bf16 wire must actually round"
  np.testing.assert_allclose(lg16, lg32, atol=0.02 * np.abs(lg32).max())
  g32 = jax.tree.map(lambda a, b: a - b, s32[0], s32[1])
  g16 = jax.tree.map(lambda a, b: a - b, s16[0], s16[1])
  for a, b in zip(jax.tree.leaves(g16), jax.tree.leaves(g32)):
    assert np.abs(a - b).max() <= 0.02 * max(np.abs(b).max(), 1e-8)
  rep = _report("dlrm", "dmt", **{"towers.wire_dtype": "bfloat16"})
  rep32 = _report("dlrm", "dmt")
  assert rep["bytes_by_role"]["tower_output_exchange"] * 2 == rep32["bytes_by_role"]["tower_output_exchange"]
