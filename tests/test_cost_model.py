"""dmt_jax.analysis.cost_model: closed-form and monotonicity properties."""

import dataclasses

import pytest

from dmt_jax.analysis import cost_model as cm

GB = 1e9


def two_level(fast=100 * GB, slow=10 * GB, latency=0.0, span=8):
  return cm.Cluster("test", (cm.Link("fast", fast, latency, span=span), cm.Link("slow", slow, latency)),
                    peak_flops=1e12, mem_bandwidth=1e11)


def peer_a2a(nbytes, groups=4):
  """SPTT peer all-to-all: one member per tower group of 8 (positions g*8)."""
  return dict(op="all-to-all", bytes=nbytes, scope="cross_tower", role="ids_exchange",
              groups=[[g * 8 + l for g in range(groups)] for l in range(8)])


@pytest.mark.parametrize("n", [2, 4, 8])
def test_all_to_all_factor_within_one_level(n):
  c = two_level()
  t = cm.collective_time(c, "all-to-all", 1e9, n, n, devices_per_group=8, num_devices=8)
  assert t == pytest.approx((n - 1) / n * 1e9 / (100 * GB))


def test_algorithm_factors():
  assert cm.traffic_factor("all-reduce", 4) == pytest.approx(1.5)
  assert cm.traffic_factor("reduce-scatter", 4) == pytest.approx(0.75)
  assert cm.traffic_factor("all-gather", 4) == pytest.approx(3.0)  # (n-1)/n of the 4x result
  assert cm.traffic_factor("collective-permute", 4) == 1.0
  assert cm.traffic_factor("all-to-all", 1) == 0.0


def test_hierarchical_all_to_all_share_and_pacing():
  c = two_level(fast=100 * GB, slow=10 * GB)
  # Flat all-to-all over 32 devices (4 hosts of 8): 7 of 31 peers on NVLink, 24 across hosts.
  t = cm.collective_time(c, "all-to-all", 1e9, 32, 8, devices_per_group=8, num_devices=32)
  volume = 31 / 32 * 1e9
  assert t == pytest.approx(max(volume * 24 / 31 / (10 * GB), volume * 7 / 31 / (100 * GB)))
  # A ring all-reduce over the same members is paced entirely by the slow level.
  t_ar = cm.collective_time(c, "all-reduce", 1e9, 32, 8, devices_per_group=8, num_devices=32)
  assert t_ar == pytest.approx(2 * 31 / 32 * 1e9 / (10 * GB))


def test_latency_is_added_once_at_the_slowest_level():
  c = cm.Cluster("lat", (cm.Link("fast", 1e12, 1e-6, span=8), cm.Link("slow", 1e12, 1e-3)), 1e12, 1e12)
  t_in = cm.collective_time(c, "all-reduce", 0.5, 8, 8, 8, 32)
  t_x = cm.collective_time(c, "all-reduce", 0.5, 4, 1, 8, 32)
  assert t_in == pytest.approx(1e-6 + 2 * 7 / 8 * 0.5 / 1e12)
  assert t_x == pytest.approx(1e-3 + 2 * 3 / 4 * 0.5 / 1e12)


def test_faster_link_means_less_time():
  colls = [peer_a2a(1e8), dict(op="all-reduce", bytes=1e7, scope="intra_tower", role="dense_sync",
                               groups=[list(range(8))])]
  kw = dict(flops=0.0, bytes_moved=0.0, num_devices=32, devices_per_group=8)
  base = cm.predict_step(colls, cluster_preset=two_level(), **kw)
  faster_slow = cm.predict_step(colls, cluster_preset=two_level(slow=20 * GB), **kw)
  faster_fast = cm.predict_step(colls, cluster_preset=two_level(fast=200 * GB), **kw)
  assert faster_slow["cross_comm_s"] < base["cross_comm_s"]
  assert faster_slow["intra_comm_s"] == base["intra_comm_s"]
  assert faster_fast["intra_comm_s"] < base["intra_comm_s"]
  assert faster_fast["total_s"] < base["total_s"] and faster_slow["total_s"] < base["total_s"]


@pytest.mark.parametrize("c", [2.0, 4.0, 16.0])
def test_c_times_fewer_cross_bytes_is_c_times_less_cross_time(c):
  kw = dict(flops=0.0, bytes_moved=0.0, cluster_preset=two_level(latency=0.0), num_devices=32,
            devices_per_group=8)
  full = cm.predict_step([peer_a2a(64e6)], **kw)["cross_comm_s"]
  compressed = cm.predict_step([peer_a2a(64e6 / c)], **kw)["cross_comm_s"]
  assert full > 0 and compressed == pytest.approx(full / c)


def test_roofline_compute():
  c = two_level()
  assert cm.compute_time(c, 2e12, 0.0) == pytest.approx(2.0)
  assert cm.compute_time(c, 1e9, 3e11) == pytest.approx(3.0)
  r = cm.predict_step([], 2e12, 0.0, c, 8, 8)
  assert r["total_s"] == r["compute_s"] == pytest.approx(2.0) and r["cross_comm_s"] == 0.0


def test_predict_accepts_summary_and_overlap():
  c = two_level()
  summary = {"collectives": [peer_a2a(1e9)], "cross_tower_bytes": 1e9}
  a = cm.predict_step(summary, 1e12, 0.0, c, 32, 8)
  b = cm.predict_step(summary, 1e12, 0.0, c, 32, 8, overlap=True)
  assert a["total_s"] == pytest.approx(a["compute_s"] + a["cross_comm_s"])
  assert b["total_s"] == pytest.approx(max(b["compute_s"], b["comm_s"]))
  assert a["by_role_s"]["ids_exchange"] == pytest.approx(a["cross_comm_s"])


def test_scale_collectives_membership_and_bytes():
  emulated = [
      dict(op="all-to-all", bytes=100, scope="cross_tower", role="ids_exchange",
           groups=[[0, 4], [1, 5], [2, 6], [3, 7]]),
      dict(op="all-reduce", bytes=200, scope="intra_tower", role="intra_tower_lookup",
           groups=[[0, 1, 2, 3], [4, 5, 6, 7]]),
      dict(op="all-reduce", bytes=300, scope="cross_tower", role="dense_sync", groups=[list(range(8))]),
  ]
  scaled = cm.scale_collectives(emulated, 8, 4, 512, 8, bytes_scale={"dense_sync": 2.0})
  assert [(s["members"], s["local_members"], s["scope"]) for s in scaled] == [
      (64, 1, "cross_tower"), (8, 8, "intra_tower"), (512, 8, "cross_tower")]
  assert [s["bytes"] for s in scaled] == [100, 200, 600]
  r = cm.predict_step(scaled, 0.0, 0.0, "h100_dgx", 512, 8)
  assert r["cross_comm_s"] > 0 and r["intra_comm_s"] > 0


def test_peer_and_flat_all_to_all_cross_the_nic_with_equal_bytes():
  """Same operand bytes: a flat all-to-all over 64 devices (8 per host) and SPTT's peer all-to-all
  (one peer per host) both put 56/64 of them on the NIC; DMT's cross-host saving must come from
  compressing what crosses (TM), which the model credits linearly."""
  for name in ["v100_dgx1", "a100_dgx", "h100_dgx", "h200_dgx"]:
    c = cm.PRESETS[name]
    flat = cm.collective_time(c, "all-to-all", 1e8, 64, 8, 8, 64)
    peer = cm.collective_time(c, "all-to-all", 1e8, 8, 1, 8, 64)
    assert peer == pytest.approx(flat)
    assert cm.collective_time(c, "all-to-all", 1e8 / 4, 8, 1, 8, 64) < peer / 3.9


def test_presets_are_sane_and_local_measurement_is_quick():
  for name, c in cm.PRESETS.items():
    assert c.levels[0].bandwidth > c.levels[-1].bandwidth, name
    assert c.levels[-1].span is None and c.source
  local = cm.get_cluster("local")
  assert local.peak_flops > 1e8 and local.mem_bandwidth > 1e8
  with pytest.raises(ValueError, match="unknown cluster preset"):
    cm.get_cluster("nope")
  assert dataclasses.replace(local, name="x").name == "x"
