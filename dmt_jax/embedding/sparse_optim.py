"""Row-sparse embedding optimizers applied on the owning shard.

The update gets the rows a device *received* in this step's lookup (``[n]`` local row indices, with a
sentinel ``R_local`` for empty slots) and their gradients ``[n, W]``. Duplicate rows are merged first
(``dedupe_rows`` + ``segment_sum``) so the result equals a dense optimizer step on the dense table gradient;
only those rows are read and written, so the cost is O(rows touched), never O(table). Rows not touched
stay bit-identical (also for Adagrad, whose dense step on a zero gradient is exactly zero).

Optimizers (``lr`` learning rate, ``eps`` for numerical safety, ``G`` accumulator):
  sgd:              w -= lr * g
  adagrad:          G += g*g (per element);      w -= lr * g / sqrt(G + eps)
  rowwise_adagrad:  G += mean(g*g) (per row);    w -= lr * g / sqrt(G + eps)
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

OPTIMIZERS = ("sgd", "adagrad", "rowwise_adagrad")


@dataclasses.dataclass(frozen=True)
class SparseOptimizer:
  name: str = "adagrad"
  learning_rate: float = 0.1
  initial_accumulator: float = 0.0
  eps: float = 1e-8

  def __post_init__(self):
    if self.name not in OPTIMIZERS:
      raise ValueError(f"embedding optimizer must be one of {OPTIMIZERS}, got {self.name!r}")
    if self.learning_rate <= 0:
      raise ValueError(f"embedding learning rate must be > 0, got {self.learning_rate}")

  def init_state(self, block_shape, dtype=jnp.float32):
    """State for one block ``[..., R_local, W]``: () for SGD, an accumulator otherwise."""
    if self.name == "sgd":
      return ()
    shape = block_shape if self.name == "adagrad" else block_shape[:-1]
    return jnp.full(shape, self.initial_accumulator, dtype)

  def apply(self, block, state, rows, grads):
    """One update of one device's block.

    Args:
      block: float [R_local, W].
      state: optimizer state for the block (see ``init_state``).
      rows: int32 [n] local rows, ``R_local`` (out of range) for empty slots.
      grads: float [n, W] gradient of each received row (zeros for empty slots).
    Returns:
      (new_block, new_state).
    """
    R = block.shape[0]
    n = rows.shape[0]
    uniq, inv = dedupe_rows(rows, R)
    g = jax.ops.segment_sum(grads, inv, num_segments=n)
    if self.name == "sgd":
      return block.at[uniq].add(-self.learning_rate * g, mode="drop"), state
    if self.name == "adagrad":
      acc = state.at[uniq].get(mode="fill", fill_value=0) + g * g
      step = g * jax.lax.rsqrt(acc + self.eps)
    else:
      acc = state.at[uniq].get(mode="fill", fill_value=0) + jnp.mean(g * g, axis=-1)
      step = g * jax.lax.rsqrt(acc + self.eps)[:, None]
    block = block.at[uniq].add(-self.learning_rate * step, mode="drop")
    return block, state.at[uniq].set(acc, mode="drop")


def dedupe_rows(rows, fill):
  """``jnp.unique(rows, size=n, fill_value=fill, return_inverse=True)``, with one single-key sort.

  Args:
    rows: int [n] row indices (any order, duplicates allowed).
    fill: value of the unused tail of ``uniq``.
  Returns:
    uniq: int [n], the distinct values of ``rows`` ascending, then ``fill``.
    inv: int32 [n], ``uniq[inv[i]] == rows[i]``.

  ``jnp.unique`` sorts ``(rows, iota)`` pairs to get the inverse; a key-value sort with a comparator is
  ~6x slower on XLA:CPU than sorting the keys alone (3.1 vs 0.5 ms at n = 16384). Here the keys are sorted
  alone, run starts give each sorted element its segment id, and each original element finds its run
  by binary search in the sorted keys (log2(n) vectorised steps): 0.9 ms in all, identical output.
  """
  n = rows.shape[0]
  srt = jax.lax.sort(rows)
  start = jnp.concatenate([jnp.ones((1,), bool), srt[1:] != srt[:-1]])
  seg = jnp.cumsum(start.astype(jnp.int32)) - 1                 # segment id of each sorted element
  uniq = jnp.full((n,), fill, rows.dtype).at[seg].set(srt)       # duplicates write the same value
  return uniq, seg[jnp.searchsorted(srt, rows, side="left")]


def dense_reference_step(opt: SparseOptimizer, table, state, dense_grad):
  """The same optimizer on a dense ``[V, D]`` gradient (the reference the sparse path must equal)."""
  if opt.name == "sgd":
    return table - opt.learning_rate * dense_grad, state
  if opt.name == "adagrad":
    acc = state + dense_grad * dense_grad
    return table - opt.learning_rate * dense_grad * jax.lax.rsqrt(acc + opt.eps), acc
  acc = state + jnp.mean(dense_grad * dense_grad, axis=-1)
  return table - opt.learning_rate * dense_grad * jax.lax.rsqrt(acc + opt.eps)[:, None], acc
