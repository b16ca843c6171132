"""Feature-interaction building blocks: pairwise dot products, DCN-v2 cross layers, and an MLP.

All modules are pure, unsharded ``flax.linen`` modules with only a ``params`` collection, so they can be
stacked over a leading axis and applied with ``jax.vmap(module.apply)`` (tower modules do exactly that).

Parameter trees (kernels ``[in, out]``, biases ``[out]``):

* ``MLP``: ``{"dense_0": {"kernel", "bias"}, "dense_1": ..., ...}``, one entry per width.
* ``CrossLayerV2`` full rank: ``{"w": {"kernel" [d, d], "bias" [d]}}``;
  low rank r: ``{"v": {"kernel" [d, r]}, "u": {"kernel" [r, d], "bias" [d]}}``.
"""

from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

default_kernel_init = nn.initializers.glorot_normal()
default_bias_init = nn.initializers.zeros


def dot_interaction(x: jax.Array) -> jax.Array:
  """Strictly-lower triangle of ``x @ x^T`` per example: ``[..., n, D] -> [..., n(n-1)/2]``.

  Output order is the DLRM convention, ROW order over pairs (i, j) with j < i, ordered by i then j:
  ``(1,0), (2,0), (2,1), (3,0), (3,1), (3,2), ...``, i.e. entry ``i(i-1)/2 + j`` holds ``<x_i, x_j>``.
  Self products (the diagonal) are excluded. With n = 1 the result is empty (``[..., 0]``).
  """
  if x.ndim < 2:
    raise ValueError(f"dot_interaction expects [..., n, D], got shape {x.shape}")
  n = x.shape[-2]
  gram = jnp.einsum("...id,...jd->...ij", x, x)  # [..., n, n]
  rows, cols = np.tril_indices(n, k=-1)  # row-major: i ascending, then j ascending
  return gram[..., rows, cols]


class MLP(nn.Module):
  """Stack of Dense layers ``[..., d_in] -> [..., features[-1]]`` with ReLU between layers.

  Attributes:
    features: output width of each layer, in order. Empty means identity.
    activate_last: also apply the activation after the last layer (DLRM's bottom MLP does).
    activation: nonlinearity (ReLU by default).
    kernel_init / bias_init: glorot-normal kernels and zero biases by default (deterministic given rng).
  """
  features: Sequence[int]
  activate_last: bool = False
  activation: Callable[[jax.Array], jax.Array] = nn.relu
  kernel_init: Callable = default_kernel_init
  bias_init: Callable = default_bias_init

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for w in self.features:
      if int(w) < 1:
        raise ValueError(f"MLP widths must be >= 1, got {tuple(self.features)}")
    n = len(self.features)
    for i, w in enumerate(self.features):
      x = nn.Dense(int(w), kernel_init=self.kernel_init, bias_init=self.bias_init, name=f"dense_{i}")(x)
      if i < n - 1 or self.activate_last:
        x = self.activation(x)
    return x


class CrossLayerV2(nn.Module):
  """One DCN-v2 cross layer: ``x_{l+1} = x_0 * (U (V^T x_l) + b) + x_l``, shapes ``[..., d] -> [..., d]``.

  ``low_rank=None`` is the full-rank layer ``x_0 * (W x_l + b) + x_l`` with ``W`` of shape ``[d, d]``;
  ``low_rank=r`` factorises ``W = U V^T`` with ``V: [d, r]`` (no bias) and ``U: [r, d]`` (plus ``b``).
  """
  low_rank: int | None = None
  kernel_init: Callable = default_kernel_init
  bias_init: Callable = default_bias_init

  @nn.compact
  def __call__(self, x0: jax.Array, xl: jax.Array) -> jax.Array:
    if x0.shape != xl.shape:
      raise ValueError(f"CrossLayerV2 needs x0 and xl of the same shape, got {x0.shape} and {xl.shape}")
    d = x0.shape[-1]
    if self.low_rank is None:
      h = nn.Dense(d, kernel_init=self.kernel_init, bias_init=self.bias_init, name="w")(xl)
    else:
      if int(self.low_rank) < 1:
        raise ValueError(f"CrossLayerV2 low_rank must be >= 1 or None, got {self.low_rank}")
      h = nn.Dense(int(self.low_rank), use_bias=False, kernel_init=self.kernel_init, name="v")(xl)
      h = nn.Dense(d, kernel_init=self.kernel_init, bias_init=self.bias_init, name="u")(h)
    return x0 * h + xl
