"""Pure-logic pieces behind experiments/cost_model_report.py: byte laws, tower plan, scaling, ranking.

No compilation: the laws are checked against closed forms and against the per-device bytes the HLO of
the emulated mesh showed (host=2 x device=4, 26 tables, dim 16, 32 samples/device).
"""

import math

import numpy as np
import pytest

from dmt_jax.analysis import cost_model as cm

F, D, B = 26, 16, 32
KW = dict(num_features=F, dim=D, batch_per_device=B)


@pytest.mark.parametrize("layout,role,hlo_bytes", [
    ("table_wise", "embedding_exchange", 135168),    # static route: rows only (139264 with keys, before s5)
    ("row_wise", "embedding_exchange", 905216),
    ("table_row_wise", "intra_tower_lookup", 452608),
    ("table_row_wise", "ids_exchange", 3328),
    ("table_row_wise", "tower_output_exchange", 106496),
])
def test_law_matches_emulated_hlo_bytes(layout, role, hlo_bytes):
  assert cm.engine_bytes(layout, 8, 4, **KW)[role] == hlo_bytes


@pytest.mark.parametrize("c,out_bytes,tm_bytes", [(1, 106496, 173888), (2, 57344, 93632), (4, 32768, 53504),
                                                  (8, 16384, 26752)])
def test_dmt_law_matches_emulated_hlo_bytes(c, out_bytes, tm_bytes):
  law = cm.engine_bytes("dmt", 8, 4, compression=c, **KW)
  assert law["tower_output_exchange"] == out_bytes
  assert law["tower_grad_sync"] == tm_bytes
  assert law["intra_tower_lookup"] == 135168 and law["ids_exchange"] == 3328


def test_table_wise_bytes_track_the_busiest_owner():
  per = lambda n: cm.engine_bytes("table_wise", n, 8, **KW)["embedding_exchange"]
  unit = 4 * B * (1 + 2 * D)       # one output of one sample: id (row; the key is rebuilt) + pooled fwd/bwd
  assert per(8) == unit * 8 * math.ceil(F / 8)        # 32 outputs: 4 tables on the busiest of 8
  assert per(64) == unit * 64                         # M > F: a table's owner serves all 64 devices
  assert per(4096) / per(64) == 64


def test_row_wise_bytes_grow_linearly_with_devices():
  per = lambda n: cm.engine_bytes("row_wise", n, 8, **KW)["embedding_exchange"]
  assert [per(n) / per(8) for n in (16, 64, 512)] == [2, 8, 64]


def test_towers_keep_bytes_constant_while_groups_have_features():
  for layout in ("table_row_wise", "dmt"):
    a = cm.engine_bytes(layout, 16, 8, compression=4.0, **KW)
    b = cm.engine_bytes(layout, 32, 8, compression=4.0, **KW)
    # 2 -> 4 groups: f_t 13 -> 7, ids G*B*f_t 26B -> 28B (balanced-tower rounding).
    assert b["ids_exchange"] / a["ids_exchange"] == pytest.approx(28 / 26)


def test_compression_divides_only_the_tower_output_exchange():
  base = cm.engine_bytes("dmt", 64, 8, compression=1.0, **KW)
  for c in (2.0, 4.0):
    x = cm.engine_bytes("dmt", 64, 8, compression=c, **KW)
    k = lambda comp: math.ceil(math.ceil(F / 8) / comp)
    assert x["tower_output_exchange"] == base["tower_output_exchange"] * k(c) / k(1.0)
    assert x["ids_exchange"] == base["ids_exchange"]
    assert x["intra_tower_lookup"] == base["intra_tower_lookup"]


def test_single_device_or_group_has_no_cross_traffic():
  assert cm.engine_bytes("table_wise", 1, 1, **KW)["embedding_exchange"] == 0
  law = cm.engine_bytes("dmt", 8, 8, compression=4.0, **KW)
  assert law["ids_exchange"] == 0 and law["tower_output_exchange"] == 0 and law["intra_tower_lookup"] > 0


def test_engine_bytes_rejects_bad_layouts():
  with pytest.raises(ValueError, match="unknown layout"):
    cm.engine_bytes("column_wise", 8, 4, **KW)
  with pytest.raises(ValueError, match="multiple"):
    cm.engine_bytes("dmt", 12, 8, **KW)


@pytest.mark.parametrize("groups,expected", [(1, (1, 1)), (8, (8, 1)), (16, (16, 1)), (32, (16, 2)),
                                             (512, (16, 32))])
def test_tower_plan(groups, expected):
  assert cm.tower_plan(groups, 26) == expected


def test_tower_plan_every_tower_has_a_feature():
  for g in (2 ** k for k in range(10)):
    t, hosts = cm.tower_plan(g, 26)
    assert t * hosts == g and 1 <= t <= 26


def test_variable_flops_shrink_with_compression():
  f = [cm.variable_flops("dmt", F, 8, c, 128, 1024, 1024) for c in (1, 2, 4)]
  assert f[0] > f[1] > f[2] > 0
  flat = cm.variable_flops("table_wise", F, 8, 1.0, 128, 1024, 1024)
  n = F + 1
  assert flat == 3 * (2.0 * 1024 * n * n * 128 + 2.0 * 1024 * (n * (n - 1) // 2) * 1024)


def _emulated_dmt(c=4.0):
  """What hlo.classify gives for DMT on host=2 x device=4 (bytes from the law at the emulated mesh)."""
  law = cm.engine_bytes("dmt", 8, 4, compression=c, dense_params=1000, **KW)
  peer = [[0, 4], [1, 5], [2, 6], [3, 7]]
  local = [[0, 1, 2, 3], [4, 5, 6, 7]]
  return [dict(op="all-to-all", bytes=law["ids_exchange"], scope="cross_tower", role="ids_exchange", groups=peer),
          dict(op="all-to-all", bytes=law["intra_tower_lookup"], scope="intra_tower", role="intra_tower_lookup",
               groups=local),
          dict(op="all-to-all", bytes=law["tower_output_exchange"], scope="cross_tower",
               role="tower_output_exchange", groups=peer),
          dict(op="all-reduce", bytes=law["tower_grad_sync"], scope="intra_tower", role="tower_grad_sync",
               groups=local),
          dict(op="all-reduce", bytes=law["dense_sync"], scope="cross_tower", role="dense_sync",
               groups=[list(range(8))])]


def test_scale_step_reproduces_the_law_at_the_target():
  kw = dict(KW, compression=4.0, dense_params=1000)
  colls, flops, group = cm.scale_step(_emulated_dmt(), 1e9, "dmt", kw, 8, 4, 64, 8, top_width=1024)
  assert group == 8
  law = cm.engine_bytes("dmt", 64, 8, **dict(kw, dense_params=1000 + 0))
  got = {c["role"]: c["bytes"] for c in colls}
  for role in ("ids_exchange", "intra_tower_lookup", "tower_output_exchange", "tower_grad_sync"):
    assert got[role] == pytest.approx(law[role]), role
  members = {c["role"]: (c["members"], c["local_members"]) for c in colls}
  assert members["ids_exchange"] == (8, 1) and members["intra_tower_lookup"] == (8, 8)
  assert members["dense_sync"] == (64, 8)
  assert flops != 1e9  # 2 -> 8 towers changes the TM and interaction work


def test_scale_step_with_tower_groups_over_several_hosts():
  kw = dict(KW, compression=4.0, dense_params=1000)
  colls, _, group = cm.scale_step(_emulated_dmt(), 1e9, "dmt", kw, 8, 4, 512, 8, top_width=1024)
  assert group == 32   # 64 hosts, 16 towers of 4 hosts
  intra = next(c for c in colls if c["role"] == "intra_tower_lookup")
  assert intra["members"] == 32
  p = cm.predict_step(colls, 0.0, 0.0, "h100_dgx", 512, group)
  # The intra-tower lookup now crosses hosts: charged to the NIC level.
  assert p["by_level_s"]["ib_ndr"] > p["by_role_s"]["tower_output_exchange"]


def test_by_level_charges_the_slowest_level_and_sums_to_comm():
  colls = _emulated_dmt()
  scaled = cm.scale_collectives(colls, 8, 4, 64, 8)
  p = cm.predict_step(scaled, 0.0, 0.0, "h100_dgx", 64, 8)
  assert sum(p["by_level_s"].values()) == pytest.approx(p["comm_s"])
  assert p["by_level_s"]["nvlink4"] == pytest.approx(p["by_role_s"]["intra_tower_lookup"]
                                                      + p["by_role_s"]["tower_grad_sync"])


def test_hierarchical_ring_shares_the_nic_among_the_host():
  c = cm.PRESETS["h100_dgx"]
  flat = cm.collective_time(c, "all-reduce", 1e8, 64, 8, 8, 64)
  hier = cm.collective_time(c, "all-reduce", 1e8, 64, 8, 8, 64, ring="hierarchical")
  v = 2 * 63 / 64 * 1e8
  assert flat == pytest.approx(10e-6 + v / c.levels[1].bandwidth)
  assert hier == pytest.approx(10e-6 + max(v / c.levels[0].bandwidth, v / 8 / c.levels[1].bandwidth))
  inside = cm.collective_time(c, "all-reduce", 1e8, 8, 8, 8, 64, ring="hierarchical")
  assert inside == cm.collective_time(c, "all-reduce", 1e8, 8, 8, 8, 64)
  with pytest.raises(ValueError, match="ring"):
    cm.collective_time(c, "all-reduce", 1e8, 8, 8, 8, 64, ring="tree")


def test_spearman():
  assert cm.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
  assert cm.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
  assert cm.spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(np.corrcoef([1, 2.5, 2.5, 4], [1, 2, 3, 4])[0, 1])
  assert math.isnan(cm.spearman([1], [2])) and math.isnan(cm.spearman([1, 1], [1, 2]))
  with pytest.raises(ValueError):
    cm.spearman([1, 2], [1])
