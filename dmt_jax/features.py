"""Feature, table and batch types.

Sparse features are *jagged*: every sample has a variable number of ids per feature. We keep static
shapes by padding each feature to its own maximum bag length ``max_bag`` with ``-1`` and concatenating
all features along one *slot* axis:

    ids:     int32   [B, S]   S = sum_f max_bag_f, feature f occupies slots
                              [slot_offset_f, slot_offset_f + max_bag_f); -1 = padding
    weights: float32 [B, S]   per-id weight (1.0 for unweighted features, 0.0 at padding)

This is the keyed-jagged layout of TorchRec flattened to a dense array: one int array carries every
feature, so one collective serves all of them. Several features may share one table.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Sequence

import numpy as np

POOLINGS = ("sum", "mean")


@dataclasses.dataclass(frozen=True)
class TableSpec:
  """One embedding table: ``vocab_size`` rows of width ``dim``."""
  name: str
  vocab_size: int
  dim: int

  def __post_init__(self):
    if self.vocab_size <= 0:
      raise ValueError(f"table {self.name!r}: vocab_size must be > 0, got {self.vocab_size}")
    if self.dim <= 0:
      raise ValueError(f"table {self.name!r}: dim must be > 0, got {self.dim}")


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
  """One sparse feature looked up in ``table``; bags padded to ``max_bag`` ids."""
  name: str
  table: str
  max_bag: int = 1
  pooling: str = "sum"
  weighted: bool = False

  def __post_init__(self):
    if self.max_bag <= 0:
      raise ValueError(f"feature {self.name!r}: max_bag must be > 0, got {self.max_bag}")
    if self.pooling not in POOLINGS:
      raise ValueError(f"feature {self.name!r}: pooling must be one of {POOLINGS}, got {self.pooling!r}")


@dataclasses.dataclass(frozen=True)
class FeatureSet:
  """All sparse features and tables of a model plus the number of dense features."""
  tables: tuple[TableSpec, ...]
  features: tuple[FeatureSpec, ...]
  num_dense: int

  def __post_init__(self):
    names = [t.name for t in self.tables]
    if len(set(names)) != len(names):
      raise ValueError(f"duplicate table names: {names}")
    fnames = [f.name for f in self.features]
    if len(set(fnames)) != len(fnames):
      raise ValueError(f"duplicate feature names: {fnames}")
    for f in self.features:
      if f.table not in names:
        raise ValueError(f"feature {f.name!r} refers to unknown table {f.table!r}")
    if not self.features:
      raise ValueError("a FeatureSet needs at least one sparse feature")

  # --- lookups -----------------------------------------------------------------------------
  @property
  def num_features(self) -> int:
    return len(self.features)

  @property
  def num_slots(self) -> int:
    return int(sum(f.max_bag for f in self.features))

  @property
  def slot_offsets(self) -> np.ndarray:
    """int [F+1]: feature f occupies slots [offsets[f], offsets[f+1])."""
    return np.concatenate([[0], np.cumsum([f.max_bag for f in self.features])]).astype(np.int64)

  @property
  def slot_feature(self) -> np.ndarray:
    """int [S]: the feature index of every slot."""
    return np.repeat(np.arange(self.num_features), [f.max_bag for f in self.features])

  def table(self, name: str) -> TableSpec:
    for t in self.tables:
      if t.name == name:
        return t
    raise KeyError(name)

  def table_of(self, feature_index: int) -> TableSpec:
    return self.table(self.features[feature_index].table)

  def feature_index(self, name: str) -> int:
    for i, f in enumerate(self.features):
      if f.name == name:
        return i
    raise KeyError(f"unknown feature {name!r}")

  @property
  def dims(self) -> set[int]:
    return {t.dim for t in self.tables}

  def uniform_dim(self) -> int:
    """The common embedding dim; models that interact embeddings need all tables equal."""
    if len(self.dims) != 1:
      raise ValueError(f"all tables must share one dim for dot interaction, got {sorted(self.dims)}")
    return next(iter(self.dims))


def simple_feature_set(vocab_sizes: Sequence[int], dim: int, num_dense: int = 13,
                       max_bags: Sequence[int] | None = None, pooling: str = "sum",
                       weighted: bool = False) -> FeatureSet:
  """One table per feature, named ``t{i}`` / ``f{i}`` — the Criteo-style layout."""
  max_bags = list(max_bags) if max_bags is not None else [1] * len(vocab_sizes)
  if len(max_bags) != len(vocab_sizes):
    raise ValueError("max_bags and vocab_sizes differ in length")
  tables = tuple(TableSpec(f"t{i}", int(v), dim) for i, v in enumerate(vocab_sizes))
  feats = tuple(FeatureSpec(f"f{i}", f"t{i}", int(b), pooling, weighted)
                for i, b in enumerate(max_bags))
  return FeatureSet(tables, feats, num_dense)


class Batch(NamedTuple):
  """A batch (global or per-process), arrays of any kind (numpy or jax).

  dense:   float32 [B, num_dense]
  ids:     int32   [B, S]    -1 = padding
  weights: float32 [B, S]    0 at padding
  labels:  float32 [B]       0/1 click labels
  """
  dense: object
  ids: object
  weights: object
  labels: object

  @property
  def size(self) -> int:
    return int(self.labels.shape[0])


class BadInputError(ValueError):
  """Raised on the host for data that must not reach the device (bad ids, NaN features)."""


def validate_batch(fs: FeatureSet, batch: Batch, where: str = "batch") -> None:
  """Host-side checks on a numpy batch; raises ``BadInputError`` naming the feature.

  Ids must lie in ``[0, vocab)`` or be ``-1`` padding; dense features and weights must be finite;
  labels must be 0/1. Nothing is clipped or dropped here: bad data stops the run with a message.
  """
  ids = np.asarray(batch.ids)
  B = ids.shape[0]
  if ids.shape != (B, fs.num_slots):
    raise BadInputError(f"{where}: ids shape {ids.shape}, expected [B, {fs.num_slots}]")
  dense = np.asarray(batch.dense)
  if dense.shape != (B, fs.num_dense):
    raise BadInputError(f"{where}: dense shape {dense.shape}, expected [B, {fs.num_dense}]")
  if not np.all(np.isfinite(dense)):
    r, c = np.argwhere(~np.isfinite(dense))[0]
    raise BadInputError(f"{where}: non-finite dense feature {c} in row {r}: {dense[r, c]}")
  w = np.asarray(batch.weights)
  if not np.all(np.isfinite(w)):
    r, c = np.argwhere(~np.isfinite(w))[0]
    f = fs.features[fs.slot_feature[c]].name
    raise BadInputError(f"{where}: non-finite weight for feature {f!r} in row {r}")
  offs = fs.slot_offsets
  for i, f in enumerate(fs.features):
    block = ids[:, offs[i]:offs[i + 1]]
    vocab = fs.table(f.table).vocab_size
    bad = (block < -1) | (block >= vocab)
    if bad.any():
      r, c = np.argwhere(bad)[0]
      raise BadInputError(
          f"{where}: feature {f.name!r} (table {f.table!r}, vocab {vocab}) has id {block[r, c]} in "
          f"row {r}; ids must be in [0, {vocab}) or -1 for padding (negative and out-of-range ids "
          f"are rejected; hash or clip them explicitly with the data config)")
  labels = np.asarray(batch.labels)
  if not np.all((labels == 0) | (labels == 1)):
    raise BadInputError(f"{where}: labels must be 0/1, got {np.unique(labels)[:5]}")


def clip_or_hash_ids(fs: FeatureSet, ids: np.ndarray, policy: str) -> np.ndarray:
  """Explicit fix-up of out-of-range ids: ``hash`` (mod vocab) or ``clip``; ``error`` leaves them."""
  if policy == "error":
    return ids
  ids = np.array(ids, copy=True)
  offs = fs.slot_offsets
  for i, f in enumerate(fs.features):
    block = ids[:, offs[i]:offs[i + 1]]
    vocab = fs.table(f.table).vocab_size
    real = block != -1
    if policy == "hash":
      block[real] = np.mod(block[real], vocab)
    elif policy == "clip":
      block[real] = np.clip(block[real], 0, vocab - 1)
    else:
      raise ValueError(f"id policy must be 'error', 'hash' or 'clip', got {policy!r}")
    ids[:, offs[i]:offs[i + 1]] = block
  return ids
