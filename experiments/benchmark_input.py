r"""Input-pipeline throughput (records/s) of the raw Criteo reader, the shard reader and synthetic data.

  python experiments/benchmark_input.py                       # on a generated 200k-row Criteo-format file
  python experiments/benchmark_input.py --raw='/data/criteo/day_0' --shards_dir=/data/criteo_npy

Without ``--raw``/``--shards_dir`` it writes ``--rows`` random Criteo lines into a temporary directory and
preprocesses them first. Prints one JSON object with records/s per reader.
"""

import json
import os
import tempfile
import time

from absl import flags
import numpy as np

import cli

from dmt_jax.data import criteo, shards, synthetic

_RAW = flags.DEFINE_string("raw", None, "Raw Criteo file(s), comma-separated; default: generated.")
_SHARDS_DIR = flags.DEFINE_string("shards_dir", None,
                                  "Preprocessed shards; default: made from the raw files.")
_ROWS = flags.DEFINE_integer("rows", 200_000, "Rows of the generated raw file.")
_BATCH = flags.DEFINE_integer("batch_size", 4096, "Batch size.")
_MAX_BATCHES = flags.DEFINE_integer("max_batches", 50, "Batches timed per reader.")
_VOCAB = flags.DEFINE_integer("vocab_size", 1_000_000, "Hash buckets per categorical column.")


def records_per_second(batches, max_batches: int) -> dict:
  """Times up to ``max_batches`` batches of an iterable of ``Batch``; returns records, seconds, records/s."""
  it = iter(batches)
  n, t0 = 0, time.perf_counter()
  for _ in range(max_batches):
    try:
      n += next(it).size
    except StopIteration:
      break
  dt = time.perf_counter() - t0
  return {"records": n, "seconds": round(dt, 3), "records_per_s": round(n / max(dt, 1e-9))}


def _generate_raw(path: str, rows: int) -> None:
  rng = np.random.default_rng(0)
  labels = rng.random(rows) < 0.25
  ints = rng.geometric(0.05, size=(rows, 13)) - 2
  cats = rng.zipf(1.2, size=(rows, 26)) % (1 << 32)
  with open(path, "w") as f:
    for r in range(rows):
      f.write("\t".join([str(int(labels[r]))] + [str(v) for v in ints[r]] + [f"{v:08x}" for v in cats[r]]))
      f.write("\n")


def main(argv):
  del argv
  tmp = tempfile.TemporaryDirectory()
  raw = _RAW.value.split(",") if _RAW.value else [os.path.join(tmp.name, "day_0")]
  if not _RAW.value:
    _generate_raw(raw[0], _ROWS.value)
  encoder = criteo.HashEncoder([_VOCAB.value] * criteo.NUM_CAT)
  shards_dir = _SHARDS_DIR.value
  if not shards_dir:
    shards_dir = os.path.join(tmp.name, "shards")
    shards.write_shards(raw, shards_dir, encoder, "skip", rows_per_shard=1 << 16)
  reader = shards.ShardReader(shards_dir, _BATCH.value, shuffle=True)
  gen = synthetic.SyntheticClickData(criteo.criteo_feature_set([100_000] * criteo.NUM_CAT, 16), seed=0)
  report = {
      "batch_size": _BATCH.value,
      "raw_reader": records_per_second(criteo.CriteoReader(raw, _BATCH.value, encoder, "skip"),
                                       _MAX_BATCHES.value),
      "shard_reader_shuffled": records_per_second(reader, _MAX_BATCHES.value),
      "shard_reader_sequential": records_per_second(
          shards.ShardReader(shards_dir, _BATCH.value, shuffle=False), _MAX_BATCHES.value),
      "synthetic": records_per_second(
          (gen.batch(s, _BATCH.value) for s in range(10**9)),
          _MAX_BATCHES.value),
  }
  print(json.dumps(report))
  tmp.cleanup()


if __name__ == "__main__":
  cli.run(main)
