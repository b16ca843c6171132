"""Criteo click logs as a position-addressable data source (``config.data.source = "criteo"``).

``config.data.path`` is either

* a **shard directory** (it holds ``manifest.json``) written by ``experiments/preprocess_criteo.py``:
  shards are memory-mapped (``shards.ShardReader``); the vocab sizes come from the manifest
  (a different ``config.data.vocab_sizes`` is overridden, with a logged warning and the
  ``data/config_vocab_sizes_overridden`` metric = 1); malformed lines were handled by the preprocessing policy and
  their counts are read from the manifest; or
* **raw TSV files** (one path, a glob, or comma-separated globs; plain or gzip), for small experiments:
  parsed once into memory with ``config.data.malformed_policy`` (``"fail"`` stops with ``file:line``,
  ``"skip"`` counts), categoricals hashed (splitmix64, ``criteo.HashEncoder``) into
  ``config.data.vocab_sizes`` (26 values, or one value for all 26 columns).

Records are numbered in input order (manifest order; for raw globs, each pattern's matches in natural
order: ``day_2`` before ``day_10``). Train/eval split, in this order of precedence:

* ``config.data.eval_path`` set: eval = all of it (read like ``path``; the vocab sizes must agree),
  train = all of ``path``;
* ``config.data.eval_last_input``: eval = the last input file (e.g. Terabyte ``day_23``), train = the
  inputs before it;
* otherwise eval = the last ``ceil(eval_fraction * N)`` records (the latest ones for day files),
  train = the rest.

Train stream (pure function of the step, so resuming needs no data state): the train split's ``N``
records are visited epoch after epoch; global row ``r`` of global batch ``step`` is stream position
``q = step * B + r``, i.e. record ``pi_e(q mod N)`` of epoch ``e = q div N``, where ``pi_e`` is
``shards.permute`` keyed by ``(config.data.seed, e)`` when ``config.data.shuffle`` (else the identity).
Batches span epoch boundaries. Process ``p`` of ``P`` reads only global rows ``[p*B/P, (p+1)*B/P)``.

Eval: the eval split in record order, cut into global batches of ``eval_batch_size``;
``num_eval_batches`` of them (``<= 0``: all full batches). The remainder smaller than one batch is not
evaluated (shapes are static); ``stats()["data/eval_rows_used"]`` says how many rows are.
"""

from __future__ import annotations

import glob
import logging
import math
import os
import re
from typing import Iterator, Sequence

import numpy as np

from dmt_jax.data import criteo, shards
from dmt_jax.features import Batch, FeatureSet


def _short(sizes) -> str:
  sizes = list(sizes)
  return f"({sizes[0]},) * {len(sizes)}" if len(set(sizes)) == 1 else str(tuple(sizes))


def _natural_key(path: str):
  return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path)]


def expand_paths(spec: str) -> list[str]:
  """``"a,b*"`` -> files: each comma-separated pattern's matches in natural order, duplicates removed."""
  out: list[str] = []
  for pattern in (p.strip() for p in str(spec).split(",") if p.strip()):
    pattern = os.path.expanduser(pattern)
    matches = sorted(glob.glob(pattern), key=_natural_key)
    if not matches:
      raise FileNotFoundError(f"config.data.path: {pattern!r} matches no file")
    out.extend(m for m in matches if m not in out)
  return out


def process_rows(rows: np.ndarray, process_index: int, num_processes: int) -> np.ndarray:
  """This process's contiguous share ``[p*B/P, (p+1)*B/P)`` of a global batch's rows ``[B]``."""
  B = len(rows)
  if B % num_processes:
    raise ValueError(f"global batch {B} is not divisible by the {num_processes} processes")
  per = B // num_processes
  return rows[process_index * per:(process_index + 1) * per]


class _Store:
  """Records of one input (a shard directory or raw files): ``gather(records int64 [n]) -> Batch``.

  ``input_offsets``: int [I+1], input ``i`` holds records ``[offsets[i], offsets[i+1])``;
  ``malformed``: malformed-line counts per reason; ``kind``: ``"shards"`` or ``"raw"``.
  """

  def __init__(self, path: str, vocab_sizes: Sequence[int], policy: str):
    path = os.path.expanduser(str(path))
    if not path:
      raise ValueError("config.data.path is empty; set it to a shard directory from "
                       "experiments/preprocess_criteo.py or to raw Criteo TSV file(s)")
    if os.path.isdir(path):
      if shards.read_manifest(path) is None:
        raise FileNotFoundError(f"{path} is a directory without {shards.MANIFEST}; preprocess it with "
                                f"experiments/preprocess_criteo.py or pass raw TSV files (a glob)")
      self.kind = "shards"
      self._reader = shards.ShardReader(path, batch_size=1, shuffle=False)
      manifest = self._reader.manifest
      self.vocab_sizes = list(manifest["vocab_sizes"])
      asked = [int(v) for v in (vocab_sizes or ())]
      asked = asked * criteo.NUM_CAT if len(asked) == 1 else asked
      # The ids were hashed at preprocessing time: the manifest's sizes are the only valid ones.
      self.overridden_vocab_sizes = asked if asked and asked != self.vocab_sizes else None
      if self.overridden_vocab_sizes:
        logging.warning("config.data.vocab_sizes %s is overridden by the shards' manifest %s (%s): ids "
                        "were hashed when preprocessing; re-run experiments/preprocess_criteo.py "
                        "--vocab_sizes=... to change them", _short(asked), _short(self.vocab_sizes), path)
      rows = [sum(s["rows"] for s in e["shards"]) for e in manifest["inputs"]]
      self.input_offsets = np.concatenate([[0], np.cumsum(rows, dtype=np.int64)])
      self.malformed = dict(manifest["totals"]["malformed"])
      self.lines = int(manifest["totals"]["lines"])
      self.policy = manifest["options"]["policy"]
      self.first_malformed = {}
      for e in manifest["inputs"]:
        for r, where in e["stats"].get("first_malformed", {}).items():
          self.first_malformed.setdefault(r, where)
    else:
      self.kind = "raw"
      sizes = [int(v) for v in vocab_sizes]
      if len(sizes) == 1:
        sizes = sizes * criteo.NUM_CAT
      if len(sizes) != criteo.NUM_CAT:
        raise ValueError(f"raw Criteo input needs config.data.vocab_sizes with {criteo.NUM_CAT} values "
                         f"(or one for all columns), got {len(sizes)}")
      encoder = criteo.HashEncoder(sizes)
      stats = criteo.ReadStats()
      labels, dense, ids, rows = [], [], [], []
      for f in expand_paths(path):
        before = stats.rows
        for ch in criteo.iter_chunks(f, policy, stats):
          labels.append(ch.labels)
          dense.append(ch.dense)
          ids.append(encoder.encode(ch.cat_values, ch.cat_present))
        rows.append(stats.rows - before)
      self.vocab_sizes = sizes
      self.overridden_vocab_sizes = None
      self.input_offsets = np.concatenate([[0], np.cumsum(rows, dtype=np.int64)])
      cat = lambda xs, shape, dt: np.concatenate(xs) if xs else np.zeros(shape, dt)  # noqa: E731
      self._labels = cat(labels, (0,), np.float32)
      self._dense = cat(dense, (0, criteo.NUM_DENSE), np.float32)
      self._ids = cat(ids, (0, criteo.NUM_CAT), np.int32)
      self.malformed = dict(stats.malformed)
      self.first_malformed = dict(stats.first_malformed)
      self.lines = stats.lines
      self.policy = policy
    self.path = path

  @property
  def num_records(self) -> int:
    return int(self.input_offsets[-1])

  def gather(self, records: np.ndarray) -> Batch:
    records = np.asarray(records, np.int64)
    if self.kind == "shards":
      return self._reader.gather(records)
    ids = self._ids[records]
    return Batch(self._dense[records], ids, np.ones(ids.shape, np.float32), self._labels[records])


class CriteoSource:
  """``DataSource`` over Criteo shards or raw TSV files (see the module docstring).

  Args:
    data_cfg: ``config.data`` (path, eval_path, eval_last_input, eval_fraction, shuffle, seed,
      vocab_sizes (raw only), malformed_policy (raw only), embedding_dim).
    global_batch, eval_batch: global batch sizes (multiples of ``num_processes``).
    num_eval_batches: eval batches per evaluation (``<= 0``: every full batch of the eval split).
    process_index, num_processes: this process's share of every global batch.
  """

  def __init__(self, data_cfg, global_batch: int, eval_batch: int, num_eval_batches: int,
               process_index: int = 0, num_processes: int = 1):
    for name, v in (("batch_size", global_batch), ("eval_batch_size", eval_batch)):
      if v <= 0 or v % num_processes:
        raise ValueError(f"config.{name}={v} must be a positive multiple of the {num_processes} processes")
    policy = data_cfg.malformed_policy
    if policy not in criteo.POLICIES:
      raise ValueError(f"config.data.malformed_policy must be one of {criteo.POLICIES}, got {policy!r}")
    self.store = _Store(data_cfg.path, data_cfg.vocab_sizes, policy)
    eval_path = str(data_cfg.get("eval_path", "") or "")
    last_input = bool(data_cfg.get("eval_last_input", False))
    n = self.store.num_records
    if eval_path:
      if last_input:
        raise ValueError("set either config.data.eval_path or config.data.eval_last_input, not both")
      self.eval_store = _Store(eval_path, data_cfg.vocab_sizes, policy)
      if self.eval_store.vocab_sizes != self.store.vocab_sizes:
        raise ValueError(f"eval data {eval_path} has vocab sizes {self.eval_store.vocab_sizes}, the train "
                         f"data {self.store.vocab_sizes}; preprocess both with the same options")
      self.train_range, self.eval_range = (0, n), (0, self.eval_store.num_records)
      self.split = f"eval_path={eval_path}"
    else:
      self.eval_store = self.store
      if last_input:
        if len(self.store.input_offsets) < 3:
          raise ValueError("config.data.eval_last_input needs at least two input files")
        cut = int(self.store.input_offsets[-2])
        self.split = "last input file"
      else:
        frac = float(data_cfg.get("eval_fraction", 0.1))
        if not 0.0 < frac < 1.0:
          raise ValueError(f"config.data.eval_fraction must be in (0, 1), got {frac}")
        cut = n - int(math.ceil(frac * n))
        self.split = f"last {frac:g} of the records"
      self.train_range, self.eval_range = (0, cut), (cut, n)
    self.num_train = self.train_range[1] - self.train_range[0]
    self.num_eval_records = self.eval_range[1] - self.eval_range[0]
    if self.num_train < 1:
      raise ValueError(f"the Criteo train split ({self.split}) is empty")
    full = self.num_eval_records // eval_batch
    if full < 1:
      raise ValueError(f"the Criteo eval split ({self.split}) has {self.num_eval_records} records, fewer "
                       f"than one eval batch of config.eval_batch_size={eval_batch}; lower it")
    self.num_eval = full if num_eval_batches <= 0 else min(int(num_eval_batches), full)
    self.fs: FeatureSet = criteo.criteo_feature_set(self.store.vocab_sizes, int(data_cfg.embedding_dim))
    self.global_batch, self.eval_batch = int(global_batch), int(eval_batch)
    self.p, self.P = int(process_index), int(num_processes)
    self.shuffle = bool(data_cfg.get("shuffle", True))
    self.seed = int(data_cfg.seed)

  # --- positions -------------------------------------------------------------------------
  def train_records(self, step: int) -> np.ndarray:
    """Record indices int64 [B/P] of this process's rows of global train batch ``step``."""
    B = self.global_batch
    q = process_rows(np.arange(step * B, (step + 1) * B, dtype=np.int64), self.p, self.P)
    epoch, pos = np.divmod(q, self.num_train)
    out = pos.copy()
    if self.shuffle:
      for e in np.unique(epoch):
        sel = epoch == e
        out[sel] = shards.permute(pos[sel], self.num_train, self.seed, int(e))
    return out + self.train_range[0]

  def train_batch(self, step: int) -> Batch:
    return self.store.gather(self.train_records(step))

  def eval_batches(self) -> Iterator[Batch]:
    lo = self.eval_range[0]
    for i in range(self.num_eval):
      rows = np.arange(lo + i * self.eval_batch, lo + (i + 1) * self.eval_batch, dtype=np.int64)
      yield self.eval_store.gather(process_rows(rows, self.p, self.P))

  def stats(self) -> dict:
    """Scalars for ``metrics.jsonl``: malformed-line counts (total and per reason) and split sizes."""
    mal = dict(self.store.malformed)
    if self.eval_store is not self.store:
      for r, k in self.eval_store.malformed.items():
        mal[r] = mal.get(r, 0) + k
    out = {"data/malformed_lines": int(sum(mal.values()))}
    out.update({f"data/malformed/{r}": int(k) for r, k in mal.items()})
    out.update({"data/train_records": self.num_train, "data/eval_records": self.num_eval_records,
                "data/eval_rows_used": self.num_eval * self.eval_batch,
                "data/config_vocab_sizes_overridden": int(self.store.overridden_vocab_sizes is not None)})
    return out
