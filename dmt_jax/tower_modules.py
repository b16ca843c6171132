"""Tower modules (TM): per-tower dense modules that interact and compress a tower's pooled embeddings.

Every tower module maps one tower's pooled embeddings ``x: [B, F_t, D]`` to ``[B, K, D]``: K output
vectors of the embedding width D, with ``K = ceil(F_t / c)`` for compression ratio c >= 1. Because of the
ceiling the *effective* ratio ``F_t / K`` (see ``effective_compression``) can be below c, e.g. F_t=6, c=4
gives K=2, ratio 3; c > F_t gives K=1, ratio F_t.

How tower outputs enter each over-arch (hierarchical interaction):

* DLRM: tower t contributes K_t vectors of width D; all towers' vectors are concatenated to
  ``[B, sum_t K_t, D]`` and join the global dot interaction together with the bottom-MLP output.
* DCN-v2: the same ``[B, sum_t K_t, D]`` is flattened, i.e. the towers contribute concatenated ``K_t * D``
  widths to the cross network input ``x0 = concat([dense, ...])``.

Kinds:

* ``identity``: K = F_t, returns x unchanged (c must be 1); SPTT with it reproduces the flat model.
* ``linear``: flatten -> Dense(K*D) -> reshape.             params ``{"proj"}``
* ``mlp``: flatten -> MLP(hidden..., K*D) (last linear).     params ``{"mlp": {"dense_i"}}``
* ``dcn``: flatten -> N cross layers -> Dense(K*D).         params ``{"cross_i", "proj"}``
* ``dot``: concat(dot_interaction(x), flatten(x)) -> Dense(K*D).  params ``{"proj"}``
* ``mix``: y_k = sum_f W[k, f] x_f + b_k, K learned mixtures of the tower's vectors.  params ``{"mix", "bias"}``

Cost per sample (multiply-adds): ``linear`` F_t*D * K*D, ``mix`` F_t * K * D — D times less. ``linear``
can make a DMT model *more* expensive than the flat one (at F_t=13, D=64, c=4 it is 213k per tower,
more than the over-arch work it removes); ``mix`` only ever removes work, which is what lets DMT beat
the flat model even where communication is free (BENCHMARKS.md, slow-link section).

Stacking: the modules are pure functions of ``(params, x)`` with only a ``params`` collection and a static
feature count, so towers padded with zero features to a common F_t can be stacked over a leading tower axis
and run with ``jax.vmap(module.init)(rngs, xs)`` / ``jax.vmap(module.apply)(params, xs)``.
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from dmt_jax.models.interactions import MLP, CrossLayerV2, default_bias_init, default_kernel_init, dot_interaction

KINDS = ("identity", "linear", "mlp", "dcn", "dot", "mix")


def tower_output_vectors(kind: str, num_features: int, compression: float) -> int:
  """K, the number of width-D vectors a tower of ``num_features`` features outputs: ``ceil(F_t / c)``."""
  if kind not in KINDS:
    raise ValueError(f"unknown tower module kind {kind!r}; expected one of {KINDS}")
  if int(num_features) != num_features or num_features < 1:
    raise ValueError(f"a tower needs num_features >= 1 (an integer), got {num_features}")
  c = float(compression)
  if not math.isfinite(c) or c < 1:
    raise ValueError(f"tower compression ratio must be a finite number >= 1, got {compression}")
  if kind == "identity":
    if c != 1:
      raise ValueError(f"the identity tower module cannot compress: compression must be 1, got {compression}")
    return int(num_features)
  # Round first so that e.g. 6 / 1.2 = 5.000000000000001 does not become 6.
  return max(1, math.ceil(round(num_features / c, 9)))


def effective_compression(kind: str, num_features: int, compression: float) -> float:
  """The ratio actually achieved, ``F_t / K`` (<= c because K is rounded up)."""
  return num_features / tower_output_vectors(kind, num_features, compression)


def _check_input(x: jax.Array, num_features: int, dim: int, name: str) -> None:
  if x.ndim != 3 or x.shape[1:] != (num_features, dim):
    raise ValueError(f"{name} expects x of shape [B, {num_features}, {dim}], got {x.shape}")


class IdentityTower(nn.Module):
  """``[B, F_t, D] -> [B, F_t, D]`` unchanged; no parameters."""
  num_features: int
  dim: int

  def __call__(self, x: jax.Array) -> jax.Array:
    _check_input(x, self.num_features, self.dim, "IdentityTower")
    return x


class LinearTower(nn.Module):
  """``[B, F_t, D] -> flatten [B, F_t*D] -> Dense(K*D) -> [B, K, D]``."""
  num_features: int
  dim: int
  num_outputs: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    _check_input(x, self.num_features, self.dim, "LinearTower")
    b = x.shape[0]
    y = nn.Dense(self.num_outputs * self.dim, kernel_init=default_kernel_init, bias_init=default_bias_init,
                 name="proj")(x.reshape(b, -1))
    return y.reshape(b, self.num_outputs, self.dim)


class MLPTower(nn.Module):
  """``[B, F_t, D] -> flatten -> MLP(hidden..., K*D) -> [B, K, D]`` (ReLU between, none after the last)."""
  num_features: int
  dim: int
  num_outputs: int
  hidden: Sequence[int] = (256,)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    _check_input(x, self.num_features, self.dim, "MLPTower")
    b = x.shape[0]
    widths = tuple(int(h) for h in self.hidden) + (self.num_outputs * self.dim,)
    y = MLP(widths, activate_last=False, name="mlp")(x.reshape(b, -1))
    return y.reshape(b, self.num_outputs, self.dim)


class DCNTower(nn.Module):
  """``[B, F_t, D] -> flatten x0 -> num_cross_layers x CrossLayerV2 -> Dense(K*D) -> [B, K, D]``."""
  num_features: int
  dim: int
  num_outputs: int
  num_cross_layers: int = 1
  low_rank: int | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    _check_input(x, self.num_features, self.dim, "DCNTower")
    b = x.shape[0]
    x0 = x.reshape(b, -1)
    y = x0
    for i in range(self.num_cross_layers):
      y = CrossLayerV2(self.low_rank, name=f"cross_{i}")(x0, y)
    y = nn.Dense(self.num_outputs * self.dim, kernel_init=default_kernel_init, bias_init=default_bias_init,
                 name="proj")(y)
    return y.reshape(b, self.num_outputs, self.dim)


class DotTower(nn.Module):
  """``[B, F_t, D] -> concat(dot_interaction(x) [B, F_t(F_t-1)/2], flatten(x)) -> Dense(K*D) -> [B, K, D]``.

  The in-tower pairwise dot products are DLRM's interaction applied inside the tower (hierarchical
  interaction); the flattened x is kept so that first-order information survives the projection.
  """
  num_features: int
  dim: int
  num_outputs: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    _check_input(x, self.num_features, self.dim, "DotTower")
    b = x.shape[0]
    z = jnp.concatenate([dot_interaction(x), x.reshape(b, -1)], axis=1)
    y = nn.Dense(self.num_outputs * self.dim, kernel_init=default_kernel_init, bias_init=default_bias_init,
                 name="proj")(z)
    return y.reshape(b, self.num_outputs, self.dim)


class MixTower(nn.Module):
  """``[B, F_t, D] -> y[b, k] = sum_f W[k, f] x[b, f] + bias[k]`` -> ``[B, K, D]``.

  Compresses along the feature axis only: every output is a learned linear combination of the tower's
  embedding vectors (shared over the D coordinates), so outputs stay in the embedding space the
  over-arch's dot interaction expects. ``W: [K, F_t]`` (init N(0, 1/F_t)), ``bias: [K, D]`` (zeros).
  """
  num_features: int
  dim: int
  num_outputs: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    _check_input(x, self.num_features, self.dim, "MixTower")
    w = self.param("mix", nn.initializers.normal(stddev=1.0 / math.sqrt(self.num_features)),
                   (self.num_outputs, self.num_features), jnp.float32)
    b = self.param("bias", nn.initializers.zeros, (self.num_outputs, self.dim), jnp.float32)
    return jnp.einsum("bfd,kf->bkd", x, w.astype(x.dtype)) + b.astype(x.dtype)


def make_tower_module(kind: str, num_features: int, dim: int, compression: float,
                      hidden: Sequence[int] = (256,), num_cross_layers: int = 1,
                      low_rank: int | None = None) -> nn.Module:
  """Builds the tower module ``[B, num_features, dim] -> [B, K, dim]``, K = ``tower_output_vectors(...)``.

  ``hidden`` is used by ``mlp`` only; ``num_cross_layers`` and ``low_rank`` by ``dcn`` only.
  """
  k = tower_output_vectors(kind, num_features, compression)
  num_features = int(num_features)
  if int(dim) < 1:
    raise ValueError(f"tower embedding dim must be >= 1, got {dim}")
  dim = int(dim)
  if kind == "identity":
    return IdentityTower(num_features, dim)
  if kind == "linear":
    return LinearTower(num_features, dim, k)
  if kind == "mlp":
    hidden = tuple(int(h) for h in hidden)
    if any(h < 1 for h in hidden):
      raise ValueError(f"mlp tower hidden widths must be >= 1, got {hidden}")
    return MLPTower(num_features, dim, k, hidden)
  if kind == "dcn":
    if int(num_cross_layers) < 1:
      raise ValueError(f"dcn tower needs num_cross_layers >= 1, got {num_cross_layers}")
    if low_rank is not None and int(low_rank) < 1:
      raise ValueError(f"dcn tower low_rank must be >= 1 or None, got {low_rank}")
    return DCNTower(num_features, dim, k, int(num_cross_layers), None if low_rank is None else int(low_rank))
  if kind == "mix":
    return MixTower(num_features, dim, k)
  return DotTower(num_features, dim, k)
