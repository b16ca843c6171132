"""``validate_config(config)``: every impossible setting named by its field, before anything is built.

Runs on the host without devices (``train.build_experiment`` calls it first). All problems are
collected and raised together as one ``ConfigError`` whose lines read ``config.<field>=<value>: why``.
"""

from __future__ import annotations

import math
import re

WIRE_DTYPES = ("float32", "bfloat16", "float16")
DENSE_OPTIMIZERS = ("adam", "adagrad", "sgd")
MODES = ("flat", "dmt")
ID_POLICIES = ("error", "hash", "clip")
ON_NONFINITE = ("stop", "skip")
_LEVEL = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*([0-9]+)\s*$")


class ConfigError(ValueError):
  """One or more config fields are impossible; the message names each field."""


def parse_topology(spec) -> list[tuple[str, int]]:
  """``"host=2,device=4"`` -> [("host", 2), ("device", 4)]; raises ``ConfigError`` naming the part."""
  if not isinstance(spec, str) or not spec.strip():
    raise ConfigError(f"config.topology={spec!r}: must be a string 'name=size,...' (outermost level first)")
  levels = []
  for part in spec.split(","):
    m = _LEVEL.match(part)
    if not m:
      raise ConfigError(f"config.topology={spec!r}: level {part!r} must look like name=size with size a "
                        f"positive integer, e.g. 'host=2,device=4'")
    name, size = m.group(1), int(m.group(2))
    if size < 1:
      raise ConfigError(f"config.topology={spec!r}: level {name!r} has size {size}; sizes must be >= 1")
    if name in [n for n, _ in levels]:
      raise ConfigError(f"config.topology={spec!r}: level name {name!r} appears twice")
    levels.append((name, size))
  return levels


def _get(config, path, default=None):
  node = config
  for k in path.split("."):
    try:
      node = node[k]
    except (KeyError, AttributeError, TypeError):
      return default
  return node


def _is_int(x) -> bool:
  return isinstance(x, int) and not isinstance(x, bool)


def _seq(x):
  return list(x) if isinstance(x, (list, tuple)) else None


def validate_config(config) -> None:
  """Raises ``ConfigError`` listing every impossible field of ``config`` (an ml_collections config)."""
  from dmt_jax import tower_modules
  from dmt_jax.data.pipeline import SOURCES
  from dmt_jax.embedding.engine import FLAT_SHARDING_TYPES
  from dmt_jax.embedding.sparse_optim import OPTIMIZERS
  from dmt_jax.features import POOLINGS
  from dmt_jax.models.dmt import MODELS
  errs: list[str] = []

  def bad(field, why):
    errs.append(f"config.{field}={_get(config, field)!r}: {why}")

  def choice(field, options):
    v = _get(config, field)
    if v not in options:
      bad(field, f"must be one of {tuple(options)}")
      return False
    return True

  def int_at_least(field, lo):
    v = _get(config, field)
    if not _is_int(v) or v < lo:
      bad(field, f"must be an integer >= {lo}")
      return False
    return True

  def positive_number(field, allow_zero=False):
    v = _get(config, field)
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and (
        v >= 0 if allow_zero else v > 0)
    if not ok:
      bad(field, "must be a finite number " + (">= 0" if allow_zero else "> 0"))
    return ok

  mode_ok = choice("mode", MODES)
  mode = _get(config, "mode")
  # --- topology ------------------------------------------------------------------------------------
  levels, num_devices, groups, group_size = None, None, None, None
  try:
    levels = parse_topology(_get(config, "topology"))
  except ConfigError as e:
    errs.append(str(e))
  tower_level = _get(config, "tower_level") or ""
  if levels is not None:
    names = [n for n, _ in levels]
    num_devices = math.prod(s for _, s in levels)
    if tower_level and tower_level not in names:
      bad("tower_level", f"is not a level of config.topology (levels: {names}); use one of them or ''")
    elif tower_level:
      i = names.index(tower_level)
      groups = math.prod(s for _, s in levels[:i + 1])
      group_size = math.prod(s for _, s in levels[i + 1:])
    elif mode == "dmt":
      bad("tower_level", "DMT needs a tower level (the topology level whose members are tower groups)")
  # --- sharding ------------------------------------------------------------------------------------
  if mode_ok:
    allowed = FLAT_SHARDING_TYPES if mode == "flat" else ("table_wise", "row_wise", "column_wise")
    if choice("sharding", allowed):
      if _get(config, "sharding") == "table_row_wise" and levels is not None and not tower_level:
        bad("sharding", "table_row_wise needs config.tower_level (a table per group, rows inside it)")
  cf = _get(config, "capacity_factor", 0.0)
  if not isinstance(cf, (int, float)) or isinstance(cf, bool) or not math.isfinite(cf) or cf < 0:
    bad("capacity_factor", "must be a finite number >= 0 (0 = the overflow-free capacity)")
  choice("embedding_optimizer", OPTIMIZERS)
  positive_number("embedding_learning_rate")
  positive_number("embedding_initial_accumulator", allow_zero=True)
  choice("id_policy", ID_POLICIES)
  # --- data ----------------------------------------------------------------------------------------
  choice("data.source", SOURCES)
  dim = _get(config, "data.embedding_dim")
  dim_ok = int_at_least("data.embedding_dim", 1)
  vocabs = _seq(_get(config, "data.vocab_sizes"))
  if vocabs is None or not vocabs or any(not _is_int(v) or v < 1 for v in vocabs):
    bad("data.vocab_sizes", "must be a non-empty sequence of integers >= 1")
    vocabs = None
  bags = _seq(_get(config, "data.max_bags"))
  synthetic = _get(config, "data.source") == "synthetic"  # criteo / movielens define their own features
  if synthetic and bags is not None and bags and vocabs is not None and len(bags) != len(vocabs):
    bad("data.max_bags", f"has {len(bags)} entries but config.data.vocab_sizes has {len(vocabs)}")
  if bags is not None and any(not _is_int(b) or b < 1 for b in bags):
    bad("data.max_bags", "every max bag length must be an integer >= 1")
  choice("data.pooling", POOLINGS)
  int_at_least("data.num_dense", 0)
  num_features = len(vocabs) if vocabs is not None else None
  if not synthetic:  # the source's feature set, not data.vocab_sizes (criteo raw: hash sizes; shards: manifest)
    num_features = {"criteo": 26, "movielens": 8}.get(_get(config, "data.source"), num_features)
  if mode_ok and dim_ok and _get(config, "sharding") == "column_wise" and levels is not None:
    members = group_size if mode == "dmt" else num_devices
    if members and dim % members:
      bad("sharding", f"column_wise cuts data.embedding_dim={dim} into {members} column shards (one per "
                      f"device of the routing group); the dim must be divisible by {members}")
  # --- towers --------------------------------------------------------------------------------------
  if mode == "dmt":
    kind = _get(config, "towers.module")
    if choice("towers.module", tower_modules.KINDS):
      c = _get(config, "towers.compression")
      if not isinstance(c, (int, float)) or isinstance(c, bool) or not math.isfinite(c) or c < 1:
        bad("towers.compression", "must be a finite number >= 1 (a tower of F_t features emits ceil(F_t/c) vectors)")
      elif kind == "identity" and c != 1:
        bad("towers.compression", "the identity tower module cannot compress: use compression=1")
      if kind == "mlp":
        hidden = _seq(_get(config, "towers.hidden"))
        if hidden is None or any(not _is_int(h) or h < 1 for h in hidden):
          bad("towers.hidden", "mlp tower hidden widths must be integers >= 1")
      if kind == "dcn":
        int_at_least("towers.num_cross_layers", 1)
    if int_at_least("towers.num_towers", 0):
      T = _get(config, "towers.num_towers")
      if T and groups and T % groups:
        bad("towers.num_towers", f"must be a multiple of the {groups} tower groups (level {tower_level!r})")
      if T and num_features is not None and T > num_features:
        bad("towers.num_towers", f"exceeds the {num_features} sparse features")
      if not T and groups and num_features is not None and groups > num_features:
        bad("towers.num_towers", f"0 means one tower per group, but the {groups} groups exceed the "
                                 f"{num_features} features")
    a = _get(config, "towers.assignment")
    if not _get(config, "towers.file") and a not in ("contiguous", "round_robin", "", None):
      if not isinstance(a, str) or "|" not in a and not a.strip():
        bad("towers.assignment", "must be contiguous, round_robin or explicit towers '0,1,2|3,4,5'")
    choice("towers.wire_dtype", WIRE_DTYPES)
    if _get(config, "towers.param_placement") is not None:
      choice("towers.param_placement", ("auto", "group", "replicated"))
  # --- model ---------------------------------------------------------------------------------------
  if choice("model.name", MODELS):
    if _get(config, "model.name") == "dlrm":
      bottom = _seq(_get(config, "model.bottom_mlp"))
      if not bottom or any(not _is_int(w) or w < 1 for w in bottom):
        bad("model.bottom_mlp", "must be a non-empty sequence of widths >= 1")
      elif dim_ok and bottom[-1] != dim:
        bad("model.bottom_mlp", f"must end in the embedding dim data.embedding_dim={dim} (its output joins "
                                f"the dot interaction)")
      top = _seq(_get(config, "model.top_mlp"))
      if not top or any(not _is_int(w) or w < 1 for w in top):
        bad("model.top_mlp", "must be a non-empty sequence of widths >= 1")
      elif top[-1] != 1:
        bad("model.top_mlp", "must end in width 1 (the logit)")
    else:
      int_at_least("model.num_cross_layers", 0)
      int_at_least("model.low_rank", 0)
      deep = _seq(_get(config, "model.deep_mlp"))
      if deep is None or any(not _is_int(w) or w < 1 for w in deep):
        bad("model.deep_mlp", "must be a sequence of widths >= 1")
  # --- optimisation / loop -------------------------------------------------------------------------
  choice("optimizer", DENSE_OPTIMIZERS)
  positive_number("learning_rate")
  choice("on_nonfinite", ON_NONFINITE)
  for field in ("batch_size", "eval_batch_size"):
    if int_at_least(field, 1) and num_devices and _get(config, field) % num_devices:
      bad(field, f"must be a multiple of the {num_devices} devices of config.topology")
  int_at_least("num_train_steps", 0)
  if _get(config, "data.source") == "synthetic":
    int_at_least("num_eval_batches", 1)          # real data: <= 0 means every full eval batch
  elif not _is_int(_get(config, "num_eval_batches")):
    bad("num_eval_batches", "must be an integer (<= 0: every full batch of the eval split)")
  int_at_least("log_every", 1)
  if _get(config, "prefetch_batches") is not None:
    int_at_least("prefetch_batches", 0)
  int_at_least("eval_every", 0)
  int_at_least("checkpoint_every", 0)
  int_at_least("keep_checkpoints", 0)
  int_at_least("seed", 0)
  if not isinstance(_get(config, "async_checkpointing", False), bool):
    bad("async_checkpointing", "must be true or false")
  if errs:
    raise ConfigError("invalid config:\n  " + "\n  ".join(errs))
