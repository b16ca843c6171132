"""DCN-v2 (stacked structure) over already-pooled embeddings: cross stack, deep MLP, logit.

``emb: [B, F, D]`` comes from the lookup or the SPTT transform; for a DMT model it holds the tower outputs
(``F = sum_t K_t``), which the flattening below turns into concatenated ``K_t * D`` widths.

Parameter tree: ``{"cross_0": {...}, ..., "cross_{N-1}": {...}, "deep_mlp": {"dense_i": {...}},
"logit": {"kernel" [h, 1], "bias" [1]}}`` (cross layer entries as in ``CrossLayerV2``).
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from dmt_jax.models.interactions import MLP, CrossLayerV2, default_bias_init, default_kernel_init


class DCNv2(nn.Module):
  """``(dense [B, num_dense], emb [B, F, D]) -> logits [B]``.

  ``x0 = concat([dense, emb.reshape(B, F*D)])`` (width ``num_dense + F*D``), then ``num_cross_layers``
  cross layers (rank ``low_rank``, full rank when None), then the deep MLP (ReLU after every layer),
  then ``Dense(1)``.
  """
  num_cross_layers: int
  low_rank: int | None
  deep_mlp: Sequence[int]

  @nn.compact
  def __call__(self, dense: jax.Array, emb: jax.Array) -> jax.Array:
    if dense.ndim != 2 or emb.ndim != 3 or dense.shape[0] != emb.shape[0]:
      raise ValueError(f"DCNv2 expects dense [B, num_dense] and emb [B, F, D], got {dense.shape} and {emb.shape}")
    if int(self.num_cross_layers) < 0:
      raise ValueError(f"DCNv2 num_cross_layers must be >= 0, got {self.num_cross_layers}")
    b = emb.shape[0]
    x0 = jnp.concatenate([dense, emb.reshape(b, -1).astype(dense.dtype)], axis=1)
    x = x0
    for i in range(int(self.num_cross_layers)):
      x = CrossLayerV2(self.low_rank, name=f"cross_{i}")(x0, x)
    x = MLP(self.deep_mlp, activate_last=True, name="deep_mlp")(x)
    logits = nn.Dense(1, kernel_init=default_kernel_init, bias_init=default_bias_init, name="logit")(x)
    return logits[:, 0]
