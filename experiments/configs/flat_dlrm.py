"""FLAT DLRM: hybrid-parallel baseline (tables sharded over all devices, global all-to-all).

  python experiments/main.py --config=experiments/configs/flat_dlrm.py:tiny --workdir=/tmp/flat_dlrm
  args: tiny (synthetic, 8 CPU devices as host=2 x device=4), medium, criteo_kaggle, criteo_1tb, movielens;
        append overrides: ':tiny,steps=50'
"""

from dmt_jax import config_base


def get_config(arg=None):
  return config_base.get_config("dlrm", "flat", arg)
