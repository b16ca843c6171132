"""Streaming reader for Criteo click logs (Kaggle ``train.txt``, Terabyte ``day_N``), plain or gzip.

Line format: ``label \\t I1..I13 \\t C1..C26`` — 40 tab-separated fields; label ``0``/``1``; ``I`` decimal
integers; ``C`` hexadecimal strings (8 digits in the public data, up to 16 accepted); any field but the
label may be empty (missing). Files are read line by line (gzip detected by its magic bytes
``1f 8b``, not by the name); nothing is loaded whole.

Conventions (those of the DLRM reference):

* dense: missing -> 0; negative values clamped to 0; then ``log(1 + x)``; float32 ``[N, 13]``.
* categoricals, two ways to get ids (``int32 [N, 26]``, one ``max_bag=1`` feature per column):
  - ``HashEncoder(vocab_sizes)``: missing -> id 0; a present value ``v`` (the hex parsed as uint64)
    -> ``1 + h(v, c) mod (vocab_c - 1)`` with ``h`` = the splitmix64 finaliser of
    ``v + (c + 1) * 0x9E3779B97F4A7C15`` (``c`` = column 0..25). Pure integer arithmetic, so ids are
    the same on every machine and run (Python's salted ``hash()`` is never used). ``method="mod"``
    uses ``1 + v mod (vocab_c - 1)`` instead.
  - ``CriteoVocab`` from ``build_vocab(paths, threshold)`` (one pass): per column the values seen at
    least ``threshold`` times, sorted; missing -> 0, rare or unseen -> 1, the ``k``-th kept value
    -> ``2 + k``.
    Saved and loaded as ``.npz``.

Malformed lines (``REASONS``: wrong field count, label not 0/1, non-integer ``I`` field, bad hex ``C``
field) follow ``policy``: ``"fail"`` raises ``MalformedLineError`` naming ``file:line`` and the reason;
``"skip"`` skips the line. Either way ``ReadStats`` counts lines, rows and malformed lines per reason
(with the first ``file:line`` of each), so nothing is dropped silently.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import re
import zlib
from typing import BinaryIO, Iterable, Iterator, NamedTuple, Sequence

import numpy as np

from dmt_jax.features import Batch, FeatureSet, simple_feature_set

NUM_DENSE = 13
NUM_CAT = 26
NUM_FIELDS = 1 + NUM_DENSE + NUM_CAT
POLICIES = ("fail", "skip")
REASONS = ("field_count", "bad_label", "bad_int", "bad_hex")
MISSING_ID = 0  # id of a missing categorical under both encoders
OOV_ID = 1  # CriteoVocab: id of a rare or unseen value

_GOOD_LINE = re.compile(rb"[01](?:\t(?:-?[0-9]+)?){%d}(?:\t[0-9a-fA-F]{0,16}){%d}\Z" % (NUM_DENSE, NUM_CAT))
_INT = re.compile(rb"(?:-?[0-9]+)?\Z")
_HEX = re.compile(rb"[0-9a-fA-F]{0,16}\Z")


class MalformedLineError(ValueError):
  """A malformed line under ``policy="fail"``; the message starts with ``file:line``."""


@dataclasses.dataclass
class ReadStats:
  """Counts of one read: ``lines`` = ``rows`` + sum of ``malformed``.

  ``first_malformed[reason]`` is the ``file:line`` of the first line skipped for that reason.
  """
  lines: int = 0
  rows: int = 0
  malformed: dict = dataclasses.field(default_factory=lambda: {r: 0 for r in REASONS})
  first_malformed: dict = dataclasses.field(default_factory=dict)

  def merge(self, other: "ReadStats") -> None:
    self.lines += other.lines
    self.rows += other.rows
    for r in REASONS:
      self.malformed[r] += other.malformed[r]
      if r in other.first_malformed and r not in self.first_malformed:
        self.first_malformed[r] = other.first_malformed[r]

  def as_dict(self) -> dict:
    return {"lines": self.lines, "rows": self.rows, "malformed": dict(self.malformed),
            "first_malformed": dict(self.first_malformed)}


class RawChunk(NamedTuple):
  """Parsed rows of one file.

  labels f32 [n], dense f32 [n, 13], cat_values u64 [n, 26] (0 where missing), cat_present bool [n, 26].
  """
  labels: np.ndarray
  dense: np.ndarray
  cat_values: np.ndarray
  cat_present: np.ndarray


def open_maybe_gzip(path) -> BinaryIO:
  """Opens ``path`` for binary line reading, through gzip if it starts with the gzip magic bytes."""
  with open(path, "rb") as f:
    magic = f.read(2)
  return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


def _diagnose(fields: list[bytes]) -> tuple[str, str]:
  """(reason, detail) of a line that failed the fast well-formedness check."""
  if len(fields) != NUM_FIELDS:
    return "field_count", f"{len(fields)} tab-separated fields, expected {NUM_FIELDS}"
  if fields[0] not in (b"0", b"1"):
    return "bad_label", f"label {fields[0][:20]!r} is not 0 or 1"
  for j in range(NUM_DENSE):
    if not _INT.match(fields[1 + j]):
      return "bad_int", f"integer feature I{j + 1} = {fields[1 + j][:20]!r}"
  for j in range(NUM_CAT):
    if not _HEX.match(fields[1 + NUM_DENSE + j]):
      return "bad_hex", f"categorical C{j + 1} = {fields[1 + NUM_DENSE + j][:20]!r} is not hex (<= 16 digits)"
  return "field_count", "unrecognised line"  # not reached for lines the fast check rejects


def iter_chunks(path, policy: str = "fail", stats: ReadStats | None = None,
                chunk_rows: int = 65536) -> Iterator[RawChunk]:
  """Parses one file into ``RawChunk``s of at most ``chunk_rows`` rows, updating ``stats``."""
  if policy not in POLICIES:
    raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
  stats = stats if stats is not None else ReadStats()
  name = os.fspath(path)
  labels: list[float] = []
  ints: list[int] = []
  cats: list[int] = []  # -1 marks a missing value (stored as value 0, present False)
  lineno = 0
  with open_maybe_gzip(path) as f:
    lines = enumerate(f, 1)
    while True:
      try:
        lineno, line = next(lines)
      except StopIteration:
        break
      except (EOFError, OSError, zlib.error) as e:  # truncated or corrupt gzip stream
        raise OSError(f"{name}: cannot read past line {lineno}: {e}") from e
      stats.lines += 1
      line = line.rstrip(b"\r\n")
      if _GOOD_LINE.match(line):
        fields = line.split(b"\t")
        labels.append(1.0 if fields[0] == b"1" else 0.0)
        ints.extend(int(x) if x else 0 for x in fields[1:1 + NUM_DENSE])
        cats.extend(int(x, 16) if x else -1 for x in fields[1 + NUM_DENSE:])
        if len(labels) >= chunk_rows:
          stats.rows += len(labels)
          yield _make_chunk(labels, ints, cats)
          labels, ints, cats = [], [], []
        continue
      reason, detail = _diagnose(line.split(b"\t"))
      if policy == "fail":
        raise MalformedLineError(f"{name}:{lineno}: {reason}: {detail}")
      stats.malformed[reason] += 1
      stats.first_malformed.setdefault(reason, f"{name}:{lineno}")
  if labels:
    stats.rows += len(labels)
    yield _make_chunk(labels, ints, cats)


def _make_chunk(labels, ints, cats) -> RawChunk:
  n = len(labels)
  dense = np.asarray(ints, np.float64).reshape(n, NUM_DENSE)
  dense = np.log1p(np.maximum(dense, 0.0)).astype(np.float32)
  # Values above 2**63 do not fit int64; go through an object array only when they occur.
  try:
    raw = np.asarray(cats, np.int64).reshape(n, NUM_CAT)
    present = raw >= 0
    vals = np.where(present, raw, 0).astype(np.uint64)
  except OverflowError:
    present = np.asarray([c >= 0 for c in cats], bool).reshape(n, NUM_CAT)
    vals = np.asarray([c if c >= 0 else 0 for c in cats], np.uint64).reshape(n, NUM_CAT)
  return RawChunk(np.asarray(labels, np.float32), dense, vals, present)


# --- categorical encoders ------------------------------------------------------------------
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def splitmix64(x: np.ndarray) -> np.ndarray:
  """The splitmix64 finaliser, uint64 -> uint64 elementwise (wrapping arithmetic)."""
  z = np.asarray(x, np.uint64)
  with np.errstate(over="ignore"):
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
  return z ^ (z >> np.uint64(31))


class HashEncoder:
  """Hashes categorical values into per-column vocabularies (see the module docstring)."""

  def __init__(self, vocab_sizes: Sequence[int], method: str = "splitmix64"):
    if len(vocab_sizes) != NUM_CAT:
      raise ValueError(f"need {NUM_CAT} vocab sizes, got {len(vocab_sizes)}")
    if any(int(v) < 1 for v in vocab_sizes):
      raise ValueError(f"vocab sizes must be >= 1, got {list(vocab_sizes)}")
    if method not in ("splitmix64", "mod"):
      raise ValueError(f"hash method must be 'splitmix64' or 'mod', got {method!r}")
    self.vocab_sizes = [int(v) for v in vocab_sizes]
    self.method = method

  def encode(self, values: np.ndarray, present: np.ndarray) -> np.ndarray:
    """uint64 values [n, 26] and bool present [n, 26] -> int32 ids [n, 26]."""
    v = np.asarray(values, np.uint64)
    if self.method == "splitmix64":
      with np.errstate(over="ignore"):
        salt = (np.arange(1, NUM_CAT + 1, dtype=np.uint64) * _GOLDEN)[None, :]
        v = splitmix64(v + salt)
    buckets = np.maximum(np.asarray(self.vocab_sizes, np.uint64) - np.uint64(1), np.uint64(1))
    ids = (v % buckets[None, :]).astype(np.int64) + 1
    ids = np.where(np.asarray(self.vocab_sizes)[None, :] == 1, 0, ids)
    return np.where(present, ids, MISSING_ID).astype(np.int32)

  def options(self) -> dict:
    return {"kind": "hash", "method": self.method, "vocab_sizes": self.vocab_sizes}


class CriteoVocab:
  """Frequency-threshold vocabulary: ``values[c]`` = sorted uint64 values kept for column ``c``."""

  def __init__(self, values: Sequence[np.ndarray], threshold: int):
    if len(values) != NUM_CAT:
      raise ValueError(f"need {NUM_CAT} value arrays, got {len(values)}")
    self.values = [np.unique(np.asarray(v, np.uint64)) for v in values]
    self.threshold = int(threshold)

  @property
  def vocab_sizes(self) -> list[int]:
    return [len(v) + 2 for v in self.values]

  def encode(self, values: np.ndarray, present: np.ndarray) -> np.ndarray:
    """uint64 values [n, 26] and bool present [n, 26] -> int32 ids [n, 26] (0 missing, 1 rare)."""
    values = np.asarray(values, np.uint64)
    ids = np.empty(values.shape, np.int32)
    for c, kept in enumerate(self.values):
      col = values[:, c]
      pos = np.searchsorted(kept, col)
      hit = pos < len(kept)
      hit[hit] = kept[pos[hit]] == col[hit]
      ids[:, c] = np.where(hit, pos + 2, OOV_ID)
    return np.where(present, ids, MISSING_ID).astype(np.int32)

  def save(self, path) -> None:
    np.savez(path, threshold=np.int64(self.threshold), **{f"C{c + 1}": v for c, v in enumerate(self.values)})

  @classmethod
  def load(cls, path) -> "CriteoVocab":
    with np.load(path) as z:
      return cls([z[f"C{c + 1}"] for c in range(NUM_CAT)], int(z["threshold"]))

  def options(self) -> dict:
    return {"kind": "vocab", "threshold": self.threshold, "vocab_sizes": self.vocab_sizes}


def build_vocab(paths: Iterable, threshold: int, policy: str = "fail",
                stats: ReadStats | None = None) -> CriteoVocab:
  """One pass over ``paths``: keeps per column the values occurring ``>= threshold`` times."""
  if threshold < 1:
    raise ValueError(f"threshold must be >= 1, got {threshold}")
  counts: list[dict] = [{} for _ in range(NUM_CAT)]
  for path in paths:
    for chunk in iter_chunks(path, policy, stats):
      for c in range(NUM_CAT):
        u, n = np.unique(chunk.cat_values[chunk.cat_present[:, c], c], return_counts=True)
        d = counts[c]
        for val, k in zip(u.tolist(), n.tolist()):
          d[val] = d.get(val, 0) + k
  kept = [np.array(sorted(v for v, k in d.items() if k >= threshold), np.uint64) for d in counts]
  return CriteoVocab(kept, threshold)


# --- batches ------------------------------------------------------------------------------
def criteo_feature_set(vocab_sizes: Sequence[int], dim: int) -> FeatureSet:
  """26 one-id features ``f0..f25`` on tables ``t0..t25`` plus 13 dense features."""
  return simple_feature_set(vocab_sizes, dim, num_dense=NUM_DENSE)


def rebatch(chunks: Iterable[tuple], batch_size: int, drop_remainder: bool = False) -> Iterator[tuple]:
  """Re-cuts a stream of array tuples (equal leading dims) into tuples of exactly ``batch_size`` rows.

  The final partial tuple is yielded unless ``drop_remainder``.
  """
  if batch_size <= 0:
    raise ValueError(f"batch_size must be > 0, got {batch_size}")
  pending: list[tuple] = []
  have = 0
  for chunk in chunks:
    pending.append(chunk)
    have += len(chunk[0])
    if have < batch_size:
      continue
    cat = [np.concatenate(x) for x in zip(*pending)]
    start = 0
    while have - start >= batch_size:
      yield tuple(x[start:start + batch_size] for x in cat)
      start += batch_size
    pending = [tuple(x[start:] for x in cat)] if start < have else []
    have -= start
  if have and not drop_remainder:
    yield tuple(np.concatenate(x) for x in zip(*pending))


class CriteoReader:
  """Streams ``Batch``es from Criteo files in the given order (batches span file boundaries).

  Args:
    paths: files, read in order; plain or gzip.
    batch_size: rows per batch; the last batch may be smaller unless ``drop_remainder``.
    encoder: a ``HashEncoder`` or a ``CriteoVocab``.
    policy: ``"fail"`` or ``"skip"`` for malformed lines.
  After (or during) iteration ``stats`` holds the counts; ``dropped_remainder`` the rows not yielded.
  """

  def __init__(self, paths: Sequence, batch_size: int, encoder, policy: str = "fail",
               drop_remainder: bool = False, chunk_rows: int = 65536):
    if policy not in POLICIES:
      raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    self.paths = [os.fspath(p) for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths)]
    self.batch_size = int(batch_size)
    self.encoder = encoder
    self.policy = policy
    self.drop_remainder = drop_remainder
    self.chunk_rows = chunk_rows
    self.stats = ReadStats()
    self.dropped_remainder = 0

  @property
  def vocab_sizes(self) -> list[int]:
    return list(self.encoder.vocab_sizes)

  def feature_set(self, dim: int) -> FeatureSet:
    return criteo_feature_set(self.vocab_sizes, dim)

  def _encoded(self) -> Iterator[tuple]:
    for path in self.paths:
      for ch in iter_chunks(path, self.policy, self.stats, self.chunk_rows):
        yield ch.dense, self.encoder.encode(ch.cat_values, ch.cat_present), ch.labels

  def __iter__(self) -> Iterator[Batch]:
    self.stats = ReadStats()
    self.dropped_remainder = 0
    yielded = 0
    for dense, ids, labels in rebatch(self._encoded(), self.batch_size, self.drop_remainder):
      yielded += len(labels)
      yield Batch(dense, ids, np.ones(ids.shape, np.float32), labels)
    self.dropped_remainder = self.stats.rows - yielded
