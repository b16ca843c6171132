"""MovieLens-100K as a position-addressable data source (``config.data.source = "movielens"``).

Data, features and split are those of ``data/movielens.py``: the recbole wheel is read from
``config.data.path`` (a cache directory or the wheel itself; empty = ``~/.cache/dmt_jax``), 8 sparse
features (one table each, all of width ``config.data.embedding_dim``), 5 dense features, label =
rating >= 4, eval = the last ``floor(config.data.eval_fraction * n_u)`` ratings of every user by time.

Train stream (a pure function of the step, so resuming needs no data state): epochs of
``N_train // B`` global batches (the last ``N_train mod B`` rows of each epoch's order are not visited,
as in ``movielens.iterate_batches``); epoch ``e`` visits the train rows in the order
``default_rng(SeedSequence([config.data.seed, e])).permutation(N_train)`` (file order when
``config.data.shuffle`` is False). Global batch ``step`` is batch ``step mod (N_train // B)`` of epoch
``step div (N_train // B)``; process ``p`` of ``P`` takes its rows ``[p*B/P, (p+1)*B/P)``. Batch ``step``
equals the matching batch of ``movielens.iterate_batches``.

Eval: the eval split in file order, global batches of ``eval_batch_size``; ``num_eval_batches`` of them
(``<= 0``: all full batches); the remainder smaller than one batch is not evaluated.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from dmt_jax.data import movielens
from dmt_jax.data.criteo_source import process_rows
from dmt_jax.features import Batch, FeatureSet

DEFAULT_CACHE = "~/.cache/dmt_jax"


class MovieLensSource:
  """``DataSource`` over MovieLens-100K (see the module docstring).

  Args:
    data_cfg: ``config.data`` (path, eval_fraction, shuffle, seed, embedding_dim).
    global_batch, eval_batch: global batch sizes (multiples of ``num_processes``).
    num_eval_batches: eval batches per evaluation (``<= 0``: every full batch of the eval split).
    process_index, num_processes: this process's share of every global batch.
    data: an already loaded ``movielens.MovieLens`` (tests, studies); read from the wheel if None.
  """

  def __init__(self, data_cfg, global_batch: int, eval_batch: int, num_eval_batches: int,
               process_index: int = 0, num_processes: int = 1, data: movielens.MovieLens | None = None):
    for name, v in (("batch_size", global_batch), ("eval_batch_size", eval_batch)):
      if v <= 0 or v % num_processes:
        raise ValueError(f"config.{name}={v} must be a positive multiple of the {num_processes} processes")
    frac = float(data_cfg.get("eval_fraction", 0.2))
    if data is None:
      data = movielens.load_movielens(data_cfg.path or DEFAULT_CACHE, eval_fraction=frac)
    self.data = data
    self.fs: FeatureSet = movielens.movielens_feature_set(int(data_cfg.embedding_dim))
    self.global_batch, self.eval_batch = int(global_batch), int(eval_batch)
    self.p, self.P = int(process_index), int(num_processes)
    self.shuffle = bool(data_cfg.get("shuffle", True))
    self.seed = int(data_cfg.seed)
    self.num_train = data.train.size
    self.steps_per_epoch = self.num_train // self.global_batch
    if self.steps_per_epoch < 1:
      raise ValueError(f"MovieLens train split has {self.num_train} rows, fewer than one global batch "
                       f"of config.batch_size={global_batch}")
    full = data.eval.size // self.eval_batch
    if full < 1:
      raise ValueError(f"MovieLens eval split has {data.eval.size} rows, fewer than one eval batch of "
                       f"config.eval_batch_size={eval_batch}; lower it")
    self.num_eval = full if num_eval_batches <= 0 else min(int(num_eval_batches), full)
    self._order: tuple[int, np.ndarray] | None = None  # (epoch, permutation) cache

  def epoch_order(self, epoch: int) -> np.ndarray:
    """int [N_train]: the order in which epoch ``epoch`` visits the train rows."""
    if self._order is None or self._order[0] != epoch:
      n = self.num_train
      order = (np.random.default_rng(np.random.SeedSequence([self.seed, epoch])).permutation(n)
               if self.shuffle else np.arange(n))
      self._order = (epoch, order)
    return self._order[1]

  def train_rows(self, step: int) -> np.ndarray:
    """Train-split row indices int [B/P] of this process's share of global batch ``step``."""
    epoch, i = divmod(int(step), self.steps_per_epoch)
    B = self.global_batch
    return process_rows(self.epoch_order(epoch)[i * B:(i + 1) * B], self.p, self.P)

  def train_batch(self, step: int) -> Batch:
    rows = self.train_rows(step)
    return Batch(*(np.asarray(x)[rows] for x in self.data.train))

  def eval_rows(self) -> Iterator[np.ndarray]:
    """Eval-split row indices of this process's share of each eval batch."""
    for i in range(self.num_eval):
      yield process_rows(np.arange(i * self.eval_batch, (i + 1) * self.eval_batch), self.p, self.P)

  def eval_batches(self) -> Iterator[Batch]:
    for rows in self.eval_rows():
      yield Batch(*(np.asarray(x)[rows] for x in self.data.eval))

  def stats(self) -> dict:
    return {"data/train_records": self.num_train, "data/eval_records": self.data.eval.size,
            "data/eval_rows_used": self.num_eval * self.eval_batch}
