"""Input pipeline per process: the config's dataset as process-local numpy batches.

Every process produces only its own contiguous share of each global batch (rows
``[p*B/P, (p+1)*B/P)``), which ``jax.make_array_from_process_local_data`` assembles into global arrays
whose batch dim is sharded over all mesh axes. A source is a position-addressable stream: batch ``step``
of the training stream is a pure function of (config, step), so resuming at step s needs no other state.
"""

from __future__ import annotations

from typing import Iterator, Protocol

from dmt_jax.data.synthetic import SyntheticClickData
from dmt_jax.features import Batch, FeatureSet, clip_or_hash_ids, simple_feature_set, validate_batch

SOURCES = ("synthetic", "criteo", "movielens")


class DataSource(Protocol):
  fs: FeatureSet

  def train_batch(self, step: int) -> Batch: ...

  def eval_batches(self) -> Iterator[Batch]: ...


class SyntheticSource:
  """The planted-interaction synthetic stream (``data/synthetic.py``)."""

  def __init__(self, data_cfg, global_batch: int, eval_batch: int, num_eval_batches: int,
               process_index: int, num_processes: int):
    fs = simple_feature_set(list(data_cfg.vocab_sizes), int(data_cfg.embedding_dim),
                            num_dense=int(data_cfg.num_dense), max_bags=list(data_cfg.max_bags) or None,
                            pooling=data_cfg.pooling)
    self.fs = fs
    self.gen = SyntheticClickData(fs, seed=int(data_cfg.seed),
                                  num_planted_groups=int(data_cfg.num_planted_groups) or None)
    self.global_batch, self.eval_batch, self.num_eval = global_batch, eval_batch, num_eval_batches
    self.p, self.P = process_index, num_processes

  @property
  def planted_groups(self) -> list[list[int]]:
    return self.gen.planted_groups

  def train_batch(self, step: int) -> Batch:
    return self.gen.batch(step, self.global_batch, "train", self.p, self.P)

  def eval_batches(self) -> Iterator[Batch]:
    for i in range(self.num_eval):
      yield self.gen.batch(i, self.eval_batch, "eval", self.p, self.P)


def make_source(config, process_index: int = 0, num_processes: int = 1) -> DataSource:
  """Builds the data source named by ``config.data.source``."""
  src = config.data.source
  args = (config.batch_size, config.eval_batch_size, config.num_eval_batches, process_index, num_processes)
  if src == "synthetic":
    return SyntheticSource(config.data, *args)
  if src == "criteo":
    from dmt_jax.data.criteo_source import CriteoSource
    return CriteoSource(config.data, *args)
  if src == "movielens":
    from dmt_jax.data.movielens_source import MovieLensSource
    return MovieLensSource(config.data, *args)
  raise ValueError(f"config.data.source must be one of {SOURCES}, got {src!r}")


def checked(fs: FeatureSet, batch: Batch, id_policy: str, where: str) -> Batch:
  """Applies the explicit id policy (error / hash / clip) and the host-side validation."""
  if id_policy != "error":
    batch = batch._replace(ids=clip_or_hash_ids(fs, batch.ids, id_policy))
  validate_batch(fs, batch, where)
  return batch


class Prefetcher:
  """Computes ``make(step)`` for the next ``depth`` steps on a background thread, in step order.

  Because a training batch is a pure function of its step, prefetching changes no result: it only
  overlaps host-side batch making (generation, reading, validation) with the device step. An exception
  raised by ``make(s)`` is re-raised by ``get(s)``, i.e. at the step it belongs to. Use as a context
  manager so pending work is dropped when the loop ends early.
  """

  def __init__(self, make, start: int, stop: int, depth: int = 1):
    import concurrent.futures
    self._make, self._stop, self._depth = make, int(stop), max(0, int(depth))
    self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch")
    self._pending: dict[int, object] = {}
    self._next = int(start)

  def _fill(self, upto: int) -> None:
    while self._next <= upto and self._next < self._stop:
      self._pending[self._next] = self._pool.submit(self._make, self._next)
      self._next += 1

  def get(self, step: int):
    """The result of ``make(step)``; steps must be requested in increasing order."""
    if step not in self._pending:
      if step < self._next:
        raise ValueError(f"step {step} was already taken or skipped (next is {self._next})")
      self._next = step                      # jumped ahead: nothing older is needed
      for s in [s for s in self._pending if s < step]:
        self._pending.pop(s).cancel()
      self._fill(step)
    fut = self._pending.pop(step)
    self._fill(step + self._depth)           # start the next batches before waiting on this one
    return fut.result()

  def close(self) -> None:
    for fut in self._pending.values():
      fut.cancel()
    self._pending.clear()
    self._pool.shutdown(wait=True, cancel_futures=True)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
