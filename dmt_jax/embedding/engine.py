"""The sharded embedding engine: one object owns the plan, the mesh and every shard_map.

Two modes share one code path:

* **flat** — the hybrid-parallel baseline: tables sharded (``table_wise`` / ``row_wise`` /
  ``column_wise`` / ``data_parallel``) over the *routing axes* (default: all mesh axes), lookup with a
  global all-to-all, replicated over the remaining axes.
* **towers** — SPTT: ids cross the peer axes once, the lookup runs over the local axes only, tower
  modules compress, tower outputs cross back. The flat ``table_row_wise`` baseline is this path with
  identity towers and one balanced tower per group (TorchRec's TWRW).

A step uses the engine in four calls, all on global arrays (batch sharded over all mesh axes):

    routed = engine.route(ids, weights)             # bucketise + exchange ids (no gradient)
    rows   = engine.gather(tables, routed)           # the only table read, [N, M*C, W]
    emb    = engine.embed(rows, tower_params, routed)  # differentiable: pool, towers, exchange back
    tables, opt = engine.update(tables, opt, routed, d_rows)   # row-sparse optimizer on the owners

Gradients are taken w.r.t. ``rows`` (and tower params), never w.r.t. the tables.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from dmt_jax import sptt
from dmt_jax.embedding import lookup, plan
from dmt_jax.embedding.sparse_optim import SparseOptimizer, dense_reference_step
from dmt_jax.features import FeatureSet
from dmt_jax.topology import Topology

FLAT_SHARDING_TYPES = ("table_wise", "row_wise", "column_wise", "data_parallel", "table_row_wise")


def _leading(x):
  return x[None]


@dataclasses.dataclass
class EngineConfig:
  """What the engine needs besides the feature set and the mesh."""
  mode: str = "flat"                      # flat | towers
  sharding: str = "table_wise"            # flat: FLAT_SHARDING_TYPES; towers: sharding inside a group
  routing_axes: tuple[str, ...] | None = None   # flat: axes tables are sharded over (default all)
  towers: Sequence[Sequence[int]] | None = None  # towers: feature indices per tower
  capacity_factor: float | None = None    # None: capacity sized so overflow is impossible
  num_col_shards: int | None = None
  wire_dtype: Any = None                  # towers: dtype of tower outputs on the peer exchange
  init_scale: float | None = None         # table init U(-s, s); None: 1/sqrt(vocab) (DLRM)
  static_routing: bool = True             # id-independent layouts (TW/CW/DP) skip bucketing where it
                                          # sends no more bytes (lookup.py)
  replicate_tower_params: bool = False    # towers: every device holds all T towers' params (see
                                          # ``tower_param_spec``) instead of only its group's k


class EmbeddingEngine:
  """Sharded embedding lookup + row-sparse update for one feature set on one mesh."""

  def __init__(self, fs: FeatureSet, topology: Topology, mesh: Mesh, cfg: EngineConfig,
               optimizer: SparseOptimizer, tower_apply=None, batch_per_device: int | None = None):
    self.fs, self.topology, self.mesh, self.cfg, self.optimizer = fs, topology, mesh, cfg, optimizer
    self.tower_apply = tower_apply
    self.all_axes = tuple(mesh.axis_names)
    if batch_per_device is None:
      raise ValueError("batch_per_device is required (static shapes)")
    self.batch_per_device = int(batch_per_device)
    self.dim = fs.uniform_dim()
    sizes = dict(zip(mesh.axis_names, mesh.devices.shape))
    kind = cfg.sharding
    self.send_weights = any(f.weighted for f in fs.features)
    if cfg.mode == "flat" and kind == "table_row_wise":
      if topology.tower_level is None:
        raise ValueError("table_row_wise needs a topology with a tower_level (table per group, rows inside)")
      G = topology.num_groups
      towers = _balanced_groups(fs, G)
      self._setup_towers(towers, "row_wise", sizes, identity=True)
    elif cfg.mode == "flat":
      if kind not in FLAT_SHARDING_TYPES:
        raise ValueError(f"sharding must be one of {FLAT_SHARDING_TYPES}, got {kind!r}")
      A = self.all_axes if cfg.routing_axes is None else tuple(cfg.routing_axes)
      for a in A:
        if a not in sizes:
          raise ValueError(f"routing axis {a!r} is not a mesh axis {self.all_axes}")
      if kind == "data_parallel":
        A = ()
      self.routing_axes, self.selector_axes = A, ()
      self.replica_axes = tuple(a for a in self.all_axes if a not in A)
      M = int(np.prod([sizes[a] for a in A])) if A else 1
      self.tl = None
      self.identity_towers = False
      self.layout = plan.build_layout(fs, kind, M, [list(range(fs.num_features))],
                                      num_col_shards=cfg.num_col_shards)
      self.scope = "embedding_exchange"
    elif cfg.mode == "towers":
      if cfg.towers is None:
        raise ValueError("mode='towers' needs a tower assignment (config towers or towers_file)")
      if kind not in ("table_wise", "row_wise", "column_wise"):
        raise ValueError(f"sharding inside a tower group must be table_wise, row_wise or column_wise, got {kind!r}")
      self._setup_towers(cfg.towers, kind, sizes, identity=tower_apply is None)
    else:
      raise ValueError(f"engine mode must be 'flat' or 'towers', got {cfg.mode!r}")
    self.members = self.layout.members
    # The static path pads every output to the longest bag L; take it only when that costs no more
    # all-to-all bytes than the bucketed path's overflow-free capacity (e.g. one-hot features).
    st = self.layout.static
    self.static_routing = (bool(cfg.static_routing) and st is not None
                           and st.items <= self.layout.max_items_per_member)
    self._set_batch(self.batch_per_device)
    self.group_member = plan.device_group_member(mesh.devices.shape, self.all_axes,
                                                 self.selector_axes, self.routing_axes)
    self.spec = P(self.all_axes)
    self.sharding = NamedSharding(mesh, self.spec)

  def _setup_towers(self, towers, kind, sizes, identity):
    topo = self.topology
    if topo.tower_level is None:
      raise ValueError("towers need a topology with a tower_level")
    self.tl = sptt.tower_layout(self.fs, towers, topo.num_groups)
    self.identity_towers = identity
    self.routing_axes, self.selector_axes = topo.local_axes, topo.peer_axes
    self.replica_axes = ()
    M = topo.group_size
    tl = self.tl
    self.layout = plan.build_layout(self.fs, kind, M, tl.group_features, tl.group_slot_columns,
                                    tl.group_out_positions, f_out=tl.towers_per_group * tl.f_t,
                                    num_col_shards=self.cfg.num_col_shards)
    self.scope = "intra_tower_lookup"

  def _set_batch(self, batch_per_device: int) -> None:
    self.batch_per_device = int(batch_per_device)
    groups = self.topology.num_groups if self.tl is not None else 1
    self.rows_in = groups * self.batch_per_device
    if self.static_routing:   # every member receives exactly K items per sample: nothing can overflow
      self.capacity = self.rows_in * self.layout.static.items
    else:
      self.capacity = self.layout.capacity(self.rows_in, self.cfg.capacity_factor,
                                           self.layout.slot_table.shape[1])
    self.static = lookup.LookupStatic(self.members, self.capacity, self.rows_in, self.send_weights,
                                      self.routing_axes)

  def with_batch(self, batch_per_device: int) -> "EmbeddingEngine":
    """The same plan for another per-device batch (e.g. eval): only static sizes change."""
    other = copy.copy(self)
    other._set_batch(batch_per_device)
    return other

  # --- helpers ---------------------------------------------------------------------------------
  @property
  def num_towers(self) -> int:
    return 0 if self.tl is None else len(self.tl.towers)

  def _group_index(self):
    if not self.selector_axes:
      return jnp.int32(0)
    return jax.lax.axis_index(self.selector_axes)

  def tower_param_spec(self) -> P:
    """PartitionSpec of the stacked ``[T, ...]`` tower params.

    Default: sharded over the peer axes, so a group holds its own k towers and their gradients are
    reduced over the local axes only (an all-reduce of its own, inside the group). Replicated
    (``replicate_tower_params``): every device holds all T towers and uses its group's k; the gradient
    is zero outside them, so one all-reduce over *all* devices sums each tower over its group — and
    XLA merges it with the dense gradients' all-reduce. That trades a collective per step for T/k
    times the tower-parameter bytes on the cross-host reduction: worth it for small modules (``mix``).
    """
    if self.cfg.replicate_tower_params or not self.selector_axes:
      return P()
    return P(self.selector_axes)

  def _own_towers(self, tparams):
    """Inside shard_map: this group's k towers ``[k, ...]`` from replicated ``[T, ...]`` params."""
    if not (self.cfg.replicate_tower_params and self.selector_axes):
      return tparams
    k = self.tl.towers_per_group
    g = self._group_index()
    # Marked device-varying over all axes at once, so the transpose is *one* psum over all devices
    # (letting the slice and the data make it varying piecemeal gives a psum per axis group).
    tparams = jax.tree.map(lambda p: jax.lax.pcast(p, self.all_axes, to="varying"), tparams)
    return jax.tree.map(lambda p: jax.lax.dynamic_slice_in_dim(p, g * k, k, axis=0), tparams)

  def _smap(self, f, in_specs, out_specs):
    return jax.shard_map(f, mesh=self.mesh, in_specs=in_specs, out_specs=out_specs, check_vma=True)

  # --- tables ------------------------------------------------------------------------------------
  def init_logical(self, key) -> dict[str, np.ndarray]:
    """Logical tables ``{name: [V, D]}`` drawn per table (independent of the plan), U(-s, s)."""
    out = {}
    for i, t in enumerate(self.fs.tables):
      s = self.cfg.init_scale if self.cfg.init_scale is not None else 1.0 / np.sqrt(t.vocab_size)
      out[t.name] = np.asarray(jax.random.uniform(jax.random.fold_in(key, i), (t.vocab_size, t.dim),
                                                  jnp.float32, -s, s))
    return out

  def tables_from_logical(self, tables: dict[str, np.ndarray]):
    """Logical tables -> sharded physical blocks ``[N, R_local, W]``."""
    blocks = plan.tables_to_blocks(self.layout, tables, self.group_member)
    return jax.device_put(blocks, self.sharding)

  def tables_to_logical(self, blocks) -> dict[str, np.ndarray]:
    return plan.blocks_to_tables(self.layout, np.asarray(jax.device_get(blocks)), self.group_member, self.fs)

  def init_optimizer_state(self, blocks):
    if self.optimizer.name == "sgd":
      return ()
    # Built sharded on device: never materialise the whole accumulator on one device.
    make = jax.jit(lambda: self.optimizer.init_state(blocks.shape, blocks.dtype), out_shardings=self.sharding)
    return make()

  def optimizer_state_to_logical(self, state) -> dict[str, np.ndarray]:
    """Accumulators in logical shape (``[V, D]`` adagrad, ``[V]`` row-wise adagrad)."""
    if isinstance(state, tuple):
      return {}
    arr = np.asarray(jax.device_get(state))
    if arr.ndim == 2:                        # row-wise: treat as width-1 block
      arr = np.repeat(arr[..., None], self.layout.width, axis=-1)
      full = plan.blocks_to_tables(self.layout, arr, self.group_member, self.fs)
      return {k: v[:, 0] for k, v in full.items()}
    return plan.blocks_to_tables(self.layout, arr, self.group_member, self.fs)

  def optimizer_state_from_logical(self, logical: dict[str, np.ndarray], blocks):
    if self.optimizer.name == "sgd":
      return ()
    if self.optimizer.name == "rowwise_adagrad":
      wide = {k: np.repeat(v[:, None], self.dim, axis=1) for k, v in logical.items()}
      arr = plan.tables_to_blocks(self.layout, wide, self.group_member,
                                  fill=self.optimizer.initial_accumulator)[..., 0]
    else:
      arr = plan.tables_to_blocks(self.layout, logical, self.group_member,
                                  fill=self.optimizer.initial_accumulator)
    return jax.device_put(arr, self.sharding)

  # --- the four step functions -------------------------------------------------------------------
  def route(self, ids, weights):
    """Global ids/weights ``[B_global, S]`` -> routed dict of per-device arrays (leading dim N)."""
    def f(ids, weights):
      g = self._group_index()
      if self.tl is not None:
        ids, weights = sptt.peer_exchange_ids(ids, weights, self.tl, self.selector_axes, self.send_weights)
      with jax.named_scope(self.scope):
        route = lookup.static_route if self.static_routing else lookup.route
        r = route(ids, weights, self.layout, self.static, g)
      return jax.tree.map(_leading, r)
    spec = self.spec
    out_spec = {"lrow": spec, "key": spec, "w": spec, "counts": spec, "overflow": spec}
    return self._smap(f, (P(self.all_axes, None), P(self.all_axes, None)), out_spec)(ids, weights)

  def gather(self, blocks, routed):
    def f(block, lrow):
      return lookup.gather_rows(block[0], lrow[0])[None]
    return self._smap(f, (self.spec, self.spec), self.spec)(blocks, routed["lrow"])

  def embed(self, rows, tower_params, routed):
    """Differentiable in ``rows`` and ``tower_params``: -> embeddings ``[B_global, F', D]``.

    F' = F (flat, or identity towers unpermuted to the flat order) or T*K (compressing towers).
    """
    tl = self.tl

    def f(rows, routed, tparams):
      g = self._group_index()
      routed = jax.tree.map(lambda x: x[0], routed)
      with jax.named_scope(self.scope):
        if self.static_routing:
          pooled = lookup.static_pool_and_return(rows[0], routed, self.layout, self.static, g)
        else:
          pooled = lookup.pool_and_return(rows[0], routed, self.layout, self.static, g)
      if tl is None:
        return pooled
      y = sptt.apply_towers(pooled, self._own_towers(tparams), None if self.identity_towers else self.tower_apply,
                            tl)
      y = sptt.exchange_back(y, tl, self.selector_axes, self.cfg.wire_dtype)
      return sptt.unpermute(y, tl) if self.identity_towers else y

    routed_in = {k: routed[k] for k in ("key", "w", "counts")}
    r_spec = {k: self.spec for k in routed_in}
    t_spec = self.tower_param_spec()
    tparams = tower_params if tower_params is not None else {}
    t_specs = jax.tree.map(lambda _: t_spec, tparams)
    return self._smap(f, (self.spec, r_spec, t_specs), P(self.all_axes, None, None))(rows, routed_in, tparams)

  def update(self, blocks, opt_state, routed, d_rows):
    """Row-sparse optimizer step on each owner; replicas gather every replica's row gradients."""
    R_axes = self.replica_axes
    opt = self.optimizer

    def f(block, state, lrow, key, d):
      block, lrow, key, d = block[0], lrow[0], key[0], d[0]
      rows = jnp.where(key >= 0, lrow, block.shape[0])
      if R_axes:
        with jax.named_scope("embedding_grad_sync"):
          rows = jax.lax.all_gather(rows, R_axes, tiled=True)
          d = jax.lax.all_gather(d, R_axes, tiled=True)
      st = jax.tree.map(lambda x: x[0], state)
      nb, ns = opt.apply(block, st, rows, d)
      return nb[None], jax.tree.map(_leading, ns)

    s_spec = jax.tree.map(lambda _: self.spec, opt_state)
    return self._smap(f, (self.spec, s_spec, self.spec, self.spec, self.spec), (self.spec, s_spec))(
        blocks, opt_state, routed["lrow"], routed["key"], d_rows)

  def update_dense(self, blocks, opt_state, routed, d_rows):
    """Baseline for benchmarks: the update ``jax.grad`` w.r.t. the tables would give.

    Row gradients are scattered into a dense ``[R_local, W]`` gradient per device and the optimizer
    runs over the whole block — O(table) work per step, what the row-sparse ``update`` avoids.
    Numerically equal to ``update`` (up to summation order).
    """
    R_axes = self.replica_axes
    opt = self.optimizer

    def f(block, state, lrow, key, d):
      block, lrow, key, d = block[0], lrow[0], key[0], d[0]
      rows = jnp.where(key >= 0, lrow, block.shape[0])
      grad = jnp.zeros_like(block).at[rows].add(d, mode="drop")
      if R_axes:
        with jax.named_scope("embedding_grad_sync"):
          grad = jax.lax.psum(grad, R_axes)
      st = jax.tree.map(lambda x: x[0], state)
      nb, ns = dense_reference_step(opt, block, st, grad)
      return nb[None], jax.tree.map(_leading, ns)

    s_spec = jax.tree.map(lambda _: self.spec, opt_state)
    return self._smap(f, (self.spec, s_spec, self.spec, self.spec, self.spec), (self.spec, s_spec))(
        blocks, opt_state, routed["lrow"], routed["key"], d_rows)

  # --- tower params --------------------------------------------------------------------------------
  def tower_param_sharding(self, tower_params):
    spec = self.tower_param_spec()
    return jax.tree.map(lambda _: NamedSharding(self.mesh, spec), tower_params)

  def output_features(self, tower_vectors: int | None = None) -> int:
    """F' of ``embed``'s output."""
    if self.tl is None or self.identity_towers:
      return self.fs.num_features
    return self.num_towers * int(tower_vectors)


def _balanced_groups(fs: FeatureSet, G: int) -> list[list[int]]:
  """One tower per group for TWRW: features (grouped by table) balanced by table bytes + lookups."""
  by_table: dict[str, list[int]] = {}
  for i, f in enumerate(fs.features):
    by_table.setdefault(f.table, []).append(i)
  cost = {t: fs.table(t).vocab_size * fs.table(t).dim + 1e3 * sum(fs.features[i].max_bag for i in fi)
          for t, fi in by_table.items()}
  if len(by_table) < G:
    raise ValueError(f"table_row_wise: {len(by_table)} tables cannot give work to {G} groups")
  loads = [0.0] * G
  groups: list[list[int]] = [[] for _ in range(G)]
  for t in sorted(by_table, key=lambda t: (-cost[t], t)):
    g = min(range(G), key=lambda i: (loads[i], i))
    groups[g].extend(by_table[t])
    loads[g] += cost[t]
  return [sorted(g) for g in groups]
