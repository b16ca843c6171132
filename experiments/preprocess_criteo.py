r"""Converts raw Criteo click logs into memory-mappable .npy shards plus a JSON manifest.

  python experiments/preprocess_criteo.py --input='/data/criteo/day_*' --output_dir=/data/criteo_npy \
      --vocab_sizes=40000000 --policy=skip --rows_per_shard=4194304

Inputs are Kaggle ``train.txt`` or Terabyte ``day_N`` files, plain or gzip. Categoricals are hashed into
``--vocab_sizes`` (one value for all 26 columns or 26 comma-separated values) or, with ``--threshold=T``,
mapped through a vocabulary of values seen at least T times (built in one extra pass, saved as
``vocab.npz``). Re-running skips inputs already converted (resumable per day). ``--workers=N``
converts N days at once (one process each; same output). See
``dmt_jax/data/shards.py`` for the layout and ``ShardReader`` to read it.
"""

import glob
import os
import re

from absl import app, flags, logging
import tqdm

import cli

from dmt_jax.data import criteo, shards

_INPUT = flags.DEFINE_multi_string("input", None, "Input files or globs (repeatable; comma-separated ok).")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Directory for shards and manifest.json.")
_VOCAB_SIZES = flags.DEFINE_string("vocab_sizes", "10000000",
                                   "Hash buckets: one int for all 26 columns or 26 comma-separated ints.")
_HASH = flags.DEFINE_enum("hash", "splitmix64", ["splitmix64", "mod"], "Hash of hex values into buckets.")
_THRESHOLD = flags.DEFINE_integer("threshold", 0,
                                  "If > 0, use a frequency-threshold vocabulary instead of hashing.")
_POLICY = flags.DEFINE_enum("policy", "fail", list(criteo.POLICIES), "What to do with malformed lines.")
_ROWS_PER_SHARD = flags.DEFINE_integer("rows_per_shard", 1 << 22, "Rows per output shard.")
_WORKERS = flags.DEFINE_integer("workers", 1, "Inputs (days) converted at once, one process each; the "
                                "output is the same as with 1. Progress then advances per finished input.")
flags.mark_flags_as_required(["input", "output_dir"])


def _natural_key(path: str):
  return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path)]


def expand_inputs(patterns) -> list[str]:
  """Globs -> files, each pattern's matches in natural order (day_2 before day_10), duplicates removed."""
  out = []
  for pattern in (p for arg in patterns for p in arg.split(",") if p):
    matches = sorted(glob.glob(pattern), key=_natural_key)
    if not matches:
      raise app.UsageError(f"--input {pattern!r} matches no file")
    out.extend(m for m in matches if m not in out)
  return out


def _encoder(paths, out_dir):
  if _THRESHOLD.value > 0:
    vocab_path = os.path.join(out_dir, shards.VOCAB_FILE)
    if os.path.exists(vocab_path):
      logging.info("reusing %s", vocab_path)
      return criteo.CriteoVocab.load(vocab_path)
    stats = criteo.ReadStats()
    vocab = criteo.build_vocab(tqdm.tqdm(paths, desc="vocab", unit="file"), _THRESHOLD.value,
                               _POLICY.value, stats)
    os.makedirs(out_dir, exist_ok=True)
    vocab.save(vocab_path)
    logging.info("vocabulary sizes %s (malformed lines %s)", vocab.vocab_sizes, stats.malformed)
    return vocab
  sizes = [int(v) for v in _VOCAB_SIZES.value.split(",")]
  if len(sizes) == 1:
    sizes = sizes * criteo.NUM_CAT
  return criteo.HashEncoder(sizes, _HASH.value)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  paths = expand_inputs(_INPUT.value)
  encoder = _encoder(paths, _OUTPUT_DIR.value)
  with tqdm.tqdm(desc="lines", unit="line", unit_scale=True) as bar:
    manifest = shards.write_shards(paths, _OUTPUT_DIR.value, encoder, _POLICY.value, _ROWS_PER_SHARD.value,
                                   progress=bar.update, log=lambda m: bar.write(m), workers=_WORKERS.value)
  logging.info("totals: %s", manifest["totals"])
  print(manifest["totals"])


if __name__ == "__main__":
  cli.run(main)
