"""Preprocessed Criteo shards: writing (raw files -> .npy shards + manifest) and a per-process reader.

Layout of an output directory::

    manifest.json                 format, options, vocab sizes, per-input shards and counts, totals
    vocab.npz                     only for a frequency-threshold vocabulary (``CriteoVocab.save``)
    <input>-<k>.labels.npy        uint8   [n]
    <input>-<k>.dense.npy         float32 [n, 13]   log(1 + max(x, 0)), missing -> 0
    <input>-<k>.ids.npy           int32   [n, 26]   encoded categoricals

``<input>`` is the input file's base name (``day_0``, ``train.txt``). Records are numbered globally in
manifest order (inputs in the order given, shards in order, rows in order), which is exactly the order
``CriteoReader`` yields the same files in.

Reading (``ShardReader``): epoch ``e`` visits the ``N`` records in the order ``pi_e`` — a seeded
pseudo-random permutation of ``[0, N)`` (a keyed Feistel network with cycle walking, so it needs O(1)
memory even for billions of records), or the identity without shuffling. Process ``p`` of ``P`` takes
``pi_e(p), pi_e(p + P), pi_e(p + 2P), ...``: every record exactly once per epoch across processes.
Each process's stream runs through the epochs back to back and is cut into batches, so batches may span an
epoch boundary (as ``repeat().batch()`` does) and all batches have the same size. Shards are memory-mapped.
"""

from __future__ import annotations

import json
import os
from typing import Callable, Iterator, Sequence

import numpy as np

from dmt_jax.data import criteo
from dmt_jax.features import Batch, FeatureSet

FORMAT = 1
MANIFEST = "manifest.json"
VOCAB_FILE = "vocab.npz"
_PARTS = (("labels", np.uint8), ("dense", np.float32), ("ids", np.int32))


# --- writing -----------------------------------------------------------------------------
def shard_paths(directory, name: str) -> dict:
  return {part: os.path.join(directory, f"{name}.{part}.npy") for part, _ in _PARTS}


def _save_atomic(path: str, array: np.ndarray) -> None:
  tmp = path + ".tmp.npy"
  np.save(tmp, array)
  os.replace(tmp, path)


def read_manifest(directory) -> dict | None:
  path = os.path.join(directory, MANIFEST)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _write_manifest(directory, manifest: dict) -> None:
  inputs = manifest["inputs"]
  manifest["totals"] = {
      "rows": sum(i["stats"]["rows"] for i in inputs),
      "lines": sum(i["stats"]["lines"] for i in inputs),
      "malformed": {r: sum(i["stats"]["malformed"][r] for i in inputs) for r in criteo.REASONS},
  }
  tmp = os.path.join(directory, MANIFEST + ".tmp")
  with open(tmp, "w") as f:
    json.dump(manifest, f, indent=1)
  os.replace(tmp, os.path.join(directory, MANIFEST))


def _input_complete(directory, entry: dict) -> bool:
  for shard in entry["shards"]:
    for part, p in shard_paths(directory, shard["name"]).items():
      if not os.path.exists(p):
        return False
      if np.load(p, mmap_mode="r").shape[0] != shard["rows"]:
        return False
  return True


def write_shards(paths: Sequence, out_dir, encoder, policy: str = "fail", rows_per_shard: int = 1 << 20,
                 progress: Callable[[int], None] | None = None,
                 log: Callable[[str], None] | None = None, workers: int = 1) -> dict:
  """Converts raw Criteo files into shards under ``out_dir``; returns the manifest.

  Resumable per input: an input whose manifest entry exists and whose shards are all present with the
  recorded row counts is skipped; any other is (re)written. The manifest keeps its existing inputs in
  their order and appends new ones in the order given (that order is the record order). Options
  (encoder, policy, rows per shard) must match an existing manifest. ``progress(n)`` is called with the
  number of lines read since its previous call; ``log(message)`` once per input.

  ``workers > 1`` converts that many inputs at once in separate processes (parsing is CPU-bound, one
  core per input); the shards and the manifest are the same as with one worker, and the manifest is
  rewritten as each input completes, so an interrupted run resumes the same way. ``progress`` then
  advances once per finished input.
  """
  if rows_per_shard <= 0:
    raise ValueError(f"rows_per_shard must be > 0, got {rows_per_shard}")
  if workers < 1:
    raise ValueError(f"workers must be >= 1, got {workers}")
  os.makedirs(out_dir, exist_ok=True)
  names = [os.path.basename(os.fspath(p)) for p in paths]
  if len(set(names)) != len(names):
    raise ValueError(f"input base names must be unique (they name the shards): {names}")
  options = {"encoder": encoder.options(), "policy": policy, "rows_per_shard": int(rows_per_shard)}
  manifest = read_manifest(out_dir)
  if manifest is None:
    manifest = {"format": FORMAT, "num_dense": criteo.NUM_DENSE, "num_cat": criteo.NUM_CAT,
                "vocab_sizes": list(encoder.vocab_sizes), "options": options, "inputs": []}
  elif manifest["options"] != options:
    raise ValueError(f"{out_dir} holds shards written with options {manifest['options']}, not {options}; "
                     f"use a fresh output directory")
  order = [e["name"] for e in manifest["inputs"]]
  order += [n for n in names if n not in order]
  entries = {e["name"]: e for e in manifest["inputs"]}
  done = {n for n in names if n in entries and _input_complete(out_dir, entries[n])}
  todo = [(p, n) for p, n in zip(paths, names) if n not in done]
  for _, name in todo:
    entries.pop(name, None)           # incomplete: not listed until rewritten

  def skipped(name):
    if log:
      log(f"{name}: already done ({entries[name]['stats']['rows']} rows), skipped")

  def finished(entry):
    entries[entry["name"]] = entry
    manifest["inputs"] = [entries[n] for n in order if n in entries]
    _write_manifest(out_dir, manifest)  # after the shards: an entry means the input is complete
    if log:
      st = entry["stats"]
      log(f"{entry['name']}: {st['rows']} rows in {len(entry['shards'])} shards, malformed {st['malformed']}")

  if workers == 1 or len(todo) <= 1:
    for path, name in zip(paths, names):      # logs in input order
      if name in done:
        skipped(name)
      else:
        finished(convert_input(path, name, out_dir, encoder, policy, rows_per_shard, progress))
  else:
    for name in names:
      if name in done:
        skipped(name)
    import concurrent.futures
    import multiprocessing
    # "spawn": the parent may hold JAX / threads, which must not be forked.
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(min(workers, len(todo)), mp_context=ctx) as pool:
      futures = [pool.submit(convert_input, path, name, out_dir, encoder, policy, rows_per_shard)
                 for path, name in todo]
      for fut in concurrent.futures.as_completed(futures):
        entry = fut.result()          # a worker's error (e.g. a malformed line under "fail") re-raises here
        if progress:
          progress(entry["stats"]["lines"])
        finished(entry)
  manifest["inputs"] = [entries[n] for n in order if n in entries]
  _write_manifest(out_dir, manifest)
  return manifest


def convert_input(path, name: str, out_dir, encoder, policy: str, rows_per_shard: int,
                  progress: Callable[[int], None] | None = None) -> dict:
  """One raw input -> its shards ``{name}-00000...``; returns its manifest entry (not yet recorded)."""
  stats = criteo.ReadStats()
  written = []
  chunks = ((ch.labels, ch.dense, encoder.encode(ch.cat_values, ch.cat_present))
            for ch in criteo.iter_chunks(path, policy, stats))
  for rows in criteo.rebatch(_with_progress(chunks, stats, progress), rows_per_shard):
    sname = f"{name}-{len(written):05d}"
    for (part, dtype), arr in zip(_PARTS, rows):
      _save_atomic(shard_paths(out_dir, sname)[part], arr.astype(dtype))
    written.append({"name": sname, "rows": int(len(rows[0]))})
  return {"name": name, "source": os.path.abspath(os.fspath(path)), "shards": written,
          "stats": stats.as_dict()}


def _with_progress(chunks, stats, progress):
  """Passes chunks through, reporting the lines read since the previous chunk."""
  last = 0
  for ch in chunks:
    if progress:
      progress(stats.lines - last)
    last = stats.lines
    yield ch
  if progress:
    progress(stats.lines - last)


# --- Feistel permutation -----------------------------------------------------------------
def _mix(x: np.ndarray, key: np.uint64) -> np.ndarray:
  with np.errstate(over="ignore"):
    return criteo.splitmix64(x * np.uint64(0x9E3779B97F4A7C15) + key)


def permute(indices: np.ndarray, n: int, seed: int, epoch: int, rounds: int = 6) -> np.ndarray:
  """A bijection of ``[0, n)`` keyed by ``(seed, epoch)``, applied to ``indices`` (int64 [m])."""
  idx = np.asarray(indices, np.uint64)
  if n <= 1:
    return idx.astype(np.int64)
  bits = max(2, int(np.ceil(np.log2(n))))
  bits += bits % 2
  half = bits // 2
  mask = np.uint64((1 << half) - 1)
  keys = np.random.SeedSequence([seed, epoch]).generate_state(rounds, np.uint64)
  out = idx.copy()
  todo = np.ones(len(out), bool)
  while todo.any():  # cycle walking: re-apply until inside [0, n); domain < 4n so few rounds
    x = out[todo]
    left, right = x >> np.uint64(half), x & mask
    for key in keys:
      left, right = right, left ^ (_mix(right, key) & mask)
    x = (left << np.uint64(half)) | right
    out[todo] = x
    todo = out >= np.uint64(n)
  return out.astype(np.int64)


# --- reading -----------------------------------------------------------------------------
class ShardReader:
  """Yields this process's ``Batch``es from a shard directory (see the module docstring).

  Args:
    directory: written by ``write_shards``.
    batch_size: rows per batch of this process.
    process_index, num_processes: this process's share (strided over the epoch order).
    shuffle, seed: per-epoch permutation seeded by ``(seed, epoch)``; identity when ``shuffle`` is False.
    num_epochs: ``None`` for an endless stream; else the stream stops after that many epochs and the
      last partial batch is yielded unless ``drop_remainder``.
  ``state()`` gives the position as a dict of ints; ``restore(state)`` continues from it identically.
  """

  def __init__(self, directory, batch_size: int, process_index: int = 0, num_processes: int = 1,
               shuffle: bool = True, seed: int = 0, num_epochs: int | None = None,
               drop_remainder: bool = False):
    manifest = read_manifest(directory)
    if manifest is None:
      raise FileNotFoundError(f"no {MANIFEST} in {directory}; run experiments/preprocess_criteo.py first")
    if manifest.get("format") != FORMAT:
      raise ValueError(f"{directory}: shard format {manifest.get('format')}, this reader reads {FORMAT}")
    if not 0 <= process_index < num_processes:
      raise ValueError(f"process_index {process_index} not in [0, {num_processes})")
    if batch_size <= 0:
      raise ValueError(f"batch_size must be > 0, got {batch_size}")
    self.manifest = manifest
    self.batch_size = int(batch_size)
    self.process_index, self.num_processes = int(process_index), int(num_processes)
    self.shuffle, self.seed = bool(shuffle), int(seed)
    self.num_epochs, self.drop_remainder = num_epochs, drop_remainder
    self._arrays = []  # per shard: (labels, dense, ids) memory maps
    rows = []
    for entry in manifest["inputs"]:
      for shard in entry["shards"]:
        p = shard_paths(directory, shard["name"])
        self._arrays.append(tuple(np.load(p[part], mmap_mode="r") for part, _ in _PARTS))
        rows.append(shard["rows"])
    self._offsets = np.concatenate([[0], np.cumsum(rows, dtype=np.int64)])
    self.num_records = int(self._offsets[-1])
    if self.num_records < self.num_processes:
      raise ValueError(f"{self.num_records} records cannot be shared by {self.num_processes} processes")
    # records of this process per epoch: indices p, p+P, ... < N
    self.records_per_epoch = len(range(self.process_index, self.num_records, self.num_processes))
    self._epoch, self._offset = 0, 0

  @property
  def vocab_sizes(self) -> list[int]:
    return list(self.manifest["vocab_sizes"])

  def feature_set(self, dim: int) -> FeatureSet:
    return criteo.criteo_feature_set(self.vocab_sizes, dim)

  # --- position ------------------------------------------------------------------------
  def state(self) -> dict:
    """The position of the next record, plus what it is only valid with."""
    return {"epoch": self._epoch, "offset": self._offset, "seed": self.seed, "shuffle": int(self.shuffle),
            "process_index": self.process_index, "num_processes": self.num_processes,
            "num_records": self.num_records}

  def restore(self, state: dict) -> None:
    mine = self.state()
    for k in ("seed", "shuffle", "process_index", "num_processes", "num_records"):
      if int(state[k]) != mine[k]:
        raise ValueError(f"cannot restore reader state: {k} is {state[k]} in the state, {mine[k]} here")
    if not 0 <= int(state["offset"]) < self.records_per_epoch:
      raise ValueError(f"offset {state['offset']} outside [0, {self.records_per_epoch})")
    self._epoch, self._offset = int(state["epoch"]), int(state["offset"])

  # --- data ----------------------------------------------------------------------------
  def records(self, epoch: int, start: int, stop: int) -> np.ndarray:
    """Global record indices int64 [stop - start] at positions ``[start, stop)`` of this process's epoch."""
    pos = np.arange(start, stop, dtype=np.int64) * self.num_processes + self.process_index
    return permute(pos, self.num_records, self.seed, epoch) if self.shuffle else pos

  def gather(self, records: np.ndarray) -> Batch:
    """The ``Batch`` of the given global record indices, in that order."""
    n = len(records)
    labels = np.empty(n, np.float32)
    dense = np.empty((n, criteo.NUM_DENSE), np.float32)
    ids = np.empty((n, criteo.NUM_CAT), np.int32)
    shard = np.searchsorted(self._offsets, records, side="right") - 1
    for s in np.unique(shard):
      sel = shard == s
      rows = records[sel] - self._offsets[s]
      lab, den, idx = self._arrays[s]
      labels[sel], dense[sel], ids[sel] = lab[rows], den[rows], idx[rows]
    return Batch(dense, ids, np.ones(ids.shape, np.float32), labels)

  def __iter__(self) -> Iterator[Batch]:
    return self

  def __next__(self) -> Batch:
    parts = []
    need = self.batch_size
    while need:
      if self.num_epochs is not None and self._epoch >= self.num_epochs:
        break
      take = min(need, self.records_per_epoch - self._offset)
      parts.append(self.records(self._epoch, self._offset, self._offset + take))
      need -= take
      self._offset += take
      if self._offset == self.records_per_epoch:
        self._epoch, self._offset = self._epoch + 1, 0
    got = self.batch_size - need
    if got == 0 or (need and self.drop_remainder):
      raise StopIteration
    return self.gather(np.concatenate(parts))
