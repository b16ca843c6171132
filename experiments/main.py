"""Train and evaluate a flat or DMT recommendation model from an ml_collections config.

  python experiments/main.py --config=experiments/configs/dmt_dlrm.py:tiny --workdir=/tmp/dmt_tiny
  python experiments/main.py --config=experiments/configs/flat_dlrm.py:tiny --workdir=/tmp/w \
      --config.sharding=row_wise --config.num_train_steps=100
  python experiments/main.py --config=... --workdir=W --mode=eval      # evaluate the latest checkpoint

Multi-process: ``launch/local.py`` (this machine), ``launch/slurm_gpu.sbatch``, ``launch/tpu_pod.sh``
append ``--coordinator_address/--num_processes/--process_id`` (or pass ``--distributed=auto``).
"""

import json
import sys

from absl import flags
from ml_collections import config_flags

import cli
import runtime_flags

config_flags.DEFINE_config_file("config", None, "Experiment config file[:arg].", lock_config=True)
flags.DEFINE_string("workdir", None, "Output directory (config.json, metrics.jsonl, checkpoints/).")
flags.DEFINE_enum("mode", "train", ["train", "eval"], "train (and evaluate), or eval a checkpoint.")
flags.mark_flags_as_required(["config", "workdir"])
runtime_flags.define()
FLAGS = flags.FLAGS


def main(argv):
  del argv
  import jax
  config = FLAGS.config
  runtime_flags.start(config)
  from dmt_jax import checkpoint, train
  if FLAGS.mode == "eval":
    result = train.evaluate_checkpoint(config, FLAGS.workdir)
  else:
    try:
      result = train.train_and_evaluate(config, FLAGS.workdir)
    except checkpoint.Preempted as e:   # saved; the conventional exit status of a SIGTERM'd job
      print(str(e), file=sys.stderr, flush=True)
      sys.exit(143)
  if jax.process_index() == 0:
    print(json.dumps({k: v for k, v in result.items()}, default=float), flush=True)


if __name__ == "__main__":
  cli.run(main)
