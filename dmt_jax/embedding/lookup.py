"""Per-device lookup kernels, run inside ``jax.shard_map``.

One lookup inside a routing group of M devices (axes ``A``):

1. ``route``: every id of the local ``[B', S]`` batch is bucketised by its owning member (sort by
   destination, position inside the bucket), written into a fixed-capacity send buffer ``[M, C]`` and
   exchanged with one ``all_to_all`` over ``A``. Each id travels as two int32s: the local row on the
   owner and a *key* ``b * O_max + o`` naming the (sample, output) it pools into. Ids beyond capacity
   are counted (``overflow``) — never silently lost: the trainer fails on a non-zero count.
2. ``gather_rows``: the owner reads its received rows ``[M*C, W]`` from its block. This is the only
   touch of the table, kept *outside* differentiation: gradients are taken w.r.t. these rows, so the
   embedding update costs O(rows touched), not O(table).
3. ``pool_and_return``: the owner pools rows per (source, sample, output) with ``segment_sum``, sends the
   partial sums back with the inverse ``all_to_all``, and the source adds partials from all owners
   (row-wise shards sum, column-wise shards concatenate). Differentiable: its transpose routes row
   gradients back to the owners.

Layouts whose owners do not depend on the id (table-, column-wise, data-parallel) take a static path
(``static_route`` / ``static_pool_and_return``): every owner receives the same K items per sample in a
fixed order, so the send buffer is a gather of id columns, only the local row travels (-1 for an empty
item; the owner rebuilds the key, which the layout fixes), pooling is a small one-hot contraction over
the items and the return is a static gather — no sort, no scatter, no capacity question. It returns the
same ``routed`` dict, so ``gather_rows`` and the row-sparse update are shared.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax import lax

from dmt_jax.embedding.plan import StackLayout


@dataclasses.dataclass(frozen=True)
class LookupStatic:
  """Static sizes of one lookup (hashable for closures)."""
  members: int
  capacity: int
  rows_in: int            # B', samples per device entering the lookup
  send_weights: bool      # any weighted feature: ship per-id weights too
  axes: tuple[str, ...]   # routing axes A


def _const(x):
  return jnp.asarray(x)


def _output_counts(valid, layout: StackLayout, group):
  """float32 [B', F_out]: valid ids per pooled output (the mean-pooling denominator)."""
  st_out = _const(layout.slot_out)[group]
  return jnp.zeros((valid.shape[0], layout.f_out), jnp.float32).at[:, st_out].add(valid.astype(jnp.float32))


def _return_partials(partial, st: LookupStatic, O: int, W: int):
  """Owner partial sums [M, B'*O, W] -> at the source, [B', M*O, W] (owner-major per sample)."""
  M, Bp = st.members, st.rows_in
  if st.axes and M > 1:
    partial = lax.all_to_all(partial, st.axes, 0, 0, tiled=True)      # row m now = from owner m
  return partial.reshape(M, Bp, O, W).transpose(1, 0, 2, 3).reshape(Bp, M * O, W)


def _apply_mean(pooled, counts, layout: StackLayout, group):
  """Divides mean-pooled outputs of ``pooled`` [B', F, D] by their id counts (at least 1)."""
  mean = _const(layout.mean_mask)[group]                                 # [F]
  denom = jnp.where(mean[None, :] > 0, jnp.maximum(counts, 1.0), 1.0)
  return pooled / denom[..., None].astype(pooled.dtype)


def route(ids, weights, layout: StackLayout, st: LookupStatic, group):
  """Bucketise ids by owner and exchange them.

  Args:
    ids: int32 [B', S_in] (-1 = padding); weights: float32 [B', S_in].
    group: traced int, this device's layout (tower group) index.
  Returns:
    dict with ``lrow`` int32 [M*C] (received local rows), ``key`` int32 [M*C] (-1 = empty),
    ``w`` float32 [M*C], ``counts`` float32 [B', F_out] (ids per output, for mean pooling),
    ``overflow`` int32 [] (ids that did not fit).
  """
  M, C, Bp = st.members, st.capacity, st.rows_in
  n_c = layout.num_col_shards
  st_tab = _const(layout.slot_table)[group]            # [S]
  st_out = _const(layout.slot_out)[group]              # [S]
  valid = (ids >= 0) & (st_tab >= 0)[None, :]          # [B', S]
  t = jnp.maximum(st_tab, 0)[None, :]
  idc = jnp.maximum(ids, 0)
  rps = _const(layout.rows_per_shard)[group][t]         # [1, S]
  rs = jnp.minimum(idc // rps, layout.dest.shape[2] - 1)
  c = jnp.arange(n_c)[None, None, :]
  dest = _const(layout.dest)[group][t[..., None], rs[..., None], c]           # [B', S, n_c]
  lrow = _const(layout.local_off)[group][t[..., None], rs[..., None], c] + (idc - rs * rps)[..., None]
  ppos = _const(layout.pair_pos)[group][dest, st_out[None, :, None], c]      # [B', S, n_c]
  b = jnp.arange(Bp)[:, None, None]
  key = b * layout.o_max + ppos
  dest = jnp.where(valid[..., None], dest, M)                                 # M = dump bucket

  counts = _output_counts(valid, layout, group)

  dflat = dest.reshape(-1)
  order = jnp.argsort(dflat, stable=True)
  d_sorted = dflat[order]
  bucket_sizes = jnp.bincount(dflat, length=M + 1)
  starts = jnp.cumsum(bucket_sizes) - bucket_sizes
  pos = jnp.arange(dflat.shape[0]) - starts[d_sorted]
  real = d_sorted < M
  fits = real & (pos < C)
  overflow = jnp.sum(real & (pos >= C)).astype(jnp.int32)
  slot = jnp.where(fits, d_sorted * C + pos, M * C)
  send_lrow = jnp.zeros((M * C,), jnp.int32).at[slot].set(lrow.reshape(-1)[order].astype(jnp.int32), mode="drop")
  send_key = jnp.full((M * C,), -1, jnp.int32).at[slot].set(key.reshape(-1)[order].astype(jnp.int32), mode="drop")
  out = {"counts": counts, "overflow": overflow}
  if st.send_weights:
    wrep = jnp.broadcast_to(weights[..., None], dest.shape).reshape(-1)[order]
    send_w = jnp.zeros((M * C,), jnp.float32).at[slot].set(wrep, mode="drop")
  if st.axes and M > 1:
    a2a = lambda x: lax.all_to_all(x.reshape(M, C), st.axes, 0, 0, tiled=True).reshape(M * C)
    send_lrow, send_key = a2a(send_lrow), a2a(send_key)
    if st.send_weights:
      send_w = a2a(send_w)
  out["lrow"] = send_lrow
  out["key"] = send_key
  out["w"] = send_w if st.send_weights else (send_key >= 0).astype(jnp.float32)
  return out


def gather_rows(block, lrow):
  """block [R_local, W], lrow int32 [M*C] -> rows [M*C, W] (not differentiated)."""
  return jnp.take(block, lrow, axis=0, mode="clip")


def pool_and_return(rows, routed, layout: StackLayout, st: LookupStatic, group):
  """Pool received rows on the owner, send partial sums back, combine at the source.

  Args:
    rows: float [M*C, W] gathered rows (the differentiable input).
    routed: the dict from ``route``.
  Returns:
    pooled float [B', F_out, D] in the group's output order (sum or mean pooling).
  """
  M, C, Bp = st.members, st.capacity, st.rows_in
  O, W, n_c, F = layout.o_max, layout.width, layout.num_col_shards, layout.f_out
  key = routed["key"]
  ok = key >= 0
  src = jnp.arange(M * C) // C
  seg = jnp.where(ok, src * (Bp * O) + key, M * Bp * O)
  contrib = rows * jnp.where(ok, routed["w"], 0.0)[:, None].astype(rows.dtype)
  partial = jax.ops.segment_sum(contrib, seg, num_segments=M * Bp * O + 1)[:-1]
  partial = partial.reshape(M, Bp * O, W)
  back = _return_partials(partial, st, O, W)
  target = _const(layout.ret_target)[group].reshape(M * O)
  pooled = jnp.zeros((Bp, F * n_c + 1, W), rows.dtype).at[:, target].add(back)[:, :-1]
  return _apply_mean(pooled.reshape(Bp, F, n_c * W), routed["counts"], layout, group)


def static_route(ids, weights, layout: StackLayout, st: LookupStatic, group):
  """``route`` for id-independent layouts (``layout.static`` is set); same outputs, C = B' * K.

  The send buffer to member m is ``ids[:, send_slot[m]]`` (``[B', K]``) shifted to m's local rows.
  """
  sr = layout.static
  M, Bp, K = st.members, st.rows_in, sr.items
  s_in = layout.slot_table.shape[1]
  pad = jnp.full((Bp, 1), -1, ids.dtype)
  ids_ext = jnp.concatenate([ids[:, :s_in], pad], axis=1)                  # [B', S_in + 1]
  slot = _const(sr.send_slot)[group]                                      # [M, K]
  sid = jnp.transpose(ids_ext[:, slot], (1, 0, 2))                        # [M, B', K]
  valid = sid >= 0
  # Empty items travel as lrow = -1; the owner rebuilds every key from that, because a static
  # layout fixes which output each item pools into (one all-to-all per lookup, not two).
  lrow = jnp.where(valid, sid + _const(sr.send_off)[group][:, None, :], -1).astype(jnp.int32)
  in_valid = (ids[:, :s_in] >= 0) & (_const(layout.slot_table)[group] >= 0)[None, :]
  counts = _output_counts(in_valid, layout, group)
  if st.send_weights:
    w_ext = jnp.concatenate([weights[:, :s_in], jnp.zeros((Bp, 1), weights.dtype)], axis=1)
    w = jnp.where(valid, jnp.transpose(w_ext[:, slot], (1, 0, 2)), 0.0).astype(jnp.float32)
  out = {"counts": counts, "overflow": jnp.int32(0)}
  lrow = lrow.reshape(M * Bp * K)
  if st.send_weights:
    w = w.reshape(M * Bp * K)
  me = 0
  if st.axes and M > 1:
    a2a = lambda x: lax.all_to_all(x.reshape(M, Bp * K), st.axes, 0, 0, tiled=True).reshape(M * Bp * K)
    lrow = a2a(lrow)
    if st.send_weights:
      w = a2a(w)
    me = lax.axis_index(st.axes)
  # Received block m holds source m's [B', K] items for this owner (member ``me``).
  got = lrow.reshape(M, Bp, K) >= 0
  b = jnp.arange(Bp, dtype=jnp.int32)[None, :, None]
  key = jnp.where(got, b * layout.o_max + _const(sr.item_out)[group][me][None, None, :], -1).astype(jnp.int32)
  out["lrow"], out["key"] = jnp.maximum(lrow, 0), key.reshape(M * Bp * K)
  out["w"] = w if st.send_weights else (out["key"] >= 0).astype(jnp.float32)
  return out


def static_pool_and_return(rows, routed, layout: StackLayout, st: LookupStatic, group):
  """``pool_and_return`` for id-independent layouts: pooling by reshape + sum, static return gather.

  Args:
    rows: float [M*C, W] with C = B' * K, received from the sources in ``static_route``'s order.
  Returns:
    pooled float [B', F_out, D].
  """
  sr = layout.static
  M, Bp, L = st.members, st.rows_in, sr.bag
  O, W, n_c, F = layout.o_max, layout.width, layout.num_col_shards, layout.f_out
  contrib = rows * routed["w"][:, None].astype(rows.dtype)              # empty items have w = 0
  partial = contrib.reshape(M, Bp * O, L, W)
  partial = partial[:, :, 0] if L == 1 else jnp.sum(partial, axis=2)     # [M, B'*O, W]
  back = _return_partials(partial, st, O, W)
  back = jnp.concatenate([back, jnp.zeros((Bp, 1, W), back.dtype)], axis=1)
  pooled = jnp.take(back, _const(sr.ret_index)[group], axis=1).reshape(Bp, F, n_c * W)
  return _apply_mean(pooled, routed["counts"], layout, group)
