"""SPTT — the semantic-preserving tower transform (per-device pieces, run inside ``shard_map``).

For a step with local batch B per device and G tower groups (``k`` towers per group, T = G*k):

1. ``peer_exchange_ids``: each device splits its ``[B, S]`` ids by tower group (a static permutation)
   and sends group g's slots to the device with the same local coordinate in group g — one
   ``all_to_all`` over the peer axes. Afterwards a device holds its own group's ids for G*B samples.
2. intra-tower lookup over the local axes only (``embedding/lookup.py``), pooled ``[G*B, k*F_t, D]``.
3. ``apply_towers``: tower module TM_j for each of the group's k towers (weights stacked ``[k, ...]``,
   replicated inside the group; shard_map's transpose reduces their gradients over the local axes).
4. ``exchange_back``: one ``all_to_all`` over the peer axes returns ``[B, T*K, D]`` for the device's
   own samples (tower t = g*k + j), optionally in bf16 on the wire (forward and backward).
5. With identity towers ``unpermute`` puts features back in the flat model's order, so SPTT with
   identity towers computes exactly the flat model's function.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from dmt_jax.features import FeatureSet


@dataclasses.dataclass(frozen=True)
class TowerLayout:
  """Static description of T towers on G groups.

  towers:        per tower, its feature indices (tower t on group t // k)
  f_t:           features per tower after padding (max over towers)
  gslots:        int [G, S_g] original slot index sent to group g (S_all = the padding column)
  group_features, group_slot_columns, group_out_positions: inputs to ``build_layout``
  unpermute_index: int [F] position in ``[T*f_t]`` of each flat feature (identity towers)
  """
  towers: tuple[tuple[int, ...], ...]
  num_groups: int
  towers_per_group: int
  f_t: int
  gslots: np.ndarray
  group_features: list[list[int]]
  group_slot_columns: list[list[list[int]]]
  group_out_positions: list[list[int]]
  unpermute_index: np.ndarray


def validate_towers(fs: FeatureSet, towers: Sequence[Sequence[int]], num_groups: int) -> None:
  """Every feature in exactly one tower; towers non-empty; T a multiple of the group count."""
  T = len(towers)
  if T == 0:
    raise ValueError("towers: need at least one tower")
  if T % num_groups:
    raise ValueError(f"towers: {T} towers do not fit {num_groups} tower groups; the tower count must be "
                     f"a multiple of the number of groups (k towers per group)")
  seen = {}
  for t, feats in enumerate(towers):
    if not len(feats):
      raise ValueError(f"towers: tower {t} is empty; every group needs work")
    for f in feats:
      if not 0 <= f < fs.num_features:
        raise ValueError(f"towers: tower {t} names feature index {f}, but there are {fs.num_features} features")
      if f in seen:
        raise ValueError(f"towers: feature {fs.features[f].name!r} is in tower {seen[f]} and tower {t}; "
                         f"a feature belongs to exactly one tower")
      seen[f] = t
  missing = [fs.features[f].name for f in range(fs.num_features) if f not in seen]
  if missing:
    raise ValueError(f"towers: features {missing} are in no tower")
  tables_of = {}
  for t, feats in enumerate(towers):
    for f in feats:
      tab = fs.features[f].table
      g = t // (T // num_groups)
      if tables_of.setdefault(tab, g) != g:
        raise ValueError(f"towers: table {tab!r} is used by features in two tower groups; features "
                         f"sharing a table must share a tower group")


def tower_layout(fs: FeatureSet, towers: Sequence[Sequence[int]], num_groups: int) -> TowerLayout:
  validate_towers(fs, towers, num_groups)
  towers = tuple(tuple(int(f) for f in t) for t in towers)
  k = len(towers) // num_groups
  f_t = max(len(t) for t in towers)
  offs = fs.slot_offsets
  S_all = fs.num_slots
  gslots, gfeats, gcols, gpos = [], [], [], []
  unperm = np.zeros(fs.num_features, np.int64)
  for g in range(num_groups):
    slots, feats, cols, pos = [], [], [], []
    for j in range(k):
      t = g * k + j
      for i, f in enumerate(towers[t]):
        col0 = len(slots)
        slots.extend(range(offs[f], offs[f + 1]))
        feats.append(f)
        cols.append(list(range(col0, len(slots))))
        pos.append(j * f_t + i)
        unperm[f] = t * f_t + i
    gslots.append(slots)
    gfeats.append(feats)
    gcols.append(cols)
    gpos.append(pos)
  s_g = max(len(s) for s in gslots)
  garr = np.full((num_groups, s_g), S_all, np.int32)
  for g, s in enumerate(gslots):
    garr[g, :len(s)] = s
  return TowerLayout(towers, num_groups, k, f_t, garr, gfeats, gcols, gpos, unperm)


def peer_exchange_ids(ids, weights, tl: TowerLayout, peer_axes: tuple[str, ...], send_weights: bool):
  """ids [B, S_all] -> [G*B, S_g]: this group's slots for the samples of every group."""
  B = ids.shape[0]
  G = tl.num_groups
  gslots = jnp.asarray(tl.gslots)
  ids_p = jnp.concatenate([ids, jnp.full((B, 1), -1, ids.dtype)], axis=1)
  send = jnp.transpose(ids_p[:, gslots], (1, 0, 2))               # [G, B, S_g]
  recv_w = None
  with jax.named_scope("ids_exchange"):
    recv = lax.all_to_all(send, peer_axes, 0, 0, tiled=True) if G > 1 else send
    if send_weights:
      w_p = jnp.concatenate([weights, jnp.zeros((B, 1), weights.dtype)], axis=1)
      wsend = jnp.transpose(w_p[:, gslots], (1, 0, 2))
      recv_w = lax.all_to_all(wsend, peer_axes, 0, 0, tiled=True) if G > 1 else wsend
      recv_w = recv_w.reshape(G * B, -1)
  ids_g = recv.reshape(G * B, -1)
  if recv_w is None:
    recv_w = (ids_g >= 0).astype(jnp.float32)
  return ids_g, recv_w


def apply_towers(pooled, tm_params, tm_apply, tl: TowerLayout):
  """pooled [G*B, k*f_t, D] -> [G*B, k, K, D] with each tower's module (params stacked [k, ...])."""
  GB, _, D = pooled.shape
  k = tl.towers_per_group
  x = pooled.reshape(GB, k, tl.f_t, D).transpose(1, 0, 2, 3)        # [k, G*B, f_t, D]
  if tm_apply is None:
    y = x
  else:
    with jax.named_scope("tower_module"):   # its transpose holds the tower-gradient psum over local axes
      y = jax.vmap(lambda p, xx: tm_apply({"params": p}, xx))(tm_params, x)   # [k, G*B, K, D]
  return y.transpose(1, 0, 2, 3)


def _wire_all_to_all(x, axes, wire_dtype):
  """all_to_all over ``axes`` whose payload really travels as ``wire_dtype`` (forward and backward).

  The value is rounded to ``wire_dtype`` and bit-cast to an unsigned integer of the same width for
  the exchange, so XLA cannot hoist the conversion past the collective (XLA:CPU otherwise moves a
  bf16 convert behind the all-to-all and ships f32). Its transpose is the same exchange.
  """
  bits = {2: jnp.uint16, 1: jnp.uint8}[jnp.dtype(wire_dtype).itemsize]

  def exchange(v):
    w = lax.bitcast_convert_type(v.astype(wire_dtype), bits)
    w = lax.all_to_all(w, axes, 0, 0, tiled=True)
    return lax.bitcast_convert_type(w, wire_dtype).astype(v.dtype)

  @jax.custom_vjp
  def f(v):
    return exchange(v)

  f.defvjp(lambda v: (exchange(v), None), lambda _, ct: (exchange(ct),))
  return f(x)


def exchange_back(y, tl: TowerLayout, peer_axes: tuple[str, ...], wire_dtype=None):
  """[G*B, k, K, D] on the tower side -> [B, T*K, D] on the sample side (tower t = g*k + j)."""
  GB, k, K, D = y.shape
  G = tl.num_groups
  B = GB // G
  dtype = y.dtype
  y = y.reshape(G, B, k * K * D)
  with jax.named_scope("tower_output_exchange"):
    if G > 1 and wire_dtype is not None:
      y = _wire_all_to_all(y, peer_axes, wire_dtype)
    elif G > 1:
      y = lax.all_to_all(y, peer_axes, 0, 0, tiled=True)            # row g' = from group g'
    elif wire_dtype is not None:
      y = y.astype(wire_dtype).astype(dtype)
  return y.reshape(G, B, k * K, D).transpose(1, 0, 2, 3).reshape(B, G * k * K, D)


def unpermute(y, tl: TowerLayout):
  """Identity towers: [B, T*f_t, D] -> [B, F, D] in the flat feature order."""
  return jnp.take(y, jnp.asarray(tl.unpermute_index), axis=1)
