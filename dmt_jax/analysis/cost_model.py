"""Alpha-beta communication + roofline compute model of one training step on a real cluster.

A cluster is a list of link levels, fastest (innermost) first: each with a per-device one-direction
bandwidth beta (bytes/s), a per-collective latency alpha (s) and a span (devices reachable without a
slower level, e.g. 8 GPUs of one NVLink host; ``None`` = everything). A collective of per-device
operand bytes ``B`` over ``n`` members puts ``V = factor * B`` bytes on the wire per device:

  all-to-all          (n-1)/n * B        (1/n of the operand stays local)
  all-reduce (ring)   2(n-1)/n * B
  reduce-scatter      (n-1)/n * B
  all-gather          (n-1) * B          (= (n-1)/n of the gathered result n*B)
  collective-permute  B

and takes ``alpha + V / beta`` on one level. A collective spanning several levels is paced by the
slowest level it crosses: ring collectives run entirely at that level's beta (``ring="flat"``; with
``ring="hierarchical"`` the devices of the level below share the slow traffic); an all-to-all splits
its ``V`` by where the peers are — level L carries the share of peers first reached at L — and its
levels run concurrently, so ``t = alpha_outermost + max_L(V_L / beta_L)``. One alpha per
collective is the pipelined/one-shot latency; it under-counts rings over many hops at tiny sizes.

Layout assumption (to place members on levels without the explicit positions): tower groups are
contiguous blocks of ``devices_per_group`` devices, a collective's members are spread evenly over the
tower groups it spans (``local_members`` per group, groups contiguous), and inside a group members
are spread evenly too when the group is larger than a level's span.

Compute is a roofline: ``max(flops / peak_flops, bytes_moved / mem_bandwidth)``. The step total is
``compute + intra + cross`` (no overlap) unless ``overlap=True`` (then ``max(compute, comm)``).

Weak scaling (``engine_bytes``, ``tower_plan``, ``scale_step``): how the per-device bytes of each
collective role of *this* engine grow with the device count (static capacities sized for the busiest
member), used to move collectives measured on an emulated mesh to a cluster of N devices.
``calibrate_local_mesh`` builds the ``local`` preset from in-process collectives; ``spearman``
compares predicted and measured rankings.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Mapping

import numpy as np

from dmt_jax.analysis import hlo

# ----------------------------------------------------------------------------------------------
# Clusters


@dataclasses.dataclass(frozen=True)
class Link:
  """One level of the network: per-device one-direction bandwidth (B/s), latency (s), span."""
  name: str
  bandwidth: float
  latency: float
  span: int | None = None  # devices inside one domain of this level; None = the whole cluster

  def reaches(self, devices: int) -> bool:
    return self.span is None or devices <= self.span


@dataclasses.dataclass(frozen=True)
class Cluster:
  """Link levels (fastest first) plus per-device peak FLOP/s and memory bandwidth (B/s)."""
  name: str
  levels: tuple[Link, ...]
  peak_flops: float
  mem_bandwidth: float
  source: str = ""

  def __post_init__(self):
    if not self.levels:
      raise ValueError("a cluster needs at least one link level")
    if self.levels[-1].span is not None:
      object.__setattr__(self, "levels", self.levels[:-1] + (
          dataclasses.replace(self.levels[-1], span=None),))

  def with_span(self, level: str, span: int | None) -> "Cluster":
    """Copy with one level's span changed (e.g. the TPU slice size before DCN)."""
    if level not in [l.name for l in self.levels]:
      raise ValueError(f"no level {level!r} in {self.name}; levels are {[l.name for l in self.levels]}")
    return dataclasses.replace(self, levels=tuple(
        dataclasses.replace(l, span=span) if l.name == level else l for l in self.levels))

  def with_bandwidth(self, level: str, bandwidth: float) -> "Cluster":
    return dataclasses.replace(self, levels=tuple(
        dataclasses.replace(l, bandwidth=bandwidth) if l.name == level else l for l in self.levels))


_GB = 1e9
_Gb = 1e9 / 8

# Per-device figures. Bandwidths are one direction (NVIDIA quotes NVLink bidirectional totals: halve).
# NIC figures are line rate per GPU; latencies are typical NCCL small-message orders of magnitude
# (nccl-tests), not datasheet values.
PRESETS: dict[str, Cluster] = {
    # NVIDIA Tesla V100 SXM2 datasheet: NVLink2 300 GB/s total (6 links x 25 GB/s per direction),
    # 125 TFLOPS fp16 tensor, HBM2 900 GB/s. DGX-1 (V100) datasheet: 4x 100 Gb/s EDR InfiniBand for
    # 8 GPUs, i.e. 50 Gb/s per GPU. DGX-1's hybrid cube-mesh is not all-to-all: 150 GB/s is optimistic.
    "v100_dgx1": Cluster(
        "v100_dgx1", (Link("nvlink2", 150 * _GB, 5e-6, span=8), Link("ib_edr", 50 * _Gb, 10e-6)),
        peak_flops=125e12, mem_bandwidth=900 * _GB,
        source="NVIDIA V100 datasheet; NVIDIA DGX-1 datasheet (4x EDR IB per 8 GPUs)"),
    # NVIDIA A100 80GB SXM datasheet: NVLink3 600 GB/s bidirectional, 312 TFLOPS bf16 dense,
    # HBM2e 2039 GB/s. DGX A100 datasheet: 8x single-port ConnectX-6 200 Gb/s HDR IB (one per GPU).
    "a100_dgx": Cluster(
        "a100_dgx", (Link("nvlink3", 300 * _GB, 5e-6, span=8), Link("ib_hdr", 200 * _Gb, 10e-6)),
        peak_flops=312e12, mem_bandwidth=2039 * _GB,
        source="NVIDIA A100 datasheet; NVIDIA DGX A100 datasheet (8x 200 Gb/s HDR)"),
    # NVIDIA H100 SXM datasheet: NVLink4 900 GB/s bidirectional, 989 TFLOPS bf16 dense (1979 with
    # sparsity), HBM3 3.35 TB/s. DGX H100 datasheet: 8x ConnectX-7 400 Gb/s NDR (one per GPU).
    "h100_dgx": Cluster(
        "h100_dgx", (Link("nvlink4", 450 * _GB, 5e-6, span=8), Link("ib_ndr", 400 * _Gb, 10e-6)),
        peak_flops=989e12, mem_bandwidth=3350 * _GB,
        source="NVIDIA H100 datasheet; NVIDIA DGX H100 datasheet (8x 400 Gb/s NDR)"),
    # NVIDIA H200 SXM datasheet: as H100 but HBM3e 4.8 TB/s; DGX H200: 8x 400 Gb/s ConnectX-7.
    # MLCommons H200 system description: "18x 4th Gen NVLink, 900GB/s".
    "h200_dgx": Cluster(
        "h200_dgx", (Link("nvlink4", 450 * _GB, 5e-6, span=8), Link("ib_ndr", 400 * _Gb, 10e-6)),
        peak_flops=989e12, mem_bandwidth=4800 * _GB,
        source="NVIDIA H200 datasheet; NVIDIA DGX H200 datasheet (8x 400 Gb/s NDR)"),
    # Cloud TPU v4 docs: 275 TFLOPS bf16, HBM2 1200 GB/s, 4096-chip pod (3D torus). ICI: 6 links per
    # chip, 400 Gb/s = 50 GB/s each direction per link (Jouppi et al., ISCA 2023) -> 300 GB/s injection;
    # a torus all-to-all is bisection-limited, so this is optimistic. DCN per chip: not published for
    # v4; we assume v5p's 50 Gb/s. Span = the pod; set the slice size with with_span("ici", chips).
    "tpu_v4": Cluster(
        "tpu_v4", (Link("ici", 300 * _GB, 2e-6, span=4096), Link("dcn", 50 * _Gb, 20e-6)),
        peak_flops=275e12, mem_bandwidth=1200 * _GB,
        source="cloud.google.com/tpu/docs/v4; Jouppi et al. ISCA 2023 (ICI links); DCN assumed = v5p"),
    # Cloud TPU v5p docs: 459 TFLOPS bf16, HBM 2765 GB/s, ICI 1200 GB/s bidirectional per chip,
    # DCN 50 Gb/s per chip, 8960-chip pod (3D torus).
    "tpu_v5p": Cluster(
        "tpu_v5p", (Link("ici", 600 * _GB, 2e-6, span=8960), Link("dcn", 50 * _Gb, 20e-6)),
        peak_flops=459e12, mem_bandwidth=2765 * _GB,
        source="cloud.google.com/tpu/docs/v5p (ICI 1200 GBps bidirectional, DCN 50 Gbps per chip)"),
}


def measure_local_machine(seconds: float = 2.0) -> Cluster:
  """The ``"local"`` preset: this machine's numbers, measured with numpy in well under ``seconds``.

  peak_flops = best f32 512^3 matmul rate (all cores); mem_bandwidth = memcpy traffic (read + write)
  of a 32 MiB buffer; both link levels (emulated devices share memory) = memcpy copy rate, latency =
  one 4 KiB copy. These are upper bounds for what XLA:CPU's collectives between fake devices reach.
  """
  deadline = time.perf_counter() + seconds

  def best(fn, reps):
    t_best = math.inf
    for _ in range(reps):
      t0 = time.perf_counter()
      fn()
      t_best = min(t_best, time.perf_counter() - t0)
      if time.perf_counter() > deadline:
        break
    return max(t_best, 1e-9)

  n = 512
  a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
  b = a.T.copy()
  a @ b  # warm up BLAS threads
  flops = 2 * n ** 3 / best(lambda: a @ b, 5)
  src = np.ones(32 * 2 ** 20, np.uint8)
  dst = np.empty_like(src)
  copy_rate = src.nbytes / best(lambda: np.copyto(dst, src), 5)
  small_src, small_dst = src[:4096], dst[:4096]
  latency = best(lambda: np.copyto(small_dst, small_src), 20)
  return Cluster("local", (Link("memory", copy_rate, latency, span=None),
                           Link("memory_cross", copy_rate, latency)),
                 peak_flops=flops, mem_bandwidth=2 * copy_rate,
                 source="measured by measure_local_machine()")


def calibrate_local_mesh(mesh, local_axes: tuple[str, ...], peer_axes: tuple[str, ...],
                         peak_flops: float, mem_bandwidth: float, nbytes: int = 2 ** 21,
                         reps: int = 5) -> Cluster:
  """The ``"local"`` preset calibrated on an emulated mesh: what XLA's collectives really reach here.

  Times an in-process ``all_to_all`` of ``nbytes`` per device over ``local_axes`` (level ``intra``,
  span = their size) and over ``peer_axes`` (level ``cross``), best of ``reps`` after a warm-up, and
  a 4 KiB one for the latency. Bandwidth = ``(n-1)/n * nbytes / t`` per device. The fake devices
  share this machine, so ``peak_flops`` and ``mem_bandwidth`` (whole-machine rates, e.g. from
  ``bench.machine_rates``) are divided by the device count.
  """
  import jax
  import jax.numpy as jnp
  from jax.sharding import NamedSharding, PartitionSpec as P

  axes = tuple(mesh.axis_names)
  ndev = int(mesh.devices.size)
  sizes = dict(zip(axes, mesh.devices.shape))

  def timed(over: tuple[str, ...], per_device: int) -> float:
    n = math.prod(sizes[a] for a in over)
    cols = max(n, (per_device // 4) // n * n)
    x = jax.device_put(jnp.ones((ndev, cols), jnp.float32), NamedSharding(mesh, P(axes, None)))
    f = jax.jit(jax.shard_map(lambda v: jax.lax.all_to_all(v.reshape(n, -1), over, 0, 0, tiled=True)
                              .reshape(1, -1), mesh=mesh, in_specs=P(axes, None),
                              out_specs=P(axes, None), check_vma=True))
    f(x).block_until_ready()
    t_best = math.inf
    for _ in range(reps):
      t0 = time.perf_counter()
      f(x).block_until_ready()
      t_best = min(t_best, time.perf_counter() - t0)
    return t_best

  levels = []
  for name, over in (("intra", tuple(local_axes)), ("cross", tuple(peer_axes))):
    n = math.prod(sizes[a] for a in over)
    if n < 2:
      continue
    latency = timed(over, 4096)
    t = max(timed(over, nbytes) - latency, 1e-9)
    span = math.prod(sizes[a] for a in local_axes) if name == "intra" else None
    levels.append(Link(name, (n - 1) / n * nbytes / t, latency, span=span))
  if not levels:
    raise ValueError("calibrate_local_mesh needs an axis group with at least 2 devices")
  return Cluster("local", tuple(levels), peak_flops=peak_flops / ndev, mem_bandwidth=mem_bandwidth / ndev,
                 source=f"calibrated on {ndev} emulated devices (in-process all-to-all)")


def get_cluster(preset: str | Cluster) -> Cluster:
  """A ``Cluster`` as is, a preset name, or ``"local"`` (measured now, ~0.1 s)."""
  if isinstance(preset, Cluster):
    return preset
  if preset == "local":
    return measure_local_machine()
  if preset not in PRESETS:
    raise ValueError(f"unknown cluster preset {preset!r}; choose one of {sorted(PRESETS)} or 'local'")
  return PRESETS[preset]


# ----------------------------------------------------------------------------------------------
# Collectives -> time


def traffic_factor(op: str, n: int) -> float:
  """Wire bytes per device / operand bytes per device, for ``n`` members."""
  if n <= 1:
    return 0.0
  if op in ("all-to-all", "ragged-all-to-all", "reduce-scatter"):
    return (n - 1) / n
  if op == "all-reduce":
    return 2 * (n - 1) / n
  if op == "all-gather":
    return float(n - 1)
  if op in ("collective-permute", "collective-broadcast"):
    return 1.0
  raise ValueError(f"unknown collective op {op!r}")


def members_within(cluster: Cluster, members: int, local_members: int, devices_per_group: int,
                   num_devices: int) -> list[int]:
  """For each level: how many members (self included) one device reaches without a slower level."""
  groups_spanned = max(1, members // max(local_members, 1))
  out = []
  for link in cluster.levels:
    span = num_devices if link.span is None else min(link.span, num_devices)
    if span >= devices_per_group:
      c = local_members * min(groups_spanned, max(1, span // devices_per_group))
    else:
      c = max(1, (local_members * span) // devices_per_group)
    out.append(min(members, c))
  out[-1] = members
  return out


def slowest_level(cluster: Cluster, members: int, local_members: int, devices_per_group: int,
                  num_devices: int) -> int:
  """Index of the slowest level a collective of ``members`` crosses (the one that paces it)."""
  reach = members_within(cluster, members, local_members, devices_per_group, num_devices)
  return next(k for k, c in enumerate(reach) if c >= members)


RING_ALGORITHMS = ("flat", "hierarchical")


def collective_time(cluster: Cluster, op: str, nbytes: float, members: int, local_members: int,
                    devices_per_group: int, num_devices: int, ring: str = "flat") -> float:
  """Seconds for one collective (alpha-beta, paced by the slowest level crossed).

  ring: how all-reduce / reduce-scatter / all-gather spanning levels run. ``"flat"``: one ring, all
  of ``V`` at the slowest level's beta (the conservative default). ``"hierarchical"``: as NCCL's
  multi-channel rings or reduce-scatter / all-reduce / all-gather per level do, the ``r`` members a
  device reaches on the level below share the slow level's traffic (each through its own NIC), so
  level k carries ``V / reach[k-1]`` while level 0 carries ``V``; ``t = alpha + max_k``.
  """
  if ring not in RING_ALGORITHMS:
    raise ValueError(f"ring must be one of {RING_ALGORITHMS}, got {ring!r}")
  if members <= 1 or nbytes <= 0:
    return 0.0
  volume = traffic_factor(op, members) * nbytes
  reach = members_within(cluster, members, local_members, devices_per_group, num_devices)
  outer = next(k for k, c in enumerate(reach) if c >= members)  # slowest level crossed
  if op in ("all-to-all", "ragged-all-to-all"):
    prev, worst = 1, 0.0
    for k in range(outer + 1):
      share = (reach[k] - prev) / (members - 1)
      prev = reach[k]
      worst = max(worst, volume * share / cluster.levels[k].bandwidth)
    return cluster.levels[outer].latency + worst
  link = cluster.levels[outer]
  if ring == "hierarchical" and outer > 0:
    worst = volume / cluster.levels[0].bandwidth
    for k in range(1, outer + 1):
      worst = max(worst, volume / max(reach[k - 1], 1) / cluster.levels[k].bandwidth)
    return link.latency + worst
  return link.latency + volume / link.bandwidth


def compute_time(cluster: Cluster, flops: float, bytes_moved: float) -> float:
  """Roofline: ``max(flops / peak_flops, bytes_moved / mem_bandwidth)``."""
  return max(flops / cluster.peak_flops, bytes_moved / cluster.mem_bandwidth)


def _members(c: Mapping, devices_per_group: int) -> tuple[int, int]:
  if "members" in c:
    return int(c["members"]), int(c.get("local_members", c["members"]))
  groups = c["groups"]
  n = max((len(g) for g in groups), default=1)
  local = 1
  for g in groups:
    counts: dict[int, int] = {}
    for p in g:
      counts[p // devices_per_group] = counts.get(p // devices_per_group, 0) + 1
    local = max(local, max(counts.values(), default=1))
  return n, local


def _as_list(collectives) -> list[Mapping]:
  if isinstance(collectives, Mapping):
    return list(collectives["collectives"])
  return [dataclasses.asdict(c) if dataclasses.is_dataclass(c) else c for c in collectives]


def predict_step(collectives, flops: float, bytes_moved: float, cluster_preset: str | Cluster,
                 num_devices: int, devices_per_group: int, overlap: bool = False,
                 ring: str = "flat") -> dict:
  """Predicted step time on ``cluster_preset`` with ``num_devices`` in groups of ``devices_per_group``.

  collectives: ``hlo.summarize(...)`` output, a list of ``hlo.classify`` dicts (positions in
    ``groups`` are then read against ``devices_per_group``, so pass the mesh they came from), or
    ``scale_collectives`` output (``members`` / ``local_members`` given). Each needs ``op``,
    ``bytes`` (per device) and ``scope``; a missing scope is derived from the members.
  flops, bytes_moved: per-device compute work of the step (e.g. from ``compiled.cost_analysis()``).
  ring: ``"flat"`` or ``"hierarchical"`` all-reduce / reduce-scatter / all-gather (``collective_time``).

  Returns ``{compute_s, intra_comm_s, cross_comm_s, comm_s, total_s, by_role_s, by_level_s}``:
  intra/cross split by *tower* scope; ``by_level_s`` charges each collective to the slowest link
  level it crosses (e.g. ``nvlink4`` vs ``ib_ndr``), which is the intra-/cross-*host* split even when
  a tower group spans several hosts.
  """
  cluster = get_cluster(cluster_preset)
  if num_devices % devices_per_group:
    raise ValueError(f"num_devices={num_devices} is not a multiple of devices_per_group={devices_per_group}")
  intra = cross = 0.0
  by_role: dict[str, float] = {}
  by_level = {link.name: 0.0 for link in cluster.levels}
  for c in _as_list(collectives):
    n, local = _members(c, devices_per_group)
    t = collective_time(cluster, c["op"], float(c["bytes"]), n, local, devices_per_group, num_devices, ring)
    scope = c.get("scope") or (hlo.INTRA_TOWER if local >= n else hlo.CROSS_TOWER)
    if scope == hlo.INTRA_TOWER:
      intra += t
    else:
      cross += t
    role = c.get("role", hlo.OTHER)
    by_role[role] = by_role.get(role, 0.0) + t
    if n > 1:
      by_level[cluster.levels[slowest_level(cluster, n, local, devices_per_group, num_devices)].name] += t
  compute = compute_time(cluster, flops, bytes_moved)
  comm = intra + cross
  return dict(compute_s=compute, intra_comm_s=intra, cross_comm_s=cross, comm_s=comm,
              total_s=max(compute, comm) if overlap else compute + comm, by_role_s=by_role,
              by_level_s=by_level)


# ----------------------------------------------------------------------------------------------
# Extrapolation from the emulated mesh


def scale_collectives(collectives, from_num_devices: int, from_group_size: int, to_num_devices: int,
                      to_group_size: int, bytes_scale: Mapping[str, float] | None = None) -> list[dict]:
  """Re-targets collectives measured on an emulated mesh to ``to_num_devices`` in groups of ``to_group_size``.

  Assumptions (weak scaling, the DMT paper's setting):
  * the per-device batch is fixed, and so is the model (tables, features, dense layers);
  * per-device bytes of every collective stay constant: table-wise/flat all-to-all sends the
    device's own B samples' ids/embeddings (independent of N); the SPTT peer all-to-all sends B
    samples x all towers' features; the intra-tower exchange handles G*B samples of F/G features
    (one tower per group); dense gradient all-reduces are the parameter size. Override per role
    with ``bytes_scale`` (multiplier), e.g. when the towers per group change with N;
  * membership: a collective with one member per group (peer axes) keeps one per group and spans
    proportionally more groups; one that spans a whole group spans the whole target group; one
    confined to a group stays confined (members scale with the group size).
  Returns dicts with ``op, bytes, scope, role, members, local_members, op_name``.
  """
  if from_num_devices % from_group_size or to_num_devices % to_group_size:
    raise ValueError("device counts must be multiples of the group sizes")
  g_from, g_to = from_num_devices // from_group_size, to_num_devices // to_group_size
  bytes_scale = dict(bytes_scale or {})
  out = []
  for c in _as_list(collectives):
    n, local = _members(c, from_group_size)
    spanned = max(1, n // local)
    local_t = 1 if local == 1 else max(1, min(to_group_size, round(local * to_group_size / from_group_size)))
    spanned_t = 1 if spanned == 1 or g_to == 1 else min(g_to, max(2, round(spanned * g_to / g_from)))
    role = c.get("role", hlo.OTHER)
    out.append(dict(
        op=c["op"], bytes=float(c["bytes"]) * bytes_scale.get(role, 1.0), role=role,
        scope=hlo.INTRA_TOWER if spanned_t == 1 else hlo.CROSS_TOWER,
        members=local_t * spanned_t, local_members=local_t, op_name=c.get("op_name", "")))
  return out


# ----------------------------------------------------------------------------------------------
# Weak-scaling laws of dmt_jax's collectives (uniform one-hot features, one table per feature)

LAYOUTS = ("table_wise", "row_wise", "table_row_wise", "dmt")


def tower_plan(num_groups: int, num_features: int) -> tuple[int, int]:
  """``(towers, hosts_per_tower_group)``: one tower per group while the features allow it.

  With ``G`` groups of one host and ``F`` features, ``T = G`` towers (each >= 1 feature) when
  ``G <= F``; beyond that the largest power of two ``T <= F`` that divides ``G``, and a tower group
  spans ``G / T`` hosts (its intra-tower traffic then partly crosses hosts).
  """
  if num_groups <= num_features:
    return num_groups, 1
  t = 1
  while t * 2 <= num_features and num_groups % (t * 2) == 0:
    t *= 2
  return t, num_groups // t


def _ceil_div(a: int, b: int) -> int:
  return -(-int(a) // int(b))


def engine_bytes(layout: str, num_devices: int, group_size: int, num_features: int, dim: int,
                 batch_per_device: int, compression: float = 1.0, dense_params: int = 0,
                 inner: str = "table_wise") -> dict[str, float]:
  """Per-device operand bytes per train step, by role, of this engine's collectives.

  The engine's all-to-alls are dense with a static capacity per destination sized so that overflow is
  impossible, i.e. for the *busiest* member; that is also what a ragged all-to-all's completion time
  is set by (the busiest device's send/receive volume). With ``B`` samples per device, ``D`` dim, ids
  and keys int32 and embeddings f32, a lookup over ``M`` members of ``F_g`` features moves
  ``8 * M * B_in * m`` bytes of ids (local row + key; ``4 *`` table-wise, whose static route sends the
  row only and lets the owner rebuild the key) and ``2 * 4 * M * B_in * m * D`` bytes of pooled
  partial sums (forward + backward), where ``m`` is the most outputs one member serves:
  ``ceil(F_g / M)`` table-wise (``max(F_g, M)`` per sample when ``M > F_g``: one table's owner serves
  every device) and ``F_g`` row-wise (every member holds rows of every table: grows with M).

  layout:
    ``table_wise`` / ``row_wise``: the flat lookup over all ``N`` devices (role ``embedding_exchange``).
    ``table_row_wise``: TorchRec's TWRW = SPTT with identity towers, one tower per group, row-wise
      inside; ``dmt``: SPTT with a linear tower module of compression ``c`` (``inner`` sharding inside
      the group). Towers: ``T`` balanced towers of ``f_t = ceil(F / T)`` features (``T`` = groups).
      Roles ``ids_exchange`` (``4 * G * B * f_t``), ``intra_tower_lookup`` (a lookup of ``G * B``
      samples over the group), ``tower_output_exchange`` (``2 * 4 * G * B * K * D``, ``K = f_t`` for
      identity towers, ``ceil(f_t / c)`` for TM), ``tower_grad_sync`` (TM parameters, all-reduced in
      the group).
  dense_params: parameters of the data-parallel dense part (``dense_sync`` = 4 bytes each).
  """
  if layout not in LAYOUTS:
    raise ValueError(f"unknown layout {layout!r}; choose one of {LAYOUTS}")
  N, B, F, D = int(num_devices), int(batch_per_device), int(num_features), int(dim)
  if N % group_size:
    raise ValueError(f"num_devices={N} is not a multiple of group_size={group_size}")

  def lookup(members: int, features: int, rows_in: int, kind: str) -> float:
    if members <= 1:
      return 0.0
    m = features if kind == "row_wise" else _ceil_div(features, members)
    id_bytes = 8.0 if kind == "row_wise" else 4.0    # bucketed: row + key; static (table-wise): row only
    return id_bytes * members * rows_in * m + 8.0 * members * rows_in * m * D

  out = {hlo.DENSE_SYNC: 4.0 * dense_params if N > 1 else 0.0}
  if layout in ("table_wise", "row_wise"):
    out["embedding_exchange"] = lookup(N, F, B, layout)
    return out
  G, L = N // group_size, int(group_size)
  f_t = _ceil_div(F, G)
  if layout == "table_row_wise":
    K, kind = f_t, "row_wise"
  else:
    K, kind = max(1, math.ceil(round(f_t / float(compression), 9))), inner
    if L > 1:
      out["tower_grad_sync"] = 4.0 * (f_t * D * K * D + K * D)
  out["ids_exchange"] = 4.0 * G * B * f_t if G > 1 else 0.0
  out["intra_tower_lookup"] = lookup(L, f_t, G * B, kind)
  out["tower_output_exchange"] = 8.0 * G * B * K * D if G > 1 else 0.0
  return out


def interaction_vectors(layout: str, num_features: int, num_towers: int, compression: float) -> int:
  """Vectors entering DLRM's dot interaction besides the dense one: ``F`` flat, ``T * K`` DMT."""
  if layout != "dmt":
    return int(num_features)
  f_t = _ceil_div(num_features, num_towers)
  return num_towers * max(1, math.ceil(round(f_t / float(compression), 9)))


def variable_flops(layout: str, num_features: int, num_towers: int, compression: float, dim: int,
                   batch_per_device: int, top_width: int) -> float:
  """Per-device train-step FLOPs of the parts that change with the tower count (forward + backward = 3x).

  DMT's linear tower module (``G * B`` samples, ``f_t * D -> K * D``), the dot interaction
  (``2 n^2 D`` per sample, ``n`` = vectors + 1) and the top MLP's first layer (``n(n-1)/2`` inputs of
  width ``top_width``). Used to move XLA's measured FLOPs from the emulated tower count to another.
  """
  B, D = batch_per_device, dim
  k = interaction_vectors(layout, num_features, num_towers, compression)
  n = k + 1
  flops = 3 * (2.0 * B * n * n * D + 2.0 * B * (n * (n - 1) // 2) * top_width)
  if layout == "dmt":
    f_t = _ceil_div(num_features, num_towers)
    K = k // num_towers
    flops += 3 * 2.0 * num_towers * B * (f_t * D) * (K * D)   # G*B samples, one tower per group
  return flops


def scale_step(collectives, flops: float, layout: str, law_kwargs: Mapping, from_num_devices: int,
               from_group_size: int, to_num_devices: int, host_size: int, top_width: int,
               dense_params_delta_per_pair: int = 0) -> tuple[list[dict], float, int]:
  """Measured emulated-mesh collectives + FLOPs -> a step on ``to_num_devices`` in hosts of ``host_size``.

  Bytes of each role are scaled by ``engine_bytes(target) / engine_bytes(emulated)`` (roles the law
  does not know keep their bytes); tower groups follow ``tower_plan``; FLOPs move by
  ``variable_flops(target) - variable_flops(emulated)``. ``law_kwargs``: ``num_features, dim,
  batch_per_device, compression, dense_params`` (the emulated model's). The dense parameter count
  changes with the interaction width by ``dense_params_delta_per_pair`` per interaction pair.
  Returns ``(collectives, flops, devices_per_tower_group)``.
  """
  F = int(law_kwargs["num_features"])
  kw = dict(law_kwargs)
  towers_from = from_num_devices // from_group_size
  if layout in ("table_row_wise", "dmt"):
    towers_to, hosts = tower_plan(to_num_devices // host_size, F)
  else:
    towers_to, hosts = to_num_devices // host_size, 1
  group_to = host_size * hosts
  c = float(kw.get("compression", 1.0))

  def pairs(t):
    n = interaction_vectors(layout, F, t, c) + 1
    return n * (n - 1) // 2

  law_from = engine_bytes(layout, from_num_devices, from_group_size, **kw)
  kw_to = dict(kw, dense_params=int(kw.get("dense_params", 0))
               + dense_params_delta_per_pair * (pairs(towers_to) - pairs(towers_from)))
  law_to = engine_bytes(layout, to_num_devices, group_to, **kw_to)
  scale = {r: (law_to.get(r, 0.0) / v if v > 0 else 1.0) for r, v in law_from.items()}
  scaled = scale_collectives(collectives, from_num_devices, from_group_size, to_num_devices, group_to,
                             bytes_scale=scale)
  vf = lambda t: variable_flops(layout, F, t, c, kw["dim"], kw["batch_per_device"], top_width)
  return scaled, flops + vf(towers_to) - vf(towers_from), group_to


# ----------------------------------------------------------------------------------------------
# Agreement between predicted and measured rankings


def ranks(x) -> np.ndarray:
  """1-based ranks, ties get their average rank."""
  x = np.asarray(x, float)
  order = np.argsort(x, kind="stable")
  r = np.empty(len(x))
  r[order] = np.arange(1, len(x) + 1)
  for v in np.unique(x):
    m = x == v
    r[m] = r[m].mean()
  return r


def spearman(x, y) -> float:
  """Spearman rank correlation (Pearson on average ranks); nan with fewer than 2 points or no spread."""
  if len(x) != len(y):
    raise ValueError("spearman: sequences differ in length")
  if len(x) < 2:
    return float("nan")
  rx, ry = ranks(x), ranks(y)
  if rx.std() == 0 or ry.std() == 0:
    return float("nan")
  return float(np.corrcoef(rx, ry)[0, 1])
