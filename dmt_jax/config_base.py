"""The one configuration schema: every field, its meaning and its default.

Experiment files (``experiments/configs/*.py``) call ``get_config(model, mode, arg)``; the ``arg`` after
the colon picks a size preset (``tiny``, ``criteo_kaggle``, ``criteo_1tb``, ``movielens``) and may carry
``key=value`` overrides (``tiny,steps=50``). Command-line ``--config.<field>=<value>`` overrides win.
"""

from __future__ import annotations

import ml_collections

PRESETS = ("tiny", "medium", "criteo_kaggle", "criteo_1tb", "movielens")

# Criteo Kaggle (Display Advertising Challenge) categorical cardinalities, as used by the DLRM reference.
CRITEO_KAGGLE_VOCABS = (1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194,
                        27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572)
# Criteo Terabyte cardinalities with the MLPerf DLRM-DCNv2 40M-row cap per table.
CRITEO_1TB_VOCABS = (40000000, 39060, 17295, 7424, 20265, 3, 7122, 1543, 63, 40000000, 3067956, 405282,
                     10, 2209, 11938, 155, 4, 976, 14, 40000000, 40000000, 40000000, 590152, 12973, 108, 36)


def base(model: str, mode: str) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.mode = mode                      # flat | dmt
  c.seed = 0                         # parameter init seed (data seed: data.seed)
  # --- topology / mesh -----------------------------------------------------------------------------
  c.topology = "host=2,device=4"     # levels outermost first, "name=size,..."; product = device count
  c.tower_level = "host"             # level whose members are tower groups ("" = none)
  c.num_cpu_devices = 8              # fake CPU devices per process (main() only; 0 = leave JAX's default)
  # --- embeddings ----------------------------------------------------------------------------------
  c.sharding = "table_wise"          # flat: table_wise|row_wise|column_wise|data_parallel|table_row_wise
                                     # dmt: sharding inside a tower group: table_wise|row_wise|column_wise
  c.capacity_factor = 0.0            # id all-to-all capacity per destination; 0 = overflow impossible
  c.static_routing = True            # table/column-wise, data-parallel: route ids by static slot maps
                                     # (no sort) when bags are uniform per member; False = always bucket
  c.embedding_optimizer = "adagrad"  # sgd | adagrad | rowwise_adagrad (row-sparse, on the owning shard)
  c.embedding_learning_rate = 0.1
  c.embedding_initial_accumulator = 0.01   # > 0 keeps early Adagrad steps insensitive to summation order
  c.embedding_update = "sparse"      # sparse (O(rows touched)) | dense (O(table) baseline for benchmarks)
  c.id_policy = "error"              # out-of-range / negative ids: error | hash (mod vocab) | clip
  # --- towers (mode=dmt) ---------------------------------------------------------------------------
  c.towers = ml_collections.ConfigDict()
  c.towers.num_towers = 0            # 0 = one tower per group; must be a multiple of the group count
  c.towers.assignment = "contiguous" # contiguous | round_robin | explicit "0,1,2|3,4,5" (indices or names)
  c.towers.file = ""                 # towers JSON from experiments/partition.py (wins over assignment)
  c.towers.module = "linear"         # identity | linear | mlp | dcn | dot | mix
  c.towers.compression = 4.0         # c: a tower of F_t features emits ceil(F_t / c) vectors of width D
  c.towers.hidden = (64,)            # mlp tower hidden widths
  c.towers.num_cross_layers = 1      # dcn tower cross layers
  c.towers.wire_dtype = "float32"    # dtype of tower outputs on the peer exchange: float32 | bfloat16
  c.towers.param_placement = "auto"  # group (sharded per tower group) | replicated | auto (replicated
                                     # when all towers' params are <= 16 KiB: one all-reduce less a step)
  # --- model ---------------------------------------------------------------------------------------
  c.model = ml_collections.ConfigDict()
  c.model.name = model               # dlrm | dcn
  c.model.bottom_mlp = (64, 16)      # dlrm: last width = embedding dim
  c.model.top_mlp = (64, 32, 1)      # dlrm: ends in 1
  c.model.num_cross_layers = 2       # dcn
  c.model.low_rank = 8               # dcn: rank of the cross layers (0 = full rank)
  c.model.deep_mlp = (64, 32)        # dcn
  # --- optimisation --------------------------------------------------------------------------------
  c.optimizer = "adam"               # dense params and tower modules: adam | adagrad | sgd
  c.learning_rate = 1e-3
  c.batch_size = 256                 # global; a multiple of the device count
  c.num_train_steps = 300
  c.on_nonfinite = "stop"            # NaN/Inf loss or gradient: stop (with step info) | skip the update
  c.prefetch_batches = 1             # train batches made ahead on a background thread (0 = on demand)
  # --- evaluation / logging / checkpoints ----------------------------------------------------------
  c.eval_batch_size = 1024
  c.num_eval_batches = 4             # criteo/movielens: <= 0 = every full eval batch of the eval split
  c.eval_every = 100
  c.log_every = 25
  c.checkpoint_every = 100
  c.keep_checkpoints = 3
  c.async_checkpointing = False
  c.init_from = ""                   # fresh run only: initialise from this run dir's latest checkpoint
                                     # (e.g. flat -> DMT; tables re-homed, dense kept where shapes fit)
  # --- data ----------------------------------------------------------------------------------------
  c.data = ml_collections.ConfigDict()
  c.data.source = "synthetic"        # synthetic | criteo | movielens
  c.data.seed = 0
  c.data.num_dense = 13
  c.data.vocab_sizes = (1000,) * 16
  c.data.max_bags = (1,) * 16        # per-feature max bag length (multi-hot padded with -1)
  c.data.pooling = "sum"             # sum | mean
  c.data.embedding_dim = 16
  c.data.num_planted_groups = 4      # synthetic: planted interacting feature groups
  c.data.path = ""                   # criteo: shard dir (experiments/preprocess_criteo.py) or raw TSV glob(s);
                                     # movielens: recbole wheel cache dir ("" = ~/.cache/dmt_jax)
  c.data.malformed_policy = "fail"   # criteo raw TSV: fail (stop at file:line) | skip (counted, data/malformed_lines)
  c.data.shuffle = True              # criteo/movielens: reshuffle the train split every epoch (seed: data.seed)
  c.data.eval_path = ""              # criteo: separate eval data (shard dir or TSV glob); all of path is train
  c.data.eval_last_input = False     # criteo: eval = the last input file (e.g. day_23), train = the ones before
  c.data.eval_fraction = 0.1         # criteo: eval = the last fraction of records (else); movielens: per-user
                                     # temporal split, the last floor(fraction * n_user) ratings of each user
  return c


def apply_preset(c: ml_collections.ConfigDict, preset: str) -> None:
  if preset == "tiny":
    c.data.vocab_sizes = (1000, 800, 1200, 500, 1000, 900, 700, 1000, 1100, 600, 1000, 400, 1000, 800, 1300, 1000)
    c.data.max_bags = (1, 1, 1, 2, 1, 1, 1, 1, 1, 1, 3, 1, 1, 1, 1, 1)
    c.embedding_learning_rate = 0.15
  elif preset == "medium":
    c.data.vocab_sizes = (100_000,) * 26
    c.data.max_bags = (1,) * 26
    c.data.embedding_dim = 64
    c.model.bottom_mlp = (512, 256, 64)
    c.model.top_mlp = (512, 256, 1)
    c.batch_size = 4096
    c.num_train_steps = 50
  elif preset in ("criteo_kaggle", "criteo_1tb"):
    c.data.vocab_sizes = CRITEO_KAGGLE_VOCABS if preset == "criteo_kaggle" else CRITEO_1TB_VOCABS
    c.data.max_bags = (1,) * 26
    c.data.embedding_dim = 128
    c.data.source = "criteo"
    c.model.bottom_mlp = (512, 256, 128)
    c.model.top_mlp = (1024, 1024, 512, 256, 1)
    c.model.deep_mlp = (1024, 1024, 512, 256)
    c.model.num_cross_layers = 3
    c.model.low_rank = 512
    c.batch_size = 65536
    c.eval_batch_size = 65536
    c.num_train_steps = 100_000
    c.learning_rate = 1e-3
    c.embedding_optimizer = "rowwise_adagrad"
    c.embedding_learning_rate = 0.05
    c.topology = "host=8,device=8"
    c.num_cpu_devices = 0
    c.eval_every = 5000
    c.log_every = 100
    c.checkpoint_every = 5000
    c.async_checkpointing = True
    c.towers.num_towers = 8
    if preset == "criteo_kaggle":
      # train.txt (7 days, ~45.8M rows) preprocessed into one shard dir; eval = the last ~day (1/7).
      c.data.path = "/data/criteo_kaggle/shards"
      c.data.eval_fraction = 1 / 7
    else:
      # day_0..day_23 preprocessed into one shard dir (days in order); eval = day_23 (MLPerf's held-out day).
      c.data.path = "/data/criteo_1tb/shards"
      c.data.eval_last_input = True
  elif preset == "movielens":
    # MovieLens-100K (data/movielens_source.py): 80,367 train / 19,633 eval ratings, 8 features, 5 dense.
    c.data.source = "movielens"
    c.data.embedding_dim = 16
    c.data.eval_fraction = 0.2
    c.batch_size = 512
    c.num_train_steps = 300            # ~1.9 epochs: flat DLRM's best (eval AUC, 3 seeds: 200 steps 0.7853,
                                       # 300 0.7900, 400 0.7858); longer overfits
    c.eval_batch_size = 4904           # 4 batches = 19,616 of the 19,633 eval ratings
    c.num_eval_batches = 0
    c.eval_every = 200
    c.checkpoint_every = 0             # only the final checkpoint
    c.embedding_learning_rate = 0.05
    # Adagrad from a zero accumulator. Measured (flat DLRM eval AUC at 400 steps, 2 seeds): 0.7881 at 0,
    # 0.7848 at 1e-4; at the base default 0.01: 0.7765 (lr 0.05, 1 seed), 0.7805 / 0.7834 (lr 0.2 / 0.5).
    c.embedding_initial_accumulator = 0.0
  else:
    raise ValueError(f"unknown config arg {preset!r}; choose one of {PRESETS}")


def set_fields(c: ml_collections.ConfigDict, fields: dict) -> ml_collections.ConfigDict:
  """Sets dotted fields in place (``{"towers.compression": 2.0}``) and returns ``c``."""
  for key, value in fields.items():
    node = c
    *path, leaf = key.split(".")
    for q in path:
      node = node[q]
    node[leaf] = value
  return c


def get_config(model: str, mode: str, arg: str | None) -> ml_collections.ConfigDict:
  """``arg`` = ``preset[,key=value...]``; keys are dotted config fields (``steps`` = num_train_steps)."""
  c = base(model, mode)
  parts = [p for p in (arg or "tiny").split(",") if p]
  preset = parts[0] if parts and "=" not in parts[0] else "tiny"
  apply_preset(c, preset)
  aliases = {"steps": "num_train_steps", "batch": "batch_size"}
  for p in parts[1:] if "=" not in parts[0] else parts:
    k, v = p.split("=", 1)
    k = aliases.get(k, k)
    node = c
    *path, leaf = k.split(".")
    for q in path:
      node = node[q]
    if leaf not in node:
      raise KeyError(f"config arg names unknown field {k!r}")
    old = node[leaf]
    if isinstance(old, bool):  # bool("False") is True
      if v.lower() not in ("true", "false", "1", "0"):
        raise ValueError(f"config arg {k}={v!r}: expected true or false")
      node[leaf] = v.lower() in ("true", "1")
    else:
      node[leaf] = type(old)(v) if not isinstance(old, (tuple, list)) else tuple(type(old[0])(x) for x in v.split("/"))
  return c
