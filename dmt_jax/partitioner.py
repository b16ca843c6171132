"""TP — the tower partitioner: which features go to which tower.

Three parts, each usable alone:

1. **Costs** (``feature_costs``): per feature, float64 ``[F]`` each,

   * ``table_bytes``: bytes of its table plus the sparse optimizer's state (adagrad ``V*D``, row-wise
     adagrad ``V``, sgd none), 4-byte values; a table shared by several features is split evenly
     among them, so a *unit* (below) carries exactly its table's bytes;
   * ``lookup``: mean pooling factor x dim — rows gathered, pooled and (in their gradient) scattered
     per sample, i.e. the lookup and id-exchange work; the pooling factor is measured on sample
     batches (mean non-padding ids per sample), or ``max_bag`` without batches;
   * ``width``: output width D_f — what the feature adds to its tower module's input ``[B, F_t, D]``
     and, with identity towers, to the tower-output exchange.

2. **Affinity** ``A [F, F]`` (symmetric, zero diagonal) from a trained model, two measures:

   * ``"interaction"`` (default): the trained model's *learned pairwise interaction*. For sampled rows
     ``i`` with pooled embeddings ``e_i = [e_i1 .. e_iF]`` and a donor row ``j = pi(i)``, with
     ``y(.)`` the model's logit and ``e^{S}`` = ``e_i`` with the features in S replaced by row j's,

         d_fg(i) = y(e) - y(e^{f}) - y(e^{g}) + y(e^{f,g}),      A_fg = sqrt(mean_i d_fg(i)^2)

     the mixed second difference (a per-row finite-difference form of Friedman & Popescu's pairwise
     H-statistic numerator). It is exactly zero when the model is additive in (f, g) and large when
     the model uses f and g *together*, so it measures what a tower boundary would cut, whatever the
     over-arch (dot interaction, DCN cross, MLP). Cost: ``1 + F + F(F-1)/2`` forward passes of the
     dense over-arch on the sample rows (embeddings fixed; no lookup, no devices).
   * ``"dot"``: the embedding-only measure ``A_fg = m_fg / sqrt(m_ff m_gg)``,
     ``m_fg = mean_i |<e_if, e_ig>|`` — the magnitude of the pair's term in a dot-interaction model,
     normalised so features with large embeddings do not attract everything. Cheap and model-free,
     but it cannot tell a pair the top MLP uses from one it ignores: a DLRM represents first-order
     effects through dot products with every other feature, so cross-group dots are as large as
     within-group ones. On the tiny planted task it stays at chance (ARI <= 0.08 from 150 to 4000
     steps) while ``"interaction"`` reaches ARI 1.0 at 4000 steps (BENCHMARKS.md, "Tower partitioner quality").

   Either measure only sees what the model has learned: a briefly trained model has learned
   first-order effects, not the pairwise structure (tiny task: ARI ~0.1 at 150-1000 steps, 0.69 at
   2000, 1.0 at 4000).

   Features sharing a table form one **unit**; a unit is never split (``sptt.validate_towers``
   requires a table's features to share a tower group; we keep them in one tower).

3. **Partition** (``partition``) of the units into T towers (tower t on group ``t // (T/G)``)
   maximising the intra-tower affinity ``sum_t sum_{f<g in t} A_fg`` subject to

   * balance: for every cost c, ``load_c(t) <= (1 + tol_c) * total_c / T`` (``tol_c`` per cost,
     default ``DEFAULT_TOLERANCE``; the width limit is at least ``ceil(F/T)`` whole features);
   * memory: ``sum of table_bytes on group g <= group_memory_bytes``;
   * every tower non-empty.

   Method (``"affinity"``): seeded greedy (T mutually low-affinity seed units, then repeatedly the
   feasible (unit, tower) placement of highest affinity gain) followed by Kernighan–Lin style local
   search (best improving feasible move or pairwise swap until none improves), over ``restarts``
   random seedings; the best is kept. Deterministic for a given ``seed``. Baselines behind the same
   interface and the same constraints: ``"random"`` (balanced random draw), ``"round_robin"``
   (unit i -> tower i mod T), ``"greedy_cost"`` (largest-first to the least-loaded tower).

The report (``Partition.report``) gives the objective, its share of the total affinity, an upper
bound (each feature keeps at most its ``m-1`` strongest partners, m = the most features a tower may
hold), per-tower costs, limits and max/mean imbalance per cost.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Callable, Mapping, Sequence

import numpy as np

from dmt_jax.features import FeatureSet

COSTS = ("table_bytes", "lookup", "width")
# Default balance: 25% over the mean for table bytes and lookup work; width (features per tower) as
# even as whole features allow, because tower modules pad every tower to the widest one.
DEFAULT_TOLERANCE = {"table_bytes": 0.25, "lookup": 0.25, "width": 0.0}
METHODS = ("affinity", "random", "round_robin", "greedy_cost")
MEASURES = ("interaction", "dot")
_EPS = 1e-12


class InfeasiblePartition(ValueError):
  """No assignment satisfies the constraints; the message names the binding one."""


# --- costs ---------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class FeatureCosts:
  """Per-feature load statistics, float64 ``[F]`` each (see the module docstring)."""
  names: tuple[str, ...]
  table_bytes: np.ndarray
  lookup: np.ndarray
  width: np.ndarray
  pooling_factor: np.ndarray

  def matrix(self) -> np.ndarray:
    """float64 ``[F, len(COSTS)]`` in ``COSTS`` order."""
    return np.stack([getattr(self, c) for c in COSTS], axis=1).astype(np.float64)


def optimizer_values_per_row(optimizer: str, dim: int) -> int:
  """Extra values per table row that the sparse optimizer keeps."""
  return {"sgd": 0, "adagrad": dim, "rowwise_adagrad": 1}[optimizer]


def feature_costs(fs: FeatureSet, batches: Sequence | None = None, embedding_optimizer: str = "adagrad",
                  value_bytes: int = 4) -> FeatureCosts:
  """Costs of every feature; ``batches`` (``Batch``es with ``ids [B, S]``) give the pooling factors."""
  F = fs.num_features
  offs = fs.slot_offsets
  if batches:
    real = np.zeros(F)
    rows = 0
    for b in batches:
      ids = np.asarray(b.ids)
      rows += ids.shape[0]
      for i in range(F):
        real[i] += np.sum(ids[:, offs[i]:offs[i + 1]] >= 0)
    pf = real / max(rows, 1)
  else:
    pf = np.array([f.max_bag for f in fs.features], np.float64)
  share = {}
  for f in fs.features:
    share[f.table] = share.get(f.table, 0) + 1
  tb, lk, wd = np.zeros(F), np.zeros(F), np.zeros(F)
  for i, f in enumerate(fs.features):
    t = fs.table(f.table)
    per_row = t.dim + optimizer_values_per_row(embedding_optimizer, t.dim)
    tb[i] = t.vocab_size * per_row * value_bytes / share[f.table]
    lk[i] = pf[i] * t.dim
    wd[i] = t.dim
  return FeatureCosts(tuple(f.name for f in fs.features), tb, lk, wd, pf)


def table_units(fs: FeatureSet) -> list[list[int]]:
  """Features grouped by table (a unit moves as a whole), in order of first feature."""
  by: dict[str, list[int]] = {}
  for i, f in enumerate(fs.features):
    by.setdefault(f.table, []).append(i)
  return sorted(by.values(), key=lambda u: u[0])


# --- affinity ------------------------------------------------------------------------------------

def pooled_embeddings(fs: FeatureSet, tables: Mapping[str, np.ndarray], ids: np.ndarray,
                      weights: np.ndarray) -> np.ndarray:
  """Host-side lookup + pooling: logical tables ``{name: [V, D]}``, ids/weights ``[N, S]`` -> ``[N, F, D]``.

  Same semantics as the engine: ``-1`` ids are padding, ids weighted, ``sum`` or ``mean`` pooling.
  """
  ids, weights = np.asarray(ids), np.asarray(weights, np.float32)
  offs = fs.slot_offsets
  out = []
  for i, f in enumerate(fs.features):
    tab = np.asarray(tables[f.table], np.float32)
    fid = ids[:, offs[i]:offs[i + 1]]
    w = np.where(fid >= 0, weights[:, offs[i]:offs[i + 1]], 0.0).astype(np.float32)
    e = np.einsum("nm,nmd->nd", w, tab[np.maximum(fid, 0)])
    if f.pooling == "mean":
      e = e / np.maximum(w.sum(1, keepdims=True), 1e-12)
    out.append(e)
  return np.stack(out, axis=1)


def dot_affinity(emb: np.ndarray) -> np.ndarray:
  """``emb [N, F, D]`` -> ``A [F, F]``: ``mean_i |<e_if, e_ig>|`` normalised by ``sqrt(m_ff m_gg)``."""
  m = np.mean(np.abs(np.einsum("nfd,ngd->nfg", emb, emb, dtype=np.float64)), axis=0)
  d = np.sqrt(np.maximum(np.diag(m), _EPS))
  a = m / np.outer(d, d)
  np.fill_diagonal(a, 0.0)
  return a


def interaction_affinity(logit_fn: Callable[[np.ndarray, np.ndarray], np.ndarray], dense: np.ndarray,
                         emb: np.ndarray, seed: int = 0, chunk: int = 64) -> np.ndarray:
  """The model's learned pairwise interaction ``A [F, F]`` (module docstring, ``"interaction"``).

  Args:
    logit_fn: ``(dense [n, num_dense], emb [n, F, D]) -> logits [n]``, the trained over-arch.
    dense: float32 ``[N, num_dense]`` dense features of the sample rows.
    emb: float32 ``[N, F, D]`` their pooled embeddings (``pooled_embeddings``).
    seed: picks the donor permutation.
    chunk: pairs evaluated per ``logit_fn`` call (rows per call = ``chunk * N``).
  """
  N, F, _ = emb.shape
  perm = np.random.default_rng(seed).permutation(N)
  donor = emb[perm]
  y0 = np.asarray(logit_fn(dense, emb), np.float64)

  def run(subsets):
    xs = np.repeat(emb[None], len(subsets), axis=0)        # [P, N, F, D]
    for k, s in enumerate(subsets):
      xs[k][:, list(s)] = donor[:, list(s)]
    y = np.asarray(logit_fn(np.tile(dense, (len(subsets), 1)), xs.reshape(-1, F, emb.shape[2])), np.float64)
    return y.reshape(len(subsets), N)

  singles = np.concatenate([run([(f,) for f in range(lo, min(F, lo + chunk))]) for lo in range(0, F, chunk)])
  pairs = [(f, g) for f in range(F) for g in range(f + 1, F)]
  a = np.zeros((F, F))
  for lo in range(0, len(pairs), chunk):
    part = pairs[lo:lo + chunk]
    y2 = run(part)
    for k, (f, g) in enumerate(part):
      d = y0 - singles[f] - singles[g] + y2[k]
      a[f, g] = a[g, f] = np.sqrt(np.mean(d * d))
  return a


def affinity_from_logical(model_cfg, fs: FeatureSet, logical: Mapping, batches: Sequence,
                          measure: str = "interaction", seed: int = 0) -> np.ndarray:
  """``A [F, F]`` of a trained flat (or identity-tower) model from its logical checkpoint.

  Args:
    model_cfg: ``config.model`` of the run (builds the over-arch that ``logical`` holds params for).
    logical: from ``checkpoint.load_logical`` (``tables`` and ``params["dense"]`` are used).
    batches: sample ``Batch``es (numpy) whose rows the affinity is measured on.
    measure: ``"interaction"`` (the model's mixed second difference) or ``"dot"``.
  """
  import jax
  import jax.numpy as jnp

  from dmt_jax.models import dmt as dmt_models
  ids = np.concatenate([b.ids for b in batches])
  weights = np.concatenate([b.weights for b in batches])
  dense = np.concatenate([b.dense for b in batches]).astype(np.float32)
  emb = pooled_embeddings(fs, logical["tables"], ids, weights)
  if measure == "dot":
    return dot_affinity(emb)
  if measure != "interaction":
    raise ValueError(f"affinity measure must be 'interaction' or 'dot', got {measure!r}")
  model = dmt_models.over_arch(model_cfg, fs.uniform_dim())
  params = jax.tree.map(jnp.asarray, logical["params"]["dense"])
  logits = jax.jit(lambda d, e: model.apply({"params": params}, d, e))
  return interaction_affinity(lambda d, e: logits(d, e), dense, emb, seed=seed)


def unit_affinity(affinity: np.ndarray, units: Sequence[Sequence[int]]) -> np.ndarray:
  """``[U, U]``: summed feature affinity between units (zero diagonal)."""
  U = len(units)
  m = np.zeros((U, len(affinity)))
  for u, fs_ in enumerate(units):
    m[u, list(fs_)] = 1.0
  w = m @ affinity @ m.T
  np.fill_diagonal(w, 0.0)
  return w


# --- constraints ---------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Constraints:
  """Balance and capacity limits of a partition into ``num_towers`` towers on ``num_groups`` groups.

  tolerance: per-tower cost <= (1 + tolerance) * mean over towers; a float for every cost or a
    mapping ``{cost name: tol}`` (missing costs: ``inf`` = unconstrained). The width limit is never
    below ``ceil(F / T)`` features of the smallest width (whole features).
  group_memory_bytes: capacity of one tower group for table bytes (incl. optimizer state), or None.
  """
  num_towers: int
  num_groups: int = 1
  tolerance: float | Mapping[str, float] = dataclasses.field(default_factory=lambda: dict(DEFAULT_TOLERANCE))
  group_memory_bytes: float | None = None

  def __post_init__(self):
    if self.num_towers < 1:
      raise ValueError(f"num_towers must be >= 1, got {self.num_towers}")
    if self.num_groups < 1 or self.num_towers % self.num_groups:
      raise ValueError(f"num_towers={self.num_towers} must be a positive multiple of num_groups={self.num_groups}")
    for c, t in self.tolerances().items():
      if not t >= 0:
        raise ValueError(f"balance tolerance for {c!r} must be >= 0, got {t}")
    if isinstance(self.tolerance, Mapping):
      bad = set(self.tolerance) - set(COSTS)
      if bad:
        raise ValueError(f"unknown cost names {sorted(bad)} in tolerance; costs are {COSTS}")

  def tolerances(self) -> dict[str, float]:
    if isinstance(self.tolerance, Mapping):
      return {c: float(self.tolerance.get(c, np.inf)) for c in COSTS}
    return {c: float(self.tolerance) for c in COSTS}

  def limits(self, totals: np.ndarray) -> np.ndarray:
    """float64 ``[len(COSTS)]`` per-tower limits for cost totals ``[len(COSTS)]``."""
    tol = np.array([self.tolerances()[c] for c in COSTS])
    return np.where(np.isinf(tol), np.inf, (1.0 + np.where(np.isinf(tol), 0, tol)) * totals / self.num_towers)


class _Problem:
  """Units, their costs ``[U, C]``, affinities ``[U, U]`` and the limits, with feasibility checks."""

  def __init__(self, fs: FeatureSet, costs: FeatureCosts, cons: Constraints, affinity: np.ndarray | None):
    self.fs, self.cons, self.costs = fs, cons, costs
    self.units = table_units(fs)
    fc = costs.matrix()
    self.c = np.stack([fc[u].sum(0) for u in self.units])                # [U, C]
    self.limits = cons.limits(fc.sum(0))
    # Width comes in whole features: never ask for less than ceil(mean / D) features per tower.
    wi = COSTS.index("width")
    w_min = max(float(self.c[:, wi].min()), _EPS)
    mean_w = fc[:, wi].sum() / cons.num_towers
    self.limits[wi] = max(self.limits[wi], np.ceil(mean_w / w_min - 1e-9) * w_min)
    self.T, self.G = cons.num_towers, cons.num_groups
    self.k = self.T // self.G
    self.mem = np.inf if cons.group_memory_bytes is None else float(cons.group_memory_bytes)
    self.aff = None if affinity is None else np.asarray(affinity, np.float64)
    self.w = None if affinity is None else unit_affinity(self.aff, self.units)
    self._prechecks()

  def unit_name(self, u: int) -> str:
    names = [self.fs.features[f].name for f in self.units[u]]
    tab = self.fs.features[self.units[u][0]].table
    return f"table {tab!r} (features {names})" if len(names) > 1 else f"feature {names[0]!r} (table {tab!r})"

  def _prechecks(self):
    U, T = len(self.units), self.T
    if U < T:
      raise InfeasiblePartition(
          f"cannot give work to {T} towers: there are only {U} table units (features sharing a table stay "
          f"in one tower); use at most {U} towers")
    tol = self.cons.tolerances()
    for ci, name in enumerate(COSTS):
      u = int(np.argmax(self.c[:, ci]))
      if self.c[u, ci] > self.limits[ci] * (1 + 1e-9):
        need = self.c[u, ci] * T / max(self.c[:, ci].sum(), _EPS) - 1
        raise InfeasiblePartition(
            f"binding constraint: {name} balance — {self.unit_name(u)} alone has {name}={self.c[u, ci]:.6g}, "
            f"above the per-tower limit {self.limits[ci]:.6g} = (1 + {tol[name]:g}) x mean; raise the "
            f"{name} tolerance to >= {need:.3f} or use fewer towers")
    tb = self.c[:, COSTS.index("table_bytes")]
    if tb.sum() > self.G * self.mem * (1 + 1e-9):
      raise InfeasiblePartition(
          f"binding constraint: group memory — the tables need {tb.sum():.6g} bytes in total (optimizer "
          f"state included) but {self.G} groups x {self.mem:.6g} bytes hold only {self.G * self.mem:.6g}")
    u = int(np.argmax(tb))
    if tb[u] > self.mem * (1 + 1e-9):
      raise InfeasiblePartition(
          f"binding constraint: group memory — {self.unit_name(u)} needs {tb[u]:.6g} bytes, more than one "
          f"group's capacity {self.mem:.6g}")

  # --- state helpers --------------------------------------------------------------------------
  def loads(self, assign: np.ndarray) -> np.ndarray:
    """[T, C] per-tower cost sums."""
    out = np.zeros((self.T, self.c.shape[1]))
    np.add.at(out, assign, self.c)
    return out

  def group_bytes(self, loads: np.ndarray) -> np.ndarray:
    return loads[:, COSTS.index("table_bytes")].reshape(self.G, self.k).sum(1)

  def fits(self, loads: np.ndarray) -> bool:
    return bool(np.all(loads <= self.limits * (1 + 1e-9))
                and np.all(self.group_bytes(loads) <= self.mem * (1 + 1e-9)))

  def violation(self, assign: np.ndarray) -> str | None:
    """None when ``assign`` satisfies every constraint, else a message naming the first broken one."""
    counts = np.bincount(assign, minlength=self.T)
    if np.any(counts == 0):
      return f"tower {int(np.argmin(counts))} is empty (every tower needs work)"
    loads = self.loads(assign)
    for ci, name in enumerate(COSTS):
      t = int(np.argmax(loads[:, ci]))
      if loads[t, ci] > self.limits[ci] * (1 + 1e-9):
        return (f"{name} balance: tower {t} has {loads[t, ci]:.6g} > limit {self.limits[ci]:.6g} "
                f"(= (1 + {self.cons.tolerances()[name]:g}) x mean)")
    gb = self.group_bytes(loads)
    g = int(np.argmax(gb))
    if gb[g] > self.mem * (1 + 1e-9):
      return f"group memory: group {g} holds {gb[g]:.6g} table bytes > capacity {self.mem:.6g}"
    return None

  def place_ok(self, loads: np.ndarray, u: int, t: int) -> bool:
    new = loads[t] + self.c[u]
    if np.any(new > self.limits * (1 + 1e-9)):
      return False
    g = t // self.k
    tb = COSTS.index("table_bytes")
    gb = loads[g * self.k:(g + 1) * self.k, tb].sum() + self.c[u, tb]
    return gb <= self.mem * (1 + 1e-9)


# --- methods -------------------------------------------------------------------------------------

def _greedy_affinity(p: _Problem, rng: np.random.Generator) -> np.ndarray | None:
  """Seeded greedy: T low-affinity seeds, then the best-gain feasible placement, one unit at a time."""
  U, T, w = len(p.units), p.T, p.w
  assign = np.full(U, -1)
  loads = np.zeros((T, p.c.shape[1]))
  seeds = [int(rng.integers(U))]
  while len(seeds) < T:
    closeness = w[:, seeds].max(1) + rng.random(U) * 1e-9
    closeness[seeds] = np.inf
    seeds.append(int(np.argmin(closeness)))
  for t, u in enumerate(rng.permutation(seeds)):
    if not p.place_ok(loads, u, t):
      return None
    assign[u] = t
    loads[t] += p.c[u]
  S = np.zeros((U, T))                                                  # affinity of unit u to tower t
  for u in np.flatnonzero(assign >= 0):
    S[:, assign[u]] += w[:, u]
  tb = COSTS.index("table_bytes")
  grp = np.arange(T) // p.k
  while np.any(assign < 0):
    free = np.flatnonzero(assign < 0)
    new_load = loads[None, :, :] + p.c[free][:, None, :]                 # [U_free, T, C]
    ok = np.all(new_load <= p.limits * (1 + 1e-9), axis=2)
    gb = p.group_bytes(loads)[grp][None, :] + p.c[free, tb][:, None]
    ok &= gb <= p.mem * (1 + 1e-9)
    if not np.all(ok.any(1)):
      return None
    gain = np.where(ok, S[free], -np.inf) + rng.random(ok.shape) * 1e-9   # random tie-break
    i, bt = np.unravel_index(int(np.argmax(gain)), gain.shape)
    bu = free[i]
    assign[bu] = bt
    loads[bt] += p.c[bu]
    S[:, bt] += w[:, bu]
  return assign


def _local_search(p: _Problem, assign: np.ndarray, max_rounds: int = 10_000) -> np.ndarray:
  """Best-improvement moves and swaps (Kernighan–Lin style) that keep every constraint."""
  assign = assign.copy()
  U, T, w, c = len(p.units), p.T, p.w, p.c
  lim = p.limits * (1 + 1e-9)
  mem = p.mem * (1 + 1e-9)
  tb = COSTS.index("table_bytes")
  grp = np.arange(T) // p.k
  for _ in range(max_rounds):
    loads = p.loads(assign)
    gb = p.group_bytes(loads)
    counts = np.bincount(assign, minlength=T)
    S = np.zeros((U, T))
    for t in range(T):
      S[:, t] = w[:, assign == t].sum(1)
    cur = S[np.arange(U), assign]
    # moves u -> t
    mv = S - cur[:, None]
    new_load = loads[None, :, :] + c[:, None, :]                          # [U, T, C]
    ok = np.all(new_load <= lim, axis=2)
    g_new = gb[grp][None, :] + c[:, tb][:, None] * (grp[None, :] != grp[assign][:, None])
    ok &= g_new <= mem
    ok &= (counts[assign] > 1)[:, None]
    ok[np.arange(U), assign] = False
    mv = np.where(ok, mv, -np.inf)
    # swaps u <-> v (u in a, v in b)
    a_of = assign
    gain = (S[np.arange(U)[:, None], a_of[None, :]] - cur[:, None]        # u moves to v's tower
            + S[np.arange(U)[None, :], a_of[:, None]] - cur[None, :]      # v moves to u's tower
            - 2 * w)
    dc = c[None, :, :] - c[:, None, :]                                    # [U, V, C]: c_v - c_u
    la = loads[a_of][:, None, :] + dc                                     # u's tower after
    lb = loads[a_of][None, :, :] - dc                                     # v's tower after
    sok = np.all(la <= lim, axis=2) & np.all(lb <= lim, axis=2)
    cross = grp[a_of][:, None] != grp[a_of][None, :]
    ga = gb[grp[a_of]][:, None] + dc[:, :, tb]
    gbb = gb[grp[a_of]][None, :] - dc[:, :, tb]
    sok &= ~cross | ((ga <= mem) & (gbb <= mem))
    sok &= a_of[:, None] != a_of[None, :]
    gain = np.where(sok, gain, -np.inf)
    bm, bs = mv.max(), gain.max()
    if max(bm, bs) <= 1e-12 * max(1.0, np.abs(w).sum()):
      break
    if bm >= bs:
      u, t = np.unravel_index(int(np.argmax(mv)), mv.shape)
      assign[u] = t
    else:
      u, v = np.unravel_index(int(np.argmax(gain)), gain.shape)
      assign[u], assign[v] = assign[v], assign[u]
  return assign


def _random_balanced(p: _Problem, rng: np.random.Generator, tries: int = 1000) -> np.ndarray | None:
  """A random feasible assignment with tower sizes as equal as the constraints allow."""
  U, T = len(p.units), p.T
  for _ in range(tries):
    order = rng.permutation(U)
    assign = np.full(U, -1)
    loads = np.zeros((T, p.c.shape[1]))
    counts = np.zeros(T, np.int64)
    ok = True
    for i, u in enumerate(order):
      cand = [t for t in range(T) if p.place_ok(loads, u, t)]
      if i < T:
        cand = [t for t in cand if counts[t] == 0]
      if not cand:
        ok = False
        break
      m = min(counts[t] for t in cand)
      cand = [t for t in cand if counts[t] == m]
      t = int(cand[rng.integers(len(cand))])
      assign[u], counts[t] = t, counts[t] + 1
      loads[t] += p.c[u]
    if ok and p.violation(assign) is None:
      return assign
  return None


def _greedy_cost(p: _Problem) -> np.ndarray | None:
  """Largest normalised cost first, each to the feasible tower with the smallest resulting max load."""
  U, T = len(p.units), p.T
  scale = np.where(np.isfinite(p.limits) & (p.limits > 0), p.limits, np.maximum(p.c.sum(0) / T, _EPS))
  norm = p.c / scale
  assign = np.full(U, -1)
  loads = np.zeros((T, p.c.shape[1]))
  counts = np.zeros(T, np.int64)
  for i, u in enumerate(sorted(range(U), key=lambda u: (-norm[u].max(), u))):
    best, bt = None, -1
    for t in range(T):
      if not p.place_ok(loads, u, t):
        continue
      key = (counts[t] > 0, ((loads[t] + p.c[u]) / scale).max(), t)
      if best is None or key < best:
        best, bt = key, t
    if bt < 0:
      return None
    assign[u], counts[bt] = bt, counts[bt] + 1
    loads[bt] += p.c[u]
  return assign


# --- results -------------------------------------------------------------------------------------

@dataclasses.dataclass
class Partition:
  """A tower assignment and its report.

  towers: per tower, feature indices (ascending); tower t lives on group ``t // (T / G)``.
  report: objective, intra_fraction, upper_bound, per-tower costs, limits, imbalance (JSON-safe).
  """
  towers: list[list[int]]
  method: str
  seed: int
  report: dict

  def feature_names(self, fs: FeatureSet) -> list[list[str]]:
    return [[fs.features[f].name for f in t] for t in self.towers]

  def labels(self, num_features: int) -> np.ndarray:
    """int ``[F]``: the tower of every feature."""
    out = np.full(num_features, -1)
    for t, feats in enumerate(self.towers):
      out[list(feats)] = t
    return out

  def to_json(self, fs: FeatureSet) -> dict:
    """The towers file: ``towers`` (feature names, what ``train.parse_towers`` reads), ``tower_indices``."""
    return {"format": "dmt_jax.towers/1", "method": self.method, "seed": self.seed,
            "num_towers": len(self.towers), "towers": self.feature_names(fs),
            "tower_indices": [list(map(int, t)) for t in self.towers], **self.report}


def objective(affinity: np.ndarray, towers: Sequence[Sequence[int]]) -> float:
  """``sum_t sum_{f<g in t} A_fg``."""
  return float(sum(np.asarray(affinity)[np.ix_(t, t)].sum() / 2 for t in towers))


def upper_bound(affinity: np.ndarray, max_tower_features: int) -> float:
  """A bound on ``objective``: every feature keeps at most its ``m-1`` strongest partners."""
  a = np.sort(np.asarray(affinity, np.float64), axis=1)[:, ::-1]
  m = max(1, int(max_tower_features))
  return float(np.maximum(a[:, :m - 1], 0).sum() / 2)


def _report(p: _Problem, assign: np.ndarray, costs: FeatureCosts) -> dict:
  towers = [sorted(f for u in np.flatnonzero(assign == t) for f in p.units[u]) for t in range(p.T)]
  loads = p.loads(assign)
  mean = loads.mean(0)
  rep = {
      "num_groups": p.G,
      "tower_costs": {c: [float(x) for x in loads[:, i]] for i, c in enumerate(COSTS)},
      "limits": {c: (None if not np.isfinite(p.limits[i]) else float(p.limits[i])) for i, c in enumerate(COSTS)},
      "tolerance": p.cons.tolerances(),
      "imbalance": {c: float(loads[:, i].max() / max(mean[i], _EPS)) for i, c in enumerate(COSTS)},
      "group_table_bytes": [float(x) for x in p.group_bytes(loads)],
      "group_memory_bytes": p.cons.group_memory_bytes,
  }
  if p.aff is not None:
    total = float(np.triu(p.aff, 1).sum())
    obj = objective(p.aff, towers)
    width_lim = p.limits[COSTS.index("width")]
    wmin = max(float(costs.width.min()), _EPS)
    m = len(p.fs.features) - (p.T - 1) if not np.isfinite(width_lim) else min(
        int(width_lim // wmin + 1e-9), len(p.fs.features) - (p.T - 1))
    ub = upper_bound(p.aff, m)
    rep.update({"objective": obj, "total_affinity": total,
                "intra_fraction": obj / total if total > 0 else 0.0,
                "upper_bound": ub, "bound_gap": (ub - obj) / ub if ub > 0 else 0.0})
  return rep


def partition(fs: FeatureSet, costs: FeatureCosts, constraints: Constraints, method: str = "affinity",
              affinity: np.ndarray | None = None, seed: int = 0, restarts: int = 16) -> Partition:
  """Partitions ``fs``'s features into ``constraints.num_towers`` towers.

  Args:
    fs: the feature set.
    costs: ``feature_costs(fs, ...)``.
    constraints: balance tolerances, group count and group memory.
    method: one of ``METHODS``.
    affinity: ``[F, F]`` (required for ``"affinity"``; for the others only scored in the report).
    seed: makes ``affinity`` (restarts) and ``random`` deterministic.
    restarts: greedy seedings for ``"affinity"``; the best local optimum is kept.

  Raises:
    InfeasiblePartition: naming the binding constraint.
  """
  if method not in METHODS:
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")
  if affinity is not None:
    affinity = np.asarray(affinity, np.float64)
    if affinity.shape != (fs.num_features,) * 2:
      raise ValueError(f"affinity must be [F, F] = {(fs.num_features,) * 2}, got {affinity.shape}")
    if not np.all(np.isfinite(affinity)):
      raise ValueError("affinity has non-finite entries")
    affinity = (affinity + affinity.T) / 2
    np.fill_diagonal(affinity, 0.0)
  if method == "affinity" and affinity is None:
    raise ValueError("method='affinity' needs an affinity matrix")
  p = _Problem(fs, costs, constraints, affinity)
  rng = np.random.default_rng(seed)
  assign = None
  if method == "affinity":
    best = -np.inf
    for _ in range(max(1, restarts)):
      a = _greedy_affinity(p, rng)
      if a is None:
        continue
      a = _local_search(p, a)
      val = float(sum(p.w[np.ix_(a == t, a == t)].sum() for t in range(p.T)))
      if val > best + 1e-12 and p.violation(a) is None:
        best, assign = val, a
    if assign is None:      # greedy got stuck every time: start from a balanced packing instead
      start = _feasible_start(p, rng)
      if start is not None:
        assign = _local_search(p, start)
  elif method == "random":
    assign = _random_balanced(p, rng)
  elif method == "round_robin":
    assign = np.arange(len(p.units)) % p.T
    msg = p.violation(assign)
    if msg:
      raise InfeasiblePartition(f"round_robin breaks a constraint: {msg}; loosen it or use another method")
  else:
    assign = _greedy_cost(p)
  if assign is None:
    raise InfeasiblePartition(_diagnose(p))
  msg = p.violation(assign)
  if msg:  # defensive: every method above only returns feasible assignments
    raise InfeasiblePartition(f"{method}: produced an assignment that breaks {msg}")
  rep = _report(p, assign, costs)
  towers = [sorted(f for u in np.flatnonzero(assign == t) for f in p.units[u]) for t in range(p.T)]
  return Partition(towers, method, int(seed), rep)


def _feasible_start(p: _Problem, rng: np.random.Generator) -> np.ndarray | None:
  a = _greedy_cost(p)
  return a if a is not None else _random_balanced(p, rng, tries=200)


def _diagnose(p: _Problem) -> str:
  """Names the binding constraint(s): those whose removal alone lets a balanced packing be found."""
  names = [c for i, c in enumerate(COSTS) if np.isfinite(p.limits[i])]
  if np.isfinite(p.mem):
    names.append("group memory")
  binding = []
  for n in names:
    q = dataclasses.replace(p.cons, group_memory_bytes=None) if n == "group memory" else dataclasses.replace(
        p.cons, tolerance={**p.cons.tolerances(), n: np.inf})
    try:
      relaxed = _Problem(p.fs, p.costs, q, None)
    except InfeasiblePartition:
      continue
    if _feasible_start(relaxed, np.random.default_rng(0)) is not None:
      binding.append(n)
  what = (f"binding constraint: {' or '.join(binding)} (relaxing {'it' if len(binding) == 1 else 'any one'} "
          f"alone makes a partition possible)" if binding else
          f"binding constraints: the combination of {names} (no single relaxation suffices)")
  limits = {c: round(float(p.limits[i]), 6) for i, c in enumerate(COSTS) if np.isfinite(p.limits[i])}
  return (f"{what} — no assignment of the {len(p.units)} table units to {p.T} towers keeps every limit "
          f"(per-tower limits {limits}, tolerances {p.cons.tolerances()}, group memory "
          f"{p.cons.group_memory_bytes}); raise a tolerance/capacity or use fewer towers")


# --- evaluation and files ------------------------------------------------------------------------

def adjusted_rand_index(a: Sequence[int], b: Sequence[int]) -> float:
  """Hubert–Arabie adjusted Rand index of two labelings of the same items (1 = identical partitions)."""
  a, b = np.asarray(a), np.asarray(b)
  if a.shape != b.shape:
    raise ValueError(f"labelings differ in length: {a.shape} vs {b.shape}")
  _, ai = np.unique(a, return_inverse=True)
  _, bi = np.unique(b, return_inverse=True)
  table = np.zeros((ai.max() + 1, bi.max() + 1))
  np.add.at(table, (ai, bi), 1)
  comb = lambda x: x * (x - 1) / 2
  s_ij, s_a, s_b = comb(table).sum(), comb(table.sum(1)).sum(), comb(table.sum(0)).sum()
  n = comb(len(a))
  expected = s_a * s_b / n if n else 0.0
  mx = (s_a + s_b) / 2
  return 1.0 if mx == expected else float((s_ij - expected) / (mx - expected))


def save_towers(path: str, part: Partition, fs: FeatureSet, extra: dict | None = None) -> dict:
  """Writes the towers JSON (``Partition.to_json`` plus ``extra``); returns it."""
  spec = {**part.to_json(fs), **(extra or {})}
  with open(path, "w") as f:
    json.dump(spec, f, indent=1, default=float)
  return spec


def load_towers(path: str, fs: FeatureSet) -> list[list[int]]:
  """Feature indices per tower from a towers JSON (names or indices, as ``train.parse_towers``)."""
  with open(path) as f:
    spec = json.load(f)
  towers = spec["towers"] if "towers" in spec else spec["assignment"]
  return [[fs.feature_index(x) if isinstance(x, str) else int(x) for x in t] for t in towers]
