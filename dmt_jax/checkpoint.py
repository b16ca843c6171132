"""Checkpoints: save, keep-last-N, resume (also onto another mesh), preemption, logical state.

On disk (orbax ``CheckpointManager``), one folder per step under ``<workdir>/checkpoints/``::

    <step>/state/   the whole train state pytree (StandardSave): step, params {dense, towers},
                    opt_state (optax), tables [N, R_local, W] (sharded blocks), table_opt
    <step>/meta/    JSON: {"format", "config" (the full config dict), "layout" (the mesh-dependent
                    fields, see ``layout_signature``)}
    <step>/commit_success.txt   written by orbax when the step is complete

The input position is the step (batches are a pure function of the step) and initialisation is
seeded, so restoring step s and re-running gives bit-identical steps after s on CPU. Orbax writes a
step into a temporary folder and renames it when complete; ``complete_steps`` also requires the
commit marker and both items, so an interrupted save is never restored.

The *physical* table layout ``[N, R_local, W]`` depends on the mesh and the sharding plan. The
*logical* state (``state_to_logical``) does not::

    {"step": int,
     "params": {"dense": flax params (numpy), "towers": tower params [T, ...] (numpy) or {}},
     "opt_state": the optax state pytree (numpy leaves; same structure as ``exp.tx.init(params)``),
     "tables": {table name: float32 [V, D]},
     "table_opt": {table name: [V, D] (adagrad) or [V] (rowwise_adagrad)}, {} for sgd}

Dense params and optax state are mesh-independent; tower params are ``[T, ...]`` in tower order
(tower t = the t-th entry of the tower assignment), so they move between meshes as long as the tower
count and assignment stay the same. Changing them (or flat <-> DMT) goes through ``convert_towers``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding, PartitionSpec as P

FORMAT = "dmt_jax.checkpoint/1"
COMMIT_FILE = "commit_success.txt"
STATE, META = "state", "meta"


class Preempted(RuntimeError):
  """Raised after a SIGTERM: the state was saved; re-running the same command resumes."""


class CheckpointError(RuntimeError):
  """A checkpoint cannot be used as asked (missing, incomplete, or another model)."""


class PreemptionFlag:
  """A SIGTERM handler that asks the training loop to save and stop at the next step boundary."""

  @staticmethod
  def install() -> threading.Event:
    ev = threading.Event()
    if threading.current_thread() is threading.main_thread():
      signal.signal(signal.SIGTERM, lambda *_: ev.set())
    return ev


# --- small helpers ---------------------------------------------------------------------------------

def _to_host(x) -> np.ndarray:
  """A (possibly multi-process) jax array or numpy array -> a full host numpy array."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))


def _host_tree(tree):
  return jax.tree.map(_to_host, tree)


def config_to_dict(config) -> dict:
  """A JSON-safe plain dict of a ConfigDict (tuples become lists)."""
  if isinstance(config, dict):
    return json.loads(json.dumps(config))
  return json.loads(config.to_json_best_effort(sort_keys=True))


def config_from_dict(d: dict) -> ml_collections.ConfigDict:
  """Inverse of ``config_to_dict`` (lists stay lists; every consumer accepts sequences)."""
  return ml_collections.ConfigDict(d)


def checkpoint_root(path: str) -> str:
  """``<workdir>`` or ``<workdir>/checkpoints`` -> the folder holding the step folders."""
  sub = os.path.join(path, "checkpoints")
  return sub if os.path.isdir(sub) else path


def complete_steps(directory: str) -> list[int]:
  """Steps under ``directory`` whose save finished: a plain integer folder (not an orbax temporary),
  with orbax's commit marker and both the ``state`` and ``meta`` items. Ascending."""
  if not os.path.isdir(directory):
    return []
  steps = []
  for name in os.listdir(directory):
    d = os.path.join(directory, name)
    if not name.isdigit() or not os.path.isdir(d):
      continue
    if all(os.path.exists(os.path.join(d, x)) for x in (COMMIT_FILE, STATE, META)):
      steps.append(int(name))
  return sorted(steps)


def quarantine_incomplete(directory: str) -> list[str]:
  """Renames step folders that lack the commit marker or an item to ``<step>.incomplete-<n>`` (orbax
  would otherwise list them and refuse to save that step again). Data is kept, never deleted.
  Orbax temporaries (``<step>.orbax-checkpoint-tmp-*``) are left alone: they are never listed."""
  moved = []
  if not os.path.isdir(directory):
    return moved
  complete = set(complete_steps(directory))
  for name in sorted(os.listdir(directory)):
    d = os.path.join(directory, name)
    if name.isdigit() and os.path.isdir(d) and int(name) not in complete:
      n = 0
      while os.path.exists(f"{d}.incomplete-{n}"):
        n += 1
      os.rename(d, f"{d}.incomplete-{n}")
      moved.append(f"{d}.incomplete-{n}")
  return moved


def latest_complete_step(directory: str) -> int | None:
  steps = complete_steps(directory)
  return steps[-1] if steps else None


# --- layout ----------------------------------------------------------------------------------------

def layout_signature(exp) -> dict:
  """The fields that fix the physical state layout: equal signatures restore directly (fast path)."""
  eng, c = exp.engine, exp.config
  return {
      "mode": c.mode, "sharding": c.sharding, "topology": c.topology, "tower_level": c.tower_level or "",
      "mesh_shape": [int(s) for s in exp.mesh.devices.shape], "num_devices": int(exp.mesh.devices.size),
      "towers": None if eng.tl is None else [list(map(int, t)) for t in eng.tl.towers],
      "tower_module": c.towers.module if c.mode == "dmt" else None,
      "tower_vectors": int(exp.tower_vectors),
      "embedding_optimizer": c.embedding_optimizer, "optimizer": c.optimizer,
      "tables": {t.name: [int(t.vocab_size), int(t.dim)] for t in exp.fs.tables},
      "rows_local": int(eng.layout.rows_local), "width": int(eng.layout.width),
  }


def experiment_for_layout(config):
  """An Experiment for ``config``'s *layout only*: its mesh repeats this process's first device, so
  it needs no real devices of the old shape. Use it to read or convert physical blocks on the host
  (``engine.tables_to_logical`` ...); never place arrays with its shardings."""
  from dmt_jax import topology as topo_lib
  from dmt_jax import train
  config = config_from_dict(config) if isinstance(config, dict) else config
  topo = topo_lib.Topology.from_string(config.topology, config.tower_level or None)
  devices = [jax.local_devices()[0]] * topo.num_devices
  return train.build_experiment(config, 0, 1, devices=devices)


def _tower_init_fn(exp):
  f_t, dim = exp.engine.tl.f_t, exp.fs.uniform_dim()
  return lambda kk: exp.tower_module.init(kk, jnp.zeros((1, f_t, dim)))["params"]


def abstract_state(exp) -> dict:
  """ShapeDtypeStructs (no shardings) of ``train.init_state(exp, ...)``, computed without devices."""
  eng, fs = exp.engine, exp.fs
  dim = fs.uniform_dim()
  key = jax.random.key(0)
  Fp = eng.output_features(exp.tower_vectors)
  dense = jax.eval_shape(lambda k: exp.model.init(k, jnp.zeros((1, fs.num_dense)), jnp.zeros((1, Fp, dim)))["params"],
                         key)
  towers = {}
  if exp.tower_module is not None:
    towers = jax.eval_shape(lambda k: jax.vmap(_tower_init_fn(exp))(jax.random.split(k, eng.num_towers)), key)
  params = {"dense": dense, "towers": towers}
  N = int(exp.mesh.devices.size)
  shape = (N, eng.layout.rows_local, eng.layout.width)
  tables = jax.ShapeDtypeStruct(shape, jnp.float32)
  table_opt = jax.eval_shape(lambda: eng.optimizer.init_state(shape, jnp.float32))
  strip = lambda t: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), t)
  return {"step": jax.ShapeDtypeStruct((), jnp.int32), "params": strip(params),
          "opt_state": strip(jax.eval_shape(exp.tx.init, params)), "tables": tables,
          "table_opt": strip(table_opt)}


def sharded_abstract_state(exp) -> dict:
  """``abstract_state`` with ``exp``'s shardings: a restore target that allocates nothing."""
  a = abstract_state(exp)
  eng, mesh = exp.engine, exp.mesh
  rep = NamedSharding(mesh, P())
  put = lambda t, sh: jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), t, sh)
  towers = a["params"]["towers"]
  p_sh = {"dense": jax.tree.map(lambda _: rep, a["params"]["dense"]),
          "towers": eng.tower_param_sharding(towers) if towers else {}}
  o_sh = optax.tree_map_params(exp.tx, lambda _, sh: sh, a["opt_state"], p_sh,
                               transform_non_params=lambda _: rep)
  return {"step": put(a["step"], rep), "params": put(a["params"], p_sh), "opt_state": put(a["opt_state"], o_sh),
          "tables": put(a["tables"], eng.sharding),
          "table_opt": jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=eng.sharding),
                                    a["table_opt"])}


def _numpy_target(abstract):
  """Zero-memory numpy leaves: orbax then restores every leaf as a host numpy array."""
  return jax.tree.map(lambda s: np.broadcast_to(np.zeros((), s.dtype), s.shape), abstract)


# --- logical state -----------------------------------------------------------------------------------

def state_to_logical(exp, state) -> dict:
  """Train state (device arrays on ``exp``'s mesh, or host numpy in ``exp``'s physical layout) ->
  the mesh-independent logical state (all numpy; see the module docstring for the keys).

  Tables come back as ``{name: [V, D]}``, table optimizer accumulators as ``{name: [V, D]}`` (adagrad),
  ``{name: [V]}`` (rowwise_adagrad) or ``{}`` (sgd). Works on every process of a multi-process run.
  """
  eng = exp.engine
  blocks = _to_host(state["tables"])
  table_opt = state["table_opt"]
  return {
      "step": int(_to_host(state["step"])),
      "params": {"dense": _host_tree(state["params"]["dense"]),
                 "towers": _host_tree(state["params"].get("towers", {}))},
      "opt_state": _host_tree(state["opt_state"]),
      "tables": eng.tables_to_logical(blocks),
      "table_opt": {} if isinstance(table_opt, tuple) else eng.optimizer_state_to_logical(_to_host(table_opt)),
  }


def _place_opt_state(exp, params, logical_opt):
  replicated = NamedSharding(exp.mesh, P())
  abstract = jax.eval_shape(exp.tx.init, params)
  shardings = optax.tree_map_params(exp.tx, lambda _, sh: sh, abstract,
                                    jax.tree.map(lambda x: x.sharding, params),
                                    transform_non_params=lambda _: replicated)
  a_leaves, treedef = jax.tree.flatten(abstract)
  s_leaves = jax.tree.leaves(shardings)
  if logical_opt is None:
    return jax.jit(exp.tx.init, out_shardings=shardings)(params)
  leaves = jax.tree.leaves(logical_opt)
  if len(leaves) != len(a_leaves):
    raise CheckpointError(f"optimizer state has {len(leaves)} arrays, but config.optimizer="
                          f"{exp.config.optimizer!r} needs {len(a_leaves)}; convert with convert_towers(..., "
                          f"keep_optimizer=False) to start the optimizer afresh")
  out = []
  for i, (x, a, sh) in enumerate(zip(leaves, a_leaves, s_leaves)):
    x = np.asarray(x)
    if x.shape != a.shape:
      raise CheckpointError(f"optimizer state leaf {i} has shape {x.shape}, expected {a.shape}")
    out.append(jax.device_put(x.astype(a.dtype), sh))
  return jax.tree.unflatten(treedef, out)


def state_from_logical(exp, logical: dict) -> dict:
  """Logical state -> a train state placed with ``exp``'s shardings (its mesh, plan and towers).

  ``logical["opt_state"]`` may be ``None`` (fresh optax state) and ``logical["table_opt"]`` may be
  ``{}`` (fresh accumulators). Shapes must match ``exp``'s model: dense params exactly, tower params
  ``[T, ...]`` with ``exp``'s tower count (else use ``convert_towers`` first).
  """
  eng, mesh = exp.engine, exp.mesh
  replicated = NamedSharding(mesh, P())
  want = abstract_state(exp)
  _check_shapes("params", want["params"], logical["params"])
  for t in exp.fs.tables:
    got = np.shape(logical["tables"].get(t.name, ()))
    if got != (t.vocab_size, t.dim):
      raise CheckpointError(f"table {t.name!r}: logical shape {got}, the config needs {(t.vocab_size, t.dim)}")
  tables = eng.tables_from_logical({k: np.asarray(v, np.float32) for k, v in logical["tables"].items()})
  t_opt = logical.get("table_opt") or {}
  ndim = {"adagrad": 2, "rowwise_adagrad": 1}.get(eng.optimizer.name)
  for k, v in t_opt.items():
    if ndim is not None and np.ndim(v) != ndim:
      raise CheckpointError(f"table_opt[{k!r}] has shape {np.shape(v)}, but embedding_optimizer="
                            f"{eng.optimizer.name!r} keeps {ndim}-d accumulators; drop them "
                            f"(logical['table_opt'] = {{}}) to start afresh")
  if eng.optimizer.name == "sgd" or not t_opt:
    table_opt = eng.init_optimizer_state(tables)
  else:
    table_opt = eng.optimizer_state_from_logical({k: np.asarray(v, np.float32) for k, v in t_opt.items()}, tables)
  dense = jax.device_put(jax.tree.map(np.asarray, logical["params"]["dense"]), replicated)
  towers = {}
  if exp.tower_module is not None:
    towers = jax.tree.map(np.asarray, logical["params"]["towers"])
    towers = jax.device_put(towers, eng.tower_param_sharding(towers))
  params = {"dense": dense, "towers": towers}
  opt_state = _place_opt_state(exp, params, logical.get("opt_state"))
  step = jax.device_put(np.asarray(int(logical.get("step", 0)), np.int32), replicated)
  return {"step": step, "params": params, "opt_state": opt_state, "tables": tables, "table_opt": table_opt}


def _check_shapes(what, want, got):
  w = jax.tree_util.tree_flatten_with_path(want)[0]
  g = jax.tree_util.tree_flatten_with_path(got)[0]
  wd = {jax.tree_util.keystr(k): v.shape for k, v in w}
  gd = {jax.tree_util.keystr(k): np.shape(v) for k, v in g}
  if wd != gd:
    diff = sorted(k for k in set(wd) | set(gd) if wd.get(k) != gd.get(k))[:6]
    raise CheckpointError(
        f"{what} do not fit this config's model: {[(k, gd.get(k), wd.get(k)) for k in diff]} "
        f"(path, have, need). A changed tower count/assignment or flat<->DMT needs "
        f"checkpoint.convert_towers(logical, new_exp) first")


def _logical_from_physical(exp, raw: dict) -> dict:
  return state_to_logical(exp, raw)


def _open_manager(directory: str, config=None, read_only: bool = False) -> ocp.CheckpointManager:
  kw = {}
  if config is not None:
    kw = dict(max_to_keep=int(config.keep_checkpoints) or None,
              enable_async_checkpointing=bool(config.async_checkpointing))
  if read_only:     # reading only: a plain manager that never creates or cleans anything
    kw = dict(create=False)
  opts = ocp.CheckpointManagerOptions(**kw)
  return ocp.CheckpointManager(directory, options=opts, item_names=(STATE, META))


def read_meta(directory: str, step: int) -> dict:
  """The JSON saved next to ``step``: {"format", "config", "layout"}."""
  path = os.path.join(directory, str(step), META, "metadata")
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  mgr = _open_manager(directory, read_only=True)
  return dict(mgr.restore(step, args=ocp.args.Composite(**{META: ocp.args.JsonRestore()}))[META])


def _restore_numpy(directory: str, step: int, old_exp) -> dict:
  mgr = _open_manager(directory, read_only=True)
  target = _numpy_target(abstract_state(old_exp))
  return mgr.restore(step, args=ocp.args.Composite(**{STATE: ocp.args.StandardRestore(target)}))[STATE]


def _resolve_step(directory: str, step: int | None) -> int:
  steps = complete_steps(directory)
  if step is None:
    if not steps:
      raise CheckpointError(f"no complete checkpoint under {directory}")
    return steps[-1]
  if int(step) not in steps:
    raise CheckpointError(f"step {step} is not a complete checkpoint under {directory}; complete: {steps}")
  return int(step)


def load_logical(checkpoint_dir: str, step: int | None = None) -> tuple[dict, dict]:
  """Reads a checkpoint into host memory as ``(config_dict, logical)``, on any device count.

  Args:
    checkpoint_dir: a run's workdir or its ``checkpoints/`` folder.
    step: a complete step; ``None`` = the latest complete one.

  Returns:
    ``config_dict``: the saved config as a plain dict (``ml_collections.ConfigDict(config_dict)``
    rebuilds it); ``logical``: the logical state (module docstring), numpy only.

  The saved physical layout is rebuilt from the saved config on a layout-only mesh, so the
  machine reading it needs neither the old device count nor the old topology.
  """
  directory = checkpoint_root(checkpoint_dir)
  step = _resolve_step(directory, step)
  meta = read_meta(directory, step)
  old_exp = experiment_for_layout(meta["config"])
  raw = _restore_numpy(directory, step, old_exp)
  return meta["config"], _logical_from_physical(old_exp, raw)


def convert_towers(logical: dict, new_exp, seed: int = 0, keep_optimizer: bool = False,
                   keep_tower_params: bool = False) -> tuple[dict, dict]:
  """Explicit conversion of a logical state to another tower structure (tower count, assignment,
  module, or flat <-> DMT): the way to initialise a DMT model from a flat one and back.

  Tables and their accumulators are logical (``[V, D]``) and move unchanged (re-homed to their new
  towers by ``state_from_logical``). Every over-arch (``dense``) parameter whose path and shape match
  the new model is kept; the others (e.g. the first top-MLP layer when T*K changes) are freshly
  initialised from ``seed``, as are the tower modules (``keep_tower_params=True`` keeps same-shaped
  ones: only meaningful when the towers hold the same features). The optax state starts afresh
  unless ``keep_optimizer`` and every param was kept. The step restarts at 0.

  Returns:
    (new logical state for ``new_exp``, report {"kept": [paths], "reinitialised": [paths]}).
  """
  from dmt_jax import train
  fresh = state_to_logical(new_exp, train.init_state(new_exp, seed))
  old_flat = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_flatten_with_path(logical["params"])[0]}
  kept, reinit = [], []

  def pick(path, new):
    name = jax.tree_util.keystr(path)
    old = old_flat.get(name)
    if old is not None and np.shape(old) == np.shape(new) and (
        keep_tower_params or not name.startswith("['towers']")):
      kept.append(name)
      return np.asarray(old, np.asarray(new).dtype)
    reinit.append(name)
    return new

  params = jax.tree_util.tree_map_with_path(pick, fresh["params"])
  tables = {t.name: np.asarray(logical["tables"][t.name], np.float32) for t in new_exp.fs.tables}
  t_opt = logical.get("table_opt") or {}
  ndim = {"adagrad": 2, "rowwise_adagrad": 1}.get(new_exp.engine.optimizer.name)
  same_opt = bool(t_opt) and ndim is not None and all(
      t.name in t_opt and np.ndim(t_opt[t.name]) == ndim for t in new_exp.fs.tables)
  out = {"step": 0, "params": params,
         "opt_state": logical["opt_state"] if keep_optimizer and not reinit else None,
         "tables": tables, "table_opt": {k: t_opt[k] for k in tables} if same_opt else {}}
  return out, {"kept": kept, "reinitialised": reinit}


def save_logical_as_init(logical: dict, config, workdir: str, exp=None, step: int = 0) -> str:
  """Writes ``logical`` as checkpoint ``step`` (default 0) of ``config`` under ``<workdir>/checkpoints``,
  so ``experiments/main.py --config=<same config> --workdir=<workdir>`` starts from it.

  ``logical`` must fit ``config``'s model (use ``convert_towers`` first for another tower structure).
  ``exp`` (optional) is ``train.build_experiment(config)`` if already built. Returns the step folder.
  """
  from dmt_jax import train
  exp = exp if exp is not None else train.build_experiment(config, jax.process_index(), jax.process_count())
  logical = dict(logical, step=int(step))
  state = state_from_logical(exp, logical)
  mgr = CheckpointManager(os.path.join(workdir, "checkpoints"), exp, config)
  mgr.save(int(step), state, force=True)
  mgr.wait()
  return os.path.join(workdir, "checkpoints", str(int(step)))


def restore_resharded(directory: str, step: int, old_config, new_exp) -> dict:
  """Restores checkpoint ``step`` saved with ``old_config`` (any mesh / plan / device count) onto
  ``new_exp``'s mesh: physical blocks are read as host numpy, converted to logical with the old
  layout (rebuilt without devices), then placed in the new layout. Same model required (tower count
  and assignment included); otherwise a ``CheckpointError`` pointing to ``convert_towers``."""
  old_exp = experiment_for_layout(old_config)
  old_sig, new_sig = layout_signature(old_exp), layout_signature(new_exp)
  for field in ("mode", "towers", "tower_module", "tower_vectors", "tables"):
    if old_sig[field] != new_sig[field]:
      raise CheckpointError(
          f"checkpoint {directory}/{step} has {field}={old_sig[field]!r} but the config has {new_sig[field]!r}: "
          f"this is another model, not another mesh. Convert explicitly: "
          f"config_dict, logical = checkpoint.load_logical(dir); new, report = checkpoint.convert_towers("
          f"logical, new_exp); checkpoint.save_logical_as_init(new, new_config, new_workdir)")
  raw = _restore_numpy(directory, step, old_exp)
  logical = _logical_from_physical(old_exp, raw)
  if old_sig["optimizer"] != new_sig["optimizer"]:
    logical["opt_state"] = None
  if old_sig["embedding_optimizer"] != new_sig["embedding_optimizer"]:
    logical["table_opt"] = {}
  return state_from_logical(new_exp, logical)


# --- the manager the training loop uses ------------------------------------------------------------

class CheckpointManager:
  """Owns the orbax manager: periodic saves with the config, keep-last-N, resume (resharding when the
  saved layout differs from ``exp``'s), and the metrics truncation on resume."""

  def __init__(self, directory: str, exp, config, writer=None):
    self.directory = os.path.abspath(directory)
    self.exp, self.config, self.writer = exp, config, writer
    if jax.process_index() == 0:
      for d in quarantine_incomplete(self.directory):
        logging.warning("checkpoint folder without commit marker moved aside (never restored): %s", d)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices("dmt_jax.checkpoint.quarantine")
    self.manager = _open_manager(self.directory, config)
    self.meta = {"format": FORMAT, "config": config_to_dict(config), "layout": layout_signature(exp)}

  def latest_step(self) -> int | None:
    return latest_complete_step(self.directory)

  def restore(self, step: int, state=None):
    """Checkpoint ``step`` onto ``exp``'s shardings (directly when the saved layout is this one,
    else via the logical form). ``state`` (optional) is only a template for the direct path."""
    meta = read_meta(self.directory, step)
    if meta.get("layout") == self.meta["layout"]:
      abstract = (sharded_abstract_state(self.exp) if state is None
                  else jax.tree.map(ocp.utils.to_shape_dtype_struct, state))
      return self.manager.restore(step, args=ocp.args.Composite(**{STATE: ocp.args.StandardRestore(abstract)}))[STATE]
    return restore_resharded(self.directory, step, config_from_dict(meta["config"]), self.exp)

  def restore_latest(self, state):
    """(state, start step): the latest complete checkpoint, or ``(state, 0)`` when there is none.
    Metrics lines after the start step (written by a killed run) are dropped."""
    step = self.latest_step()
    if step is not None:
      state = self.restore(step, state)
    if self.writer is not None:
      self.writer.truncate_after(0 if step is None else step)
    return state, int(step or 0)

  def save(self, step: int, state, force: bool = False) -> None:
    if step in self.manager.all_steps():
      return
    self.manager.save(step, args=ocp.args.Composite(**{STATE: ocp.args.StandardSave(state),
                                                       META: ocp.args.JsonSave(self.meta)}), force=force)

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


# --- export ------------------------------------------------------------------------------------------

def _flat_names(prefix: str, tree) -> dict[str, np.ndarray]:
  out = {}
  for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
    keys = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
    out["/".join([prefix, *keys])] = np.asarray(x)
  return out


def export_arrays(exp, logical: dict) -> tuple[dict[str, np.ndarray], dict]:
  """Unsharded inference parameters of a logical state: ``(arrays, model_info)``.

  ``arrays`` (numpy, float32):
    ``embedding/<table>``   [rows, dim]   one per table (features name their table in ``model_info``)
    ``dense/<path>``        the over-arch's flax params, e.g. ``dense/bottom_mlp/dense_0/kernel`` [in, out],
                            ``.../bias`` [out]; DCN: ``dense/cross_<i>/{v,u,w}/...``, ``dense/logit/...``
    ``towers/<path>``       DMT tower modules stacked over towers, e.g. ``towers/proj/kernel`` [T, in, out]
  ``model_info`` (JSON-safe): ``config`` (the full config dict), ``step``, ``features``
  ([{name, table, max_bag, pooling}] in slot order), ``tables``, ``num_dense``, ``towers`` (per tower the
  feature indices; tower t's input is its features' pooled vectors in that order, zero-padded to
  ``features_per_tower``), ``tower_vectors`` (K outputs per tower), ``shapes`` {name: shape}.

  Inference: pool each feature's rows (sum, or mean over real ids), ``emb [B, F, D]``; flat:
  ``logits = over_arch(dense, emb)``; DMT: ``over_arch(dense, concat_t(tower_t(emb[:, towers[t]])))``
  (``[B, T*K, D]``; identity towers: ``emb`` itself).
  """
  fs, eng = exp.fs, exp.engine
  arrays = {f"embedding/{k}": np.asarray(v, np.float32) for k, v in logical["tables"].items()}
  arrays.update(_flat_names("dense", logical["params"]["dense"]))
  if logical["params"].get("towers"):
    arrays.update(_flat_names("towers", logical["params"]["towers"]))
  info = {
      "format": "dmt_jax.export/1", "config": config_to_dict(exp.config), "step": int(logical["step"]),
      "mode": exp.config.mode, "model": exp.config.model.name, "num_dense": int(fs.num_dense),
      "features": [{"name": f.name, "table": f.table, "max_bag": int(f.max_bag), "pooling": f.pooling}
                   for f in fs.features],
      "tables": {t.name: [int(t.vocab_size), int(t.dim)] for t in fs.tables},
      "towers": None if eng.tl is None or exp.config.mode != "dmt" else [list(map(int, t)) for t in eng.tl.towers],
      "features_per_tower": None if eng.tl is None else int(eng.tl.f_t),
      "tower_module": exp.config.towers.module if exp.config.mode == "dmt" else None,
      "tower_vectors": int(exp.tower_vectors),
      "shapes": {k: list(v.shape) for k, v in arrays.items()},
  }
  return arrays, info


def export_checkpoint(config, workdir: str, output: str, step: int | None = None) -> tuple[str, str]:
  """Writes checkpoint ``step`` (default latest) of ``workdir`` as ``output`` (.npz, no pickles) plus
  ``<output without .npz>.json`` (``model_info`` of ``export_arrays``). Returns both paths.

  ``config`` is only a fallback: the config saved with the checkpoint decides the model.
  """
  directory = checkpoint_root(workdir)
  step = _resolve_step(directory, step)
  config_dict, logical = load_logical(directory, step)
  exp = experiment_for_layout(config_dict if config_dict else config)
  arrays, info = export_arrays(exp, logical)
  out = output if output.endswith(".npz") else output + ".npz"
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  tmp = out + ".tmp.npz"
  np.savez(tmp, **arrays)
  os.replace(tmp, out)
  js = out[:-4] + ".json"
  with open(js + ".tmp", "w") as f:
    json.dump(info, f, indent=2, sort_keys=True)
  os.replace(js + ".tmp", js)
  return out, js
