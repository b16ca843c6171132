"""DMT DCN: Disaggregated Multi-Tower (SPTT + tower modules).

  python experiments/main.py --config=experiments/configs/dmt_dcn.py:tiny --workdir=/tmp/dmt_dcn
  args: tiny (synthetic, 8 CPU devices as host=2 x device=4), medium, criteo_kaggle, criteo_1tb, movielens;
        append overrides: ':tiny,steps=50'
"""

from dmt_jax import config_base


def get_config(arg=None):
  return config_base.get_config("dcn", "dmt", arg)
