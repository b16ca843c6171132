"""``run(main)``: absl's ``app.run`` for the scripts in experiments/, with ``--help`` exiting 0.

absl prints the usage for ``--help`` / ``--helpshort`` / ``--helpfull`` and then exits with status 1,
so ``python experiments/benchmark.py --help && ...`` reads as a failure; here asking for help succeeds.
"""

import sys

from absl import app

HELP_ARGS = ("--help", "-help", "-h", "--helpshort", "--helpfull", "-?")


def run(main) -> None:
  """``app.run(main)``; a requested usage message exits 0, every other exit status passes through."""
  try:
    status = app.run(main)
  except SystemExit as e:
    if e.code == 1 and any(a in HELP_ARGS for a in sys.argv[1:]):
      sys.exit(0)
    raise
  sys.exit(status)
