"""DLRM over already-pooled embeddings: bottom MLP, pairwise dot interaction, top MLP.

The model never sees ids: the (sharded) lookup or the SPTT transform hands it pooled embeddings
``emb: [B, F, D]``. For a DMT model ``emb`` is the concatenation of the tower outputs, ``F = sum_t K_t``.

Parameter tree: ``{"bottom_mlp": {"dense_i": {"kernel", "bias"}}, "top_mlp": {"dense_i": {...}}}``.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from dmt_jax.models.interactions import MLP, dot_interaction


class DLRM(nn.Module):
  """``(dense [B, num_dense], emb [B, F, D]) -> logits [B]``.

  1. ``z = bottom_mlp(dense)`` with ReLU after every layer, ``[B, D]`` (``bottom_mlp[-1]`` must equal D);
  2. ``p = dot_interaction(concat([z[:, None], emb], 1))``: n = F + 1 vectors, dense vector first,
     ``[B, (F+1)F/2]`` in DLRM row order;
  3. ``logits = top_mlp(concat([z, p], 1))``, ReLU between layers, none after the last (width 1).
  """
  bottom_mlp: Sequence[int]
  top_mlp: Sequence[int]

  @nn.compact
  def __call__(self, dense: jax.Array, emb: jax.Array) -> jax.Array:
    if dense.ndim != 2 or emb.ndim != 3 or dense.shape[0] != emb.shape[0]:
      raise ValueError(f"DLRM expects dense [B, num_dense] and emb [B, F, D], got {dense.shape} and {emb.shape}")
    d = emb.shape[-1]
    if not self.bottom_mlp or int(self.bottom_mlp[-1]) != d:
      raise ValueError(f"DLRM bottom_mlp must end in the embedding dim D={d} (its output joins the dot "
                       f"interaction as one more vector), got bottom_mlp={tuple(self.bottom_mlp)}")
    if not self.top_mlp or int(self.top_mlp[-1]) != 1:
      raise ValueError(f"DLRM top_mlp must end in width 1 (the logit), got top_mlp={tuple(self.top_mlp)}")
    z = MLP(self.bottom_mlp, activate_last=True, name="bottom_mlp")(dense)  # [B, D]
    vectors = jnp.concatenate([z[:, None, :], emb.astype(z.dtype)], axis=1)  # [B, F+1, D]
    pairs = dot_interaction(vectors)  # [B, (F+1)F/2]
    logits = MLP(self.top_mlp, activate_last=False, name="top_mlp")(jnp.concatenate([z, pairs], axis=1))
    return logits[:, 0]
