"""Communication report of one compiled training step (HLO collectives -> bytes by scope and role)."""

from __future__ import annotations

import jax

from dmt_jax import train
from dmt_jax.analysis import hlo


def compiled_step_text(exp: train.Experiment, state=None) -> str:
  """The compiled HLO text of one train step of ``exp`` (abstract inputs, nothing executed)."""
  if state is None:
    state = train.init_state(exp, 0)
  step = train.make_train_step(exp, train.state_shardings(state))
  b = exp.source.train_batch(0)
  batch = train.to_global(exp, b)
  return step.lower(state, batch).compile().as_text()


def step_report(exp: train.Experiment, state=None) -> dict:
  """``hlo.comm_report`` of one train step; tower groups are the topology's (one group if none)."""
  text = compiled_step_text(exp, state)
  topo = exp.topology
  group_size = topo.group_size if topo.tower_level else topo.num_devices
  rep = hlo.comm_report(text, group_size)
  rep["num_devices"] = topo.num_devices
  rep["group_size"] = group_size
  rep["mode"] = exp.config.mode
  rep["sharding"] = exp.config.sharding
  if exp.config.mode == "dmt":
    rep["tower_module"] = exp.config.towers.module
    rep["compression"] = float(exp.config.towers.compression)
  rep["batch_size"] = int(exp.config.batch_size)
  return rep
