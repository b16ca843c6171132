"""Sharding plans: where every embedding row lives, as static (host-side, numpy) routing tables.

Physical layout. Every device holds one *block* ``[R_local, W]`` of one stacked row space; globally the
blocks form one array ``[N, R_local, W]`` sharded on dim 0 over all mesh axes (device at flat mesh
position p holds block p). All tables of a stack share the block, each shard at a per-table row offset,
so one all-to-all serves every table (table stacking).

A lookup runs inside a *routing group* of M devices (the routing axes A). Devices that differ only in the
*selector axes* P use different layouts (DMT: each tower group holds its own towers' tables); devices
that differ only in the *replica axes* R hold identical copies (data-parallel tables, or row-wise over a
subset of the axes) whose updates are kept equal by gathering row gradients over R.

A table is cut into ``n_rs`` row shards (``rows_per_shard`` rows each) times ``n_c`` column shards of
width ``W = D / n_c``; shard (rs, c) lives on member ``dest[t, rs, c]`` at local row offset
``local_off[t, rs, c]``. Sharding types:

* ``table_wise`` (TW): a whole table on one member, tables balanced by bytes and lookups.
* ``row_wise`` (RW): every table cut into M row shards, one per member.
* ``column_wise`` (CW): every table cut into ``n_c`` column shards placed round-robin.
* ``data_parallel`` (DP): M = 1, every device a replica holding all tables.

(``table_row_wise`` is a two-level path, table per group + row-wise inside: see ``sptt.py``.)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

from dmt_jax.features import FeatureSet

LOCAL_SHARDING_TYPES = ("table_wise", "row_wise", "column_wise", "data_parallel")


@dataclasses.dataclass(frozen=True)
class Shard:
  """One piece of a table on one device of the routing group."""
  group: int
  member: int
  table: str
  row_start: int
  row_end: int
  col_start: int
  col_end: int
  local_offset: int


@dataclasses.dataclass
class StackLayout:
  """Static routing tables for one stacked row space, for G layouts (groups) of M members.

  Input slots of the lookup are the columns of the ``[B', S_in]`` id array the lookup receives.
  Arrays (all numpy int32):
    slot_table  [G, S_in]                 index into the group's tables, -1 = unused slot
    slot_out    [G, S_in]                 pooled output position in [0, F_out)
    rows_per_shard [G, T_max]
    dest        [G, T_max, RS_max, n_c]   member owning (table, row shard, col shard)
    local_off   [G, T_max, RS_max, n_c]   row offset of that shard in the member's block
    pair_pos    [G, M, F_out, n_c]        where member m writes output (f, c) in its return buffer, -1 if never
    ret_target  [G, M, O_max]             inverse: (f * n_c + c) for each return position, F_out*n_c = unused
    mean_mask   [G, F_out]                1 where the output feature uses mean pooling
  """
  kind: str
  num_groups: int
  members: int
  dim: int
  num_col_shards: int
  group_tables: list[list[str]]
  shards: list[Shard]
  rows_local: int
  f_out: int
  o_max: int
  slot_table: np.ndarray
  slot_out: np.ndarray
  rows_per_shard: np.ndarray
  dest: np.ndarray
  local_off: np.ndarray
  pair_pos: np.ndarray
  ret_target: np.ndarray
  mean_mask: np.ndarray
  max_items_per_member: int   # per input row: max #ids one member can receive from one sample
  static: "StaticRouting | None" = None   # id-independent owners (TW / CW / DP): see StaticRouting

  @property
  def width(self) -> int:
    return self.dim // self.num_col_shards

  def capacity(self, rows_in: int, capacity_factor: float | None, num_slots: int) -> int:
    """Per-destination capacity C of the id all-to-all.

    ``None`` sizes C so overflow is impossible (the most ids any member can receive from ``rows_in``
    samples); a factor ``x`` gives ``ceil(x * rows_in * slots * n_c / M)`` capped at that bound, and
    overflow is then counted and must be checked by the caller.
    """
    safe = max(1, rows_in * self.max_items_per_member)
    if capacity_factor is None:
      return safe
    if capacity_factor <= 0:
      raise ValueError(f"capacity_factor must be > 0, got {capacity_factor}")
    want = math.ceil(capacity_factor * rows_in * num_slots * self.num_col_shards / self.members)
    return int(max(1, min(safe, want)))


@dataclasses.dataclass
class StaticRouting:
  """Routing tables for layouts whose owners do not depend on the id (every kind but row-wise).

  Each member m of group g receives, from every source sample, the same K = O_max * L *items* (an
  input slot and a column shard) in a fixed order: item k pools into return position ``k // L``, so
  the owner pools by reshaping ``[.., K, W] -> [.., O_max, L, W]`` and summing over L (L = the most
  items any output has, e.g. the max bag length; shorter bags are padded with empty items). The id
  all-to-all then needs no bucketing (TorchRec's table-wise path). Arrays (numpy int32):
    send_slot [G, M, K]       input slot of item k for member m; S_in (the padding column) if empty
    send_off  [G, M, K]       row offset of the item's shard in m's block (local row = id + offset)
    item_out  [G, M, K]       return position o = k // L of item k; O_max if the item is empty
    ret_index [G, F_out*n_c]  for output (f, c): its index m * O_max + o in the return buffer
                              (M * O_max, a zero row, for outputs no member serves)
  """
  items: int
  bag: int
  send_slot: np.ndarray
  send_off: np.ndarray
  item_out: np.ndarray
  ret_index: np.ndarray


def _static_routing(kind, members, n_c, f_out, o_max, slot_table, slot_out, dest, local_off,
                    pair_pos) -> StaticRouting | None:
  """The per-member item lists of an id-independent layout (None for row-wise)."""
  if kind == "row_wise":
    return None
  G, s_in = slot_table.shape
  lists = [[[[] for _ in range(o_max)] for _ in range(members)] for _ in range(G)]
  for g in range(G):
    for s in range(s_in):
      t = slot_table[g, s]
      if t < 0:
        continue
      for c in range(n_c):
        m = int(dest[g, t, 0, c])
        lists[g][m][int(pair_pos[g, m, slot_out[g, s], c])].append((s, int(local_off[g, t, 0, c])))
  L = max(1, max(len(l) for gl in lists for ml in gl for l in ml))
  K = o_max * L
  send_slot = np.full((G, members, K), s_in, np.int32)
  send_off = np.zeros((G, members, K), np.int32)
  item_out = np.full((G, members, K), o_max, np.int32)
  for g in range(G):
    for m in range(members):
      for o in range(o_max):
        for l, (s, off) in enumerate(lists[g][m][o]):
          k = o * L + l
          send_slot[g, m, k], send_off[g, m, k], item_out[g, m, k] = s, off, o
  ret_index = np.full((G, f_out * n_c), members * o_max, np.int32)
  for g in range(G):
    for m in range(members):
      for f in range(f_out):
        for c in range(n_c):
          if pair_pos[g, m, f, c] >= 0:
            ret_index[g, f * n_c + c] = m * o_max + pair_pos[g, m, f, c]
  return StaticRouting(K, L, send_slot, send_off, item_out, ret_index)


def _balanced_table_wise(tables: Sequence[str], costs: dict[str, float], members: int) -> dict[str, int]:
  """Greedy longest-processing-time placement of whole tables on members."""
  load = [0.0] * members
  place = {}
  for t in sorted(tables, key=lambda t: (-costs[t], t)):
    m = min(range(members), key=lambda i: (load[i], i))
    place[t] = m
    load[m] += costs[t]
  return place


def build_layout(fs: FeatureSet, kind: str, members: int,
                 group_features: Sequence[Sequence[int]],
                 group_slot_columns: Sequence[Sequence[Sequence[int]]] | None = None,
                 group_out_positions: Sequence[Sequence[int]] | None = None,
                 f_out: int | None = None, num_col_shards: int | None = None) -> StackLayout:
  """Builds the layout of one stack.

  Args:
    fs: the feature set (all tables must share one dim).
    kind: one of ``LOCAL_SHARDING_TYPES``.
    members: M, devices in the routing group.
    group_features: per group, the feature indices it serves (output order).
    group_slot_columns: per group, per feature, the input slot columns of its ids; default: the
      feature set's own slot offsets (flat lookup on the full ``[B, S]`` array).
    group_out_positions: per group, the pooled output position of each feature; default 0..F_g-1.
    f_out: pooled output width in features (default max features per group).
    num_col_shards: column shards for ``column_wise`` (default M).
  """
  if kind not in LOCAL_SHARDING_TYPES:
    raise ValueError(f"sharding type must be one of {LOCAL_SHARDING_TYPES}, got {kind!r}")
  if kind == "data_parallel" and members != 1:
    raise ValueError("data_parallel lookups route inside one device (members=1)")
  dim = fs.uniform_dim()
  G = len(group_features)
  n_c = 1
  if kind == "column_wise":
    n_c = members if num_col_shards is None else int(num_col_shards)
    if n_c < 1 or dim % n_c:
      raise ValueError(f"column_wise: dim {dim} is not divisible into {n_c} column shards; "
                       f"choose num_col_shards dividing the dim")
  W = dim // n_c
  offs = fs.slot_offsets
  if group_slot_columns is None:
    group_slot_columns = [[list(range(offs[f], offs[f + 1])) for f in feats] for feats in group_features]
  if group_out_positions is None:
    group_out_positions = [list(range(len(feats))) for feats in group_features]
  if f_out is None:
    f_out = max(max(p) + 1 for p in group_out_positions if len(p)) if any(len(p) for p in group_out_positions) else 1
  s_in = max((c for cols in group_slot_columns for fc in cols for c in fc), default=-1) + 1

  group_tables = []
  for feats in group_features:
    seen = []
    for f in feats:
      t = fs.features[f].table
      if t not in seen:
        seen.append(t)
    group_tables.append(seen)
  t_max = max(1, max(len(t) for t in group_tables))
  rs_max = members if kind == "row_wise" else 1

  slot_table = np.full((G, max(s_in, 1)), -1, np.int32)
  slot_out = np.zeros((G, max(s_in, 1)), np.int32)
  rows_per_shard = np.ones((G, t_max), np.int32)
  dest = np.zeros((G, t_max, rs_max, n_c), np.int32)
  local_off = np.zeros((G, t_max, rs_max, n_c), np.int32)
  mean_mask = np.zeros((G, f_out), np.float32)
  shards: list[Shard] = []
  rows_local = 1
  max_items = 0
  for g, feats in enumerate(group_features):
    tabs = group_tables[g]
    tindex = {t: i for i, t in enumerate(tabs)}
    cost = {t: fs.table(t).vocab_size * dim + 1e3 * sum(
        fs.features[f].max_bag for f in feats if fs.features[f].table == t) for t in tabs}
    fill = [0] * members
    placement = _balanced_table_wise(tabs, cost, members) if kind == "table_wise" else {}
    for i, t in enumerate(tabs):
      V = fs.table(t).vocab_size
      if kind == "row_wise":
        rps = -(-V // members)
        rows_per_shard[g, i] = rps
        for rs in range(members):
          r0, r1 = min(V, rs * rps), min(V, (rs + 1) * rps)
          dest[g, i, rs, 0] = rs
          local_off[g, i, rs, 0] = fill[rs]
          shards.append(Shard(g, rs, t, r0, r1, 0, dim, fill[rs]))
          fill[rs] += r1 - r0
      else:
        rows_per_shard[g, i] = V
        for c in range(n_c):
          m = placement[t] if kind == "table_wise" else (i + c) % members
          dest[g, i, 0, c] = m
          local_off[g, i, 0, c] = fill[m]
          shards.append(Shard(g, m, t, 0, V, c * W, (c + 1) * W, fill[m]))
          fill[m] += V
    rows_local = max(rows_local, max(fill))
    # slots and outputs
    for f, cols, pos in zip(feats, group_slot_columns[g], group_out_positions[g]):
      for col in cols:
        slot_table[g, col] = tindex[fs.features[f].table]
        slot_out[g, col] = pos
      if fs.features[f].pooling == "mean":
        mean_mask[g, pos] = 1.0
    # worst-case ids per member per input row
    per_member = np.zeros(members, np.int64)
    for f, cols in zip(feats, group_slot_columns[g]):
      i = tindex[fs.features[f].table]
      owners = set(dest[g, i, :(members if kind == "row_wise" else 1), :].reshape(-1).tolist())
      for m in owners:
        per_member[m] += len(cols)
    max_items = max(max_items, int(per_member.max()) if len(feats) else 0)

  # return buffers: which (feature, col shard) outputs each member contributes to
  pair_pos = np.full((G, members, f_out, n_c), -1, np.int32)
  lists = [[[] for _ in range(members)] for _ in range(G)]
  for g, feats in enumerate(group_features):
    tindex = {t: i for i, t in enumerate(group_tables[g])}
    for f, pos in zip(feats, group_out_positions[g]):
      i = tindex[fs.features[f].table]
      n_rs = members if kind == "row_wise" else 1
      for rs in range(n_rs):
        for c in range(n_c):
          m = dest[g, i, rs, c]
          if pair_pos[g, m, pos, c] < 0:
            pair_pos[g, m, pos, c] = len(lists[g][m])
            lists[g][m].append(pos * n_c + c)
  o_max = max(1, max(len(l) for gl in lists for l in gl))
  ret_target = np.full((G, members, o_max), f_out * n_c, np.int32)
  for g in range(G):
    for m in range(members):
      ret_target[g, m, :len(lists[g][m])] = lists[g][m]
  static = _static_routing(kind, members, n_c, f_out, o_max, slot_table, slot_out, dest, local_off, pair_pos)
  return StackLayout(kind, G, members, dim, n_c, group_tables, shards, int(rows_local), int(f_out),
                     int(o_max), slot_table, slot_out, rows_per_shard, dest, local_off, pair_pos,
                     ret_target, mean_mask, max(1, max_items), static)


# --- logical <-> physical -------------------------------------------------------------------------

def device_group_member(mesh_shape: Sequence[int], axis_names: Sequence[str],
                        selector_axes: Sequence[str], routing_axes: Sequence[str]) -> np.ndarray:
  """int [N, 2]: (group, member) of the device at each flat mesh position (major-to-minor order)."""
  sizes = dict(zip(axis_names, mesh_shape))
  out = np.zeros((int(np.prod(mesh_shape)), 2), np.int64)
  for p, idx in enumerate(np.ndindex(*mesh_shape)):
    coord = dict(zip(axis_names, idx))
    g = m = 0
    for a in selector_axes:
      g = g * sizes[a] + coord[a]
    for a in routing_axes:
      m = m * sizes[a] + coord[a]
    out[p] = (g, m)
  return out


def tables_to_blocks(layout: StackLayout, tables: dict[str, np.ndarray],
                     group_member: np.ndarray, fill: float = 0.0) -> np.ndarray:
  """Logical ``{name: [V, D]}`` -> physical blocks ``[N, R_local, W]`` (numpy)."""
  N = group_member.shape[0]
  dtype = next(iter(tables.values())).dtype if tables else np.float32
  blocks = np.full((N, layout.rows_local, layout.width), fill, dtype)
  by_gm: dict[tuple[int, int], list[Shard]] = {}
  for s in layout.shards:
    by_gm.setdefault((s.group, s.member), []).append(s)
  for p, (g, m) in enumerate(group_member):
    for s in by_gm.get((int(g), int(m)), []):
      n = s.row_end - s.row_start
      blocks[p, s.local_offset:s.local_offset + n] = tables[s.table][s.row_start:s.row_end, s.col_start:s.col_end]
  return blocks


def blocks_to_tables(layout: StackLayout, blocks: np.ndarray, group_member: np.ndarray,
                     fs: FeatureSet) -> dict[str, np.ndarray]:
  """Physical blocks ``[N, R_local, W]`` -> logical ``{name: [V, D]}`` (first replica of each shard)."""
  first = {}
  for p, (g, m) in enumerate(group_member):
    first.setdefault((int(g), int(m)), p)
  out = {}
  for s in layout.shards:
    if s.table not in out:
      t = fs.table(s.table)
      out[s.table] = np.zeros((t.vocab_size, t.dim) + blocks.shape[3:], blocks.dtype)
    p = first[(s.group, s.member)]
    n = s.row_end - s.row_start
    out[s.table][s.row_start:s.row_end, s.col_start:s.col_end] = blocks[p, s.local_offset:s.local_offset + n]
  return out
