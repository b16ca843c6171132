"""Training and evaluation: ``train_and_evaluate(config, workdir)``.

One jitted train step does, on global arrays whose batch dim is sharded over every mesh axis:

    routed = route(ids)                      shard_map: (peer exchange +) bucketised id all-to-all
    rows   = gather(tables, routed)          owners read the rows they received
    loss, grads = value_and_grad(rows, dense params, tower params)
    tables <- row-sparse optimizer(rows touched)  on the owning shard
    dense, tower params <- optax               (GSPMD all-reduces dense gradients;
                                                shard_map reduces tower gradients inside the group)

The state is a plain dict pytree (``step``, ``params`` {dense, towers}, ``opt_state``, ``tables``,
``table_opt``) so orbax saves and restores it with its shardings.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from dmt_jax import metrics as metrics_lib
from dmt_jax.data import pipeline
from dmt_jax.embedding.engine import EmbeddingEngine, EngineConfig
from dmt_jax.embedding.sparse_optim import SparseOptimizer
from dmt_jax.features import Batch
from dmt_jax.models import dmt as dmt_models
from dmt_jax.topology import Topology, make_mesh


class TrainingError(RuntimeError):
  """A run stopped for a reason a person must act on (NaN loss, id capacity overflow)."""


@dataclasses.dataclass
class Experiment:
  """Everything built from a config: the mesh, the data, the engine and the model."""
  config: Any
  topology: Topology
  mesh: Any
  source: Any
  engine: EmbeddingEngine
  model: Any
  tower_module: Any
  tower_vectors: int
  tx: Any
  eval_engine: EmbeddingEngine

  @property
  def fs(self):
    return self.source.fs

  @property
  def batch_spec(self):
    return P(tuple(self.mesh.axis_names))


def parse_towers(config, fs) -> list[list[int]] | None:
  """The tower assignment: ``towers_file`` (partitioner JSON), explicit ``towers`` or a rule."""
  tc = config.towers
  if tc.file:
    with open(tc.file) as f:
      spec = json.load(f)
    towers = spec["towers"] if "towers" in spec else spec["assignment"]
    return [[fs.feature_index(x) if isinstance(x, str) else int(x) for x in t] for t in towers]
  if tc.assignment and tc.assignment not in ("contiguous", "round_robin"):
    # explicit: "0,1,2|3,4,5" (indices or feature names)
    return [[fs.feature_index(x) if not x.strip().lstrip("-").isdigit() else int(x)
             for x in t.split(",") if x.strip()] for t in tc.assignment.split("|")]
  return None


def default_towers(rule: str, num_features: int, num_towers: int) -> list[list[int]]:
  if num_towers > num_features:
    raise ValueError(f"config.towers.num_towers={num_towers} exceeds the {num_features} features")
  if rule == "round_robin":
    return [list(range(t, num_features, num_towers)) for t in range(num_towers)]
  return [list(map(int, a)) for a in np.array_split(np.arange(num_features), num_towers)]


# Below this many bytes of stacked tower params "auto" replicates them on every device (one merged
# all-reduce per step instead of an extra one inside each group; see EmbeddingEngine.tower_param_spec).
# Replicated, all T towers' gradients travel on the cross-host all-reduce, so "auto" only does it where
# that is negligible next to the tower outputs (e.g. ``mix`` towers: a few KiB); ``linear`` towers of
# the tiny preset (17–34 KiB) already stay in their group.
REPLICATE_TOWER_PARAMS_MAX_BYTES = 16 * 1024


def replicate_tower_params(placement: str, tower_module, num_towers: int, f_t: int, dim: int) -> bool:
  """``towers.param_placement``: "group" | "replicated" | "auto" (replicated if the T towers' params are
  at most ``REPLICATE_TOWER_PARAMS_MAX_BYTES``)."""
  if placement not in ("auto", "group", "replicated"):
    raise ValueError(f"config.towers.param_placement must be auto, group or replicated, got {placement!r}")
  if tower_module is None or placement == "group":
    return False
  if placement == "replicated":
    return True
  shapes = jax.eval_shape(tower_module.init, jax.random.key(0), jnp.zeros((1, f_t, dim)))
  nbytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(shapes))
  return num_towers * nbytes <= REPLICATE_TOWER_PARAMS_MAX_BYTES


def build_experiment(config, process_index: int = 0, num_processes: int = 1, devices=None) -> Experiment:
  """Builds mesh, data source, embedding engine, model and optimizers from a config."""
  from dmt_jax.config_check import validate_config
  validate_config(config)
  topo = Topology.from_string(config.topology, config.tower_level or None)
  mesh = make_mesh(topo, devices)
  n = topo.num_devices
  for field in ("batch_size", "eval_batch_size"):
    v = int(config[field])
    if v <= 0 or v % n:
      raise ValueError(f"config.{field}={v} must be a positive multiple of the {n} devices")
  source = pipeline.make_source(config, process_index, num_processes)
  fs = source.fs
  dim = fs.uniform_dim()
  model = dmt_models.over_arch(config.model, dim)
  emb_opt = SparseOptimizer(config.embedding_optimizer, float(config.embedding_learning_rate),
                            float(config.embedding_initial_accumulator))
  wire = {"float32": None, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
  if config.towers.wire_dtype not in wire:
    raise ValueError(f"config.towers.wire_dtype must be one of {sorted(wire)}, got {config.towers.wire_dtype!r}")
  cap = float(config.capacity_factor) if config.capacity_factor and config.capacity_factor > 0 else None
  tmod, k = None, 0
  if config.mode == "dmt":
    towers = parse_towers(config, fs)
    if towers is None:
      T = int(config.towers.num_towers) or topo.num_groups
      towers = default_towers(config.towers.assignment or "contiguous", fs.num_features, T)
    f_t = max(len(t) for t in towers)
    tmod, k = dmt_models.tower_module(config.towers, f_t, dim)
    ecfg = EngineConfig(mode="towers", sharding=config.sharding, towers=towers, capacity_factor=cap,
                        wire_dtype=wire[config.towers.wire_dtype],
                        static_routing=bool(config.static_routing),
                        replicate_tower_params=replicate_tower_params(
                            config.towers.get("param_placement", "auto"), tmod, len(towers), f_t, dim))
  elif config.mode == "flat":
    ecfg = EngineConfig(mode="flat", sharding=config.sharding, capacity_factor=cap,
                        static_routing=bool(config.static_routing))
  else:
    raise ValueError(f"config.mode must be 'flat' or 'dmt', got {config.mode!r}")
  engine = EmbeddingEngine(fs, topo, mesh, ecfg, emb_opt,
                           tower_apply=None if tmod is None else tmod.apply,
                           batch_per_device=config.batch_size // n)
  lr = float(config.learning_rate)
  if config.optimizer == "adam":
    tx = optax.adam(lr)
  elif config.optimizer == "adagrad":
    tx = optax.adagrad(lr, initial_accumulator_value=0.1)
  elif config.optimizer == "sgd":
    tx = optax.sgd(lr)
  else:
    raise ValueError(f"config.optimizer must be adam, adagrad or sgd, got {config.optimizer!r}")
  return Experiment(config, topo, mesh, source, engine, model, tmod, k, tx,
                    engine.with_batch(config.eval_batch_size // n))


# --- state -------------------------------------------------------------------------------------

def init_state(exp: Experiment, seed: int, tables=None):
  """Initial train state; tables are drawn per table, independent of the sharding plan.

  ``tables``: optional ready physical blocks ``[N, R_local, W]`` (e.g. drawn on device by benchmarks).
  """
  key = jax.random.key(seed)
  k_tab, k_dense, k_tower = jax.random.split(key, 3)
  eng, fs, mesh = exp.engine, exp.fs, exp.mesh
  if tables is None:
    tables = eng.tables_from_logical(eng.init_logical(k_tab))
  table_opt = eng.init_optimizer_state(tables)
  Fp = eng.output_features(exp.tower_vectors)
  dense = exp.model.init(k_dense, jnp.zeros((1, fs.num_dense)), jnp.zeros((1, Fp, fs.uniform_dim())))["params"]
  dense = jax.device_put(dense, NamedSharding(mesh, P()))
  towers = {}
  if exp.tower_module is not None:
    T = eng.num_towers
    f_t = eng.tl.f_t
    keys = jax.random.split(k_tower, T)
    towers = jax.vmap(lambda kk: exp.tower_module.init(kk, jnp.zeros((1, f_t, fs.uniform_dim())))["params"])(keys)
    towers = jax.device_put(towers, eng.tower_param_sharding(towers))
  params = {"dense": dense, "towers": towers}
  replicated = NamedSharding(mesh, P())
  # Optimizer moments take their params' shardings (tower moments stay on their group).
  abstract = jax.eval_shape(exp.tx.init, params)
  opt_sh = optax.tree_map_params(exp.tx, lambda _, sh: sh, abstract,
                                 jax.tree.map(lambda x: x.sharding, params),
                                 transform_non_params=lambda _: replicated)
  opt_state = jax.jit(exp.tx.init, out_shardings=opt_sh)(params)
  state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": opt_state,
           "tables": tables, "table_opt": table_opt}
  # Leaves created outside a mesh context (step counters, optax counts) live on one device: replicate.
  return jax.tree.map(lambda x: x if isinstance(x.sharding, NamedSharding) else jax.device_put(x, replicated),
                      state)


def state_shardings(state):
  return jax.tree.map(lambda x: x.sharding, state)


# --- steps ---------------------------------------------------------------------------------------

def _forward(exp: Experiment, eng: EmbeddingEngine, params, rows, routed, batch: Batch):
  emb = eng.embed(rows, params["towers"], routed)
  return exp.model.apply({"params": params["dense"]}, batch.dense, emb)


def _overflow(eng, routed):
  """Ids that did not fit the id all-to-all (a global sum); static routing cannot overflow, and
  skipping the sum there saves a cross-device reduction per step."""
  return jnp.int32(0) if eng.static_routing else jnp.sum(routed["overflow"])


def make_train_step(exp: Experiment, state_sh):
  eng, tx = exp.engine, exp.tx
  skip_nonfinite = exp.config.on_nonfinite == "skip"

  def step(state, batch: Batch):
    routed = eng.route(batch.ids, batch.weights)
    rows = eng.gather(state["tables"], routed)

    def loss_fn(params, rows):
      logits = _forward(exp, eng, params, rows, routed, batch)
      return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, batch.labels)), logits

    (loss, _), (g_params, g_rows) = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(
        state["params"], rows)
    grad_norm = optax.tree.norm((g_params, g_rows))
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, opt_state = tx.update(g_params, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    update = eng.update if exp.config.embedding_update == "sparse" else eng.update_dense
    tables, table_opt = update(state["tables"], state["table_opt"], routed, g_rows)
    new = {"step": state["step"] + 1, "params": params, "opt_state": opt_state,
           "tables": tables, "table_opt": table_opt}
    if skip_nonfinite:
      keep = lambda n, o: jnp.where(finite, n, o)
      new = {k: (jax.tree.map(keep, new[k], state[k]) if k != "step" else new[k]) for k in new}
    out = {"loss": loss, "grad_norm": grad_norm, "finite": finite,
           "overflow": _overflow(eng, routed)}
    return new, out

  return jax.jit(step, donate_argnums=(0,), out_shardings=(state_sh, None))


def make_eval_step(exp: Experiment):
  eng = exp.eval_engine

  def step(state, batch: Batch):
    routed = eng.route(batch.ids, batch.weights)
    rows = eng.gather(state["tables"], routed)
    return _forward(exp, eng, state["params"], rows, routed, batch), _overflow(eng, routed)

  return jax.jit(step)


def to_global(exp: Experiment, batch: Batch) -> Batch:
  """Process-local numpy batch -> global jax arrays sharded over all mesh axes."""
  ax = tuple(exp.mesh.axis_names)
  def put(x, spec):
    return jax.make_array_from_process_local_data(NamedSharding(exp.mesh, spec), np.asarray(x))
  return Batch(put(batch.dense, P(ax, None)), put(batch.ids, P(ax, None)),
               put(batch.weights, P(ax, None)), put(batch.labels, P(ax)))


def evaluate(exp: Experiment, eval_step, state) -> dict:
  from jax.experimental import multihost_utils
  acc = metrics_lib.EvalAccumulator()
  for i, b in enumerate(exp.source.eval_batches()):
    b = pipeline.checked(exp.fs, b, exp.config.id_policy, f"eval batch {i}")
    gb = to_global(exp, b)
    logits, overflow = eval_step(state, gb)
    if int(overflow):
      raise TrainingError(f"eval batch {i}: {int(overflow)} ids overflowed the all-to-all capacity; "
                          f"raise config.capacity_factor (or set it to 0 for the overflow-free size)")
    logits = multihost_utils.process_allgather(logits, tiled=True)
    labels = multihost_utils.process_allgather(gb.labels, tiled=True)
    acc.update(np.asarray(labels), np.asarray(logits))
  return acc.result()


# --- the loop --------------------------------------------------------------------------------------

def train_and_evaluate(config, workdir: str, devices=None) -> dict:
  """Trains ``config`` and writes ``config.json``, ``metrics.jsonl`` and checkpoints under ``workdir``.

  Returns the last eval metrics. Resumes from the latest complete checkpoint in ``workdir``.
  ``devices``: the devices of the mesh (default ``jax.devices()``), e.g. CPU devices in a notebook.
  """
  from dmt_jax import checkpoint as ckpt_lib
  from dmt_jax.metrics_writer import MetricsWriter
  pidx, pcount = jax.process_index(), jax.process_count()
  stop = ckpt_lib.PreemptionFlag.install()   # early: a SIGTERM during start-up saves after one step
  exp = build_experiment(config, pidx, pcount, devices)
  writer = MetricsWriter(workdir, enabled=pidx == 0)
  writer.write_config(config)
  state = init_state(exp, int(config.seed))
  sh = state_shardings(state)
  manager = ckpt_lib.CheckpointManager(os.path.join(workdir, "checkpoints"), exp, config, writer)
  state, start = manager.restore_latest(state)
  if start == 0 and manager.latest_step() is None and config.get("init_from"):   # fresh run: convert
    from dmt_jax import convert
    state, _ = convert.init_state_from_checkpoint(exp, config.init_from, seed=int(config.seed))
  # Data-source counters (e.g. Criteo "data/malformed_lines"): logged once, returned with the eval metrics.
  data_stats = exp.source.stats() if hasattr(exp.source, "stats") else {}
  if data_stats:
    writer.write(start, data_stats)
  train_step, eval_step = make_train_step(exp, sh), make_eval_step(exp)
  tput = metrics_lib.Throughput(window=max(1, int(config.log_every)))
  last_eval: dict = {}
  num_steps = int(config.num_train_steps)
  progress = writer.progress(start, num_steps)

  def check(step, out, where):
    if int(out["overflow"]):
      raise TrainingError(f"step {step}: {int(out['overflow'])} ids overflowed the id all-to-all capacity "
                          f"({exp.engine.capacity} per destination); raise config.capacity_factor or set "
                          f"it to 0 for the overflow-free size")
    if not bool(out["finite"]) and config.on_nonfinite == "stop":
      raise TrainingError(f"step {step}: non-finite loss {float(out['loss'])} or gradient norm "
                          f"{float(out['grad_norm'])} on {where}; set config.on_nonfinite='skip' to skip "
                          f"such updates")

  def host_batch(step):   # a pure function of the step: made one step ahead on a background thread
    return pipeline.checked(exp.fs, exp.source.train_batch(step), config.id_policy, f"train batch {step}")

  depth = int(config.get("prefetch_batches", 1))
  with pipeline.Prefetcher(host_batch, start, num_steps, depth=depth) as prefetch:
    tput.start()
    for step in range(start, num_steps):
      b = prefetch.get(step)
      state, out = train_step(state, to_global(exp, b))
      done = step + 1
      check(step, out, f"train batch {step} (global rows {step * config.batch_size}..."
                       f"{(step + 1) * config.batch_size - 1})")
      tput.update(config.batch_size)
      progress.update(1)
      if done % config.log_every == 0 or done == num_steps:
        writer.write(done, {"train/loss": float(out["loss"]), "train/grad_norm": float(out["grad_norm"]),
                            "train/skipped_nonfinite": int(not bool(out["finite"])),
                            "perf/examples_per_sec": tput.rate(), "perf/steps_per_sec": tput.steps_per_sec()})
      if (config.eval_every and done % config.eval_every == 0) or done == num_steps:
        last_eval = evaluate(exp, eval_step, state)
        writer.write(done, {f"eval/{k}": v for k, v in last_eval.items()})
      if (config.checkpoint_every and done % config.checkpoint_every == 0) or done == num_steps or stop.is_set():
        manager.save(done, state, force=stop.is_set() or done == num_steps)
      if stop.is_set():
        progress.close()
        manager.close()
        writer.close()
        raise ckpt_lib.Preempted(f"preempted (SIGTERM) at step {done}: checkpoint {done} saved under "
                                 f"{manager.directory}; re-run the same command to resume")
  progress.close()
  manager.close()
  writer.close()
  return {**last_eval, **data_stats}


def evaluate_checkpoint(config, workdir: str, step: int | None = None) -> dict:
  """``--mode=eval``: restores checkpoint ``step`` (default: the latest complete one) of ``workdir``
  onto ``config``'s mesh (resharding if it was saved on another), runs the eval set and appends one
  ``eval/*`` line with the checkpoint's step to ``metrics.jsonl``. Returns the eval metrics plus
  ``"step"``."""
  from dmt_jax import checkpoint as ckpt_lib
  from dmt_jax.metrics_writer import MetricsWriter
  exp = build_experiment(config, jax.process_index(), jax.process_count())
  directory = os.path.join(workdir, "checkpoints")
  if step is None:
    step = ckpt_lib.latest_complete_step(directory)
    if step is None:
      raise ckpt_lib.CheckpointError(f"--mode=eval: no complete checkpoint under {directory}")
  manager = ckpt_lib.CheckpointManager(directory, exp, config)
  state = manager.restore(int(step))
  result = evaluate(exp, make_eval_step(exp), state)
  MetricsWriter(workdir, enabled=jax.process_index() == 0).write(int(step), {f"eval/{k}": v for k, v in result.items()})
  manager.close()
  return {**result, "step": int(step)}
