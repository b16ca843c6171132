r"""Tower partitioner: features -> towers from a trained flat run (learned affinity + load balance).

  # 1. train flat briefly
  python experiments/main.py --config=experiments/configs/flat_dlrm.py:tiny --workdir=/tmp/flat
  # 2. partition into 4 towers (2 per tower group on the host=2 x device=4 mesh)
  python experiments/partition.py --config=experiments/configs/flat_dlrm.py:tiny --workdir=/tmp/flat \
      --num_towers=4 --method=affinity --output=/tmp/towers.json
  # 3. continue as DMT from the flat checkpoint
  python experiments/main.py --config=experiments/configs/dmt_dlrm.py:tiny --workdir=/tmp/dmt \
      --config.towers.file=/tmp/towers.json --config.towers.num_towers=4 --config.init_from=/tmp/flat

Methods: affinity (maximise intra-tower learned affinity under the balance limits), random (balanced),
round_robin, greedy_cost (balance only). The affinity is computed on ``--num_sample_batches`` training
batches that follow the checkpoint's step (rows the model has not trained on), from the checkpoint's
tables and dense over-arch (``--measure=interaction``, default) or its embeddings alone
(``--measure=dot``); see ``dmt_jax/partitioner.py``. The towers JSON holds the towers (feature names;
``tower_indices`` as indices), per-tower costs, limits, imbalance, objective, bound, method and seed;
DMT configs read it with ``--config.towers.file=``. The report is printed as one JSON line.

Balance: every per-tower cost (table bytes incl. optimizer state, pooling factor x dim, output width) must
stay <= (1 + tolerance) x the mean over towers; ``--balance_tolerance`` is one number for all costs or
``table_bytes=0.2,lookup=0.3,width=0`` (unnamed costs unconstrained). ``--group_memory_bytes`` caps the
table bytes of one tower group. Infeasible requests exit with an error naming the binding constraint.
"""

import json
import sys

from absl import app, flags
from ml_collections import config_flags

import cli

config_flags.DEFINE_config_file("config", None, "Flat experiment config file[:arg] (default: the one saved "
                                "in the checkpoint).", lock_config=True)
flags.DEFINE_string("workdir", None, "The flat run's workdir (or its checkpoints/ folder); needed by "
                    "--method=affinity, optional otherwise (then --config is required).")
flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest complete one).")
flags.DEFINE_integer("num_towers", None, "T, a multiple of the config's tower-group count.")
flags.DEFINE_integer("num_groups", None, "Tower groups (default: the config topology's tower level).")
flags.DEFINE_enum("method", "affinity", ["affinity", "random", "round_robin", "greedy_cost"], "Partition method.")
flags.DEFINE_enum("measure", "interaction", ["interaction", "dot"], "Affinity measure (method=affinity).")
flags.DEFINE_string("output", None, "Towers JSON to write.")
flags.DEFINE_string("balance_tolerance", "table_bytes=0.25,lookup=0.25,width=0", "Per-tower cost <= "
                    "(1+tol) x mean: one number for all costs or 'table_bytes=..,lookup=..,width=..' (unnamed "
                    "costs unconstrained; width is never limited below ceil(F/T) features).")
flags.DEFINE_float("group_memory_bytes", None, "Table bytes one tower group can hold (default: unlimited).")
flags.DEFINE_integer("num_sample_batches", 4, "Training batches (after the checkpoint step) for the affinity "
                     "and the pooling factors.")
flags.DEFINE_integer("seed", 0, "Seed of the partition search / random baseline and the affinity donors.")
flags.DEFINE_integer("restarts", 16, "Greedy restarts of the affinity method.")
flags.mark_flags_as_required(["num_towers", "output"])
FLAGS = flags.FLAGS


def _tolerance(text: str):
  if "=" not in text:
    return float(text)
  out = {}
  for part in text.split(","):
    k, v = part.split("=", 1)
    out[k.strip()] = float(v)
  return out


def main(argv):
  del argv
  import jax
  jax.config.update("jax_platforms", "cpu")
  import ml_collections
  import numpy as np

  from dmt_jax import checkpoint as ckpt_lib
  from dmt_jax import partitioner as tp
  from dmt_jax.data import pipeline
  from dmt_jax.topology import Topology

  config_dict = logical = None
  if FLAGS.workdir:
    config_dict, logical = ckpt_lib.load_logical(FLAGS.workdir, FLAGS.step)
  config = FLAGS.config if FLAGS.config is not None else (
      ml_collections.ConfigDict(config_dict) if config_dict else None)
  if config is None:
    raise app.UsageError("give --config, or --workdir with a checkpoint")
  if FLAGS.method == "affinity" and logical is None:
    raise app.UsageError("--method=affinity needs --workdir with a trained checkpoint")
  source = pipeline.make_source(config, 0, 1)
  fs = source.fs
  start = int(logical["step"]) if logical else 0
  batches = [pipeline.checked(fs, source.train_batch(start + i), config.id_policy, f"sample batch {i}")
             for i in range(max(1, FLAGS.num_sample_batches))]
  costs = tp.feature_costs(fs, batches, config.embedding_optimizer)
  G = FLAGS.num_groups or Topology.from_string(config.topology, config.tower_level or None).num_groups
  cons = tp.Constraints(FLAGS.num_towers, G, _tolerance(FLAGS.balance_tolerance), FLAGS.group_memory_bytes)

  affinity = None
  if logical is not None:
    if config_dict and config_dict.get("mode") == "dmt" and config_dict["towers"]["module"] != "identity":
      raise app.UsageError("the affinity needs a flat (or identity-tower DMT) checkpoint: its over-arch must "
                           "see one embedding per feature")
    affinity = tp.affinity_from_logical(config.model, fs, logical, batches, FLAGS.measure, FLAGS.seed)
  try:
    part = tp.partition(fs, costs, cons, FLAGS.method, affinity, seed=FLAGS.seed, restarts=FLAGS.restarts)
  except tp.InfeasiblePartition as e:
    print(f"partition.py: infeasible: {e}", file=sys.stderr)
    return 2
  extra = {"measure": FLAGS.measure if affinity is not None else None,
           "source": {"workdir": FLAGS.workdir, "step": start if logical else None,
                      "num_sample_batches": FLAGS.num_sample_batches},
           "pooling_factor": [float(x) for x in costs.pooling_factor],
           "affinity": None if affinity is None else np.round(affinity, 6).tolist()}
  spec = tp.save_towers(FLAGS.output, part, fs, extra)
  summary = {k: spec[k] for k in ("method", "seed", "num_towers", "towers", "imbalance") if k in spec}
  for k in ("objective", "intra_fraction", "upper_bound"):
    if k in spec:
      summary[k] = spec[k]
  print(json.dumps(summary, default=float), flush=True)
  return 0


if __name__ == "__main__":
  cli.run(main)
