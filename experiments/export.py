r"""Export a checkpoint as one unsharded ``.npz`` (no pickles) plus a JSON of the model config.

  python experiments/export.py --config=experiments/configs/dmt_dlrm.py:tiny --workdir=/tmp/dmt_tiny \
      --output=/tmp/model.npz [--step=N]

Writes ``model.npz`` (``numpy.load(path, allow_pickle=False)``) and ``model.json`` next to it.
Array names and shapes (all float32):

  embedding/<table>          [rows, dim]       one logical table (whatever the training mesh/sharding)
  dense/<path>/kernel        [in, out]         over-arch flax params, e.g. dense/bottom_mlp/dense_0/kernel,
  dense/<path>/bias          [out]             dense/top_mlp/dense_2/bias, dense/cross_0/v/kernel (DCN)
  towers/<path>              [T, ...]          DMT tower-module params stacked over the T towers,
                                               e.g. towers/proj/kernel [T, f_t*dim, K*dim]

``model.json``: the full training config, the step, the features (name, table, max_bag, pooling) in
slot order, the tables, the tower assignment (feature indices per tower, zero-padded to
``features_per_tower``) and K (``tower_vectors``). See ``dmt_jax.checkpoint.export_arrays``.
The model is decided by the config saved with the checkpoint; ``--config`` names the run.
"""

import json

from absl import flags
from ml_collections import config_flags

import cli

config_flags.DEFINE_config_file("config", None, "Experiment config file[:arg] of the run.", lock_config=True)
flags.DEFINE_string("workdir", None, "The run's workdir (holds checkpoints/).")
flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest complete one).")
flags.DEFINE_string("output", None, "Output .npz path (the .json goes next to it).")
flags.DEFINE_integer("num_cpu_devices", None, "Fake CPU devices (default: config; any count works).")
flags.mark_flags_as_required(["config", "workdir", "output"])
FLAGS = flags.FLAGS


def main(argv):
  del argv
  import jax
  ndev = FLAGS.num_cpu_devices if FLAGS.num_cpu_devices is not None else FLAGS.config.num_cpu_devices
  if ndev:
    jax.config.update("jax_num_cpu_devices", int(ndev))
  from dmt_jax import checkpoint
  npz, js = checkpoint.export_checkpoint(FLAGS.config, FLAGS.workdir, FLAGS.output, FLAGS.step)
  print(json.dumps({"npz": npz, "json": js}), flush=True)


if __name__ == "__main__":
  cli.run(main)
