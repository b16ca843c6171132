"""The slow-link benchmark's parts that need no root: its report (dmt_jax/analysis/slowlink_report.py)
and the AUC child of experiments/slow_link_benchmark.py (run as a subprocess: the script defines absl
flags that other experiment scripts imported by the tests define too)."""

import json
import os
import subprocess
import sys

import pytest

from dmt_jax.analysis import slowlink_report as slb

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TAG = "@@"        # the script's child -> parent line prefix


def _setting(label, mbit, fast_cap, flat_s, dmt_s, link_s=0.01, fast_s=0.001):
  return {"label": label, "mbit": mbit, "fast_cap_mbit": fast_cap, "probe_bytes": 1_000_000,
          "link_a2a_s": [link_s], "fast_a2a_s": [fast_s], "loadavg_1m": [1.0],
          "times": {"flat_tw": [flat_s] * 3, "dmt_c4": [dmt_s] * 3}}


def test_summary_speedup_ratio_and_network_share():
  record = {"settings": {"100": _setting("100", 100.0, 1000.0, 1.0, 0.4),
                         "unthrottled": _setting("unthrottled", 0.0, None, 0.2, 0.25, link_s=0.001)}}
  rows = slb.summarize(record, devices_per_process=4)
  capped = next(r for r in rows if r["label"] == "100")
  assert capped["dmt_c4_speedup"] == pytest.approx(2.5)
  assert capped["best_flat"] == "flat_tw"
  assert capped["cross_host_share_best_flat"] == pytest.approx(0.8)          # (1.0 - 0.2) / 1.0
  # link: 4 devices x S/2 per 10 ms; fast: 4 x 3S/4 per 1 ms -> ratio 15
  assert capped["fast_slow_ratio"] == pytest.approx(15.0)
  md = slb.markdown(rows, ["flat_tw", "dmt_c4"])
  head = md.splitlines()[0]
  assert "intra-host Mbit/s (cap)" in head and "network share of best flat step" in head
  assert "| 100 | 1000 |" in md and "| unthrottled | uncapped |" in md
  one_tier = {"settings": {"100": _setting("100", 100.0, None, 1.0, 0.4)}}
  one_md = slb.markdown(slb.summarize(one_tier), ["flat_tw", "dmt_c4"])
  assert "intra-host Mbit/s (cap)" not in one_md and "cross-host share of best flat step" in one_md


@pytest.mark.slow
def test_auc_child_trains_the_timed_model(tmp_path):
  """--child_auc trains one case of the timed model (shrunk here) and reports a finite eval AUC."""
  res = subprocess.run([sys.executable, "experiments/slow_link_benchmark.py", "--child_auc=dmt_c4",
                        "--auc_steps=2", "--vocab=500", "--batch_size=256", "--dim=16", "--bottom_mlp=32,16",
                        "--top_mlp=32,1", f"--output_dir={tmp_path}"],
                       capture_output=True, text=True, cwd=REPO, timeout=300,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert res.returncode == 0, res.stderr[-3000:]
  msg = [json.loads(l[len(TAG):]) for l in res.stdout.splitlines() if l.startswith(TAG)][-1]
  assert msg["case"] == "dmt_c4" and msg["step"] == 2 and 0.0 <= msg["auc"] <= 1.0
  assert os.path.exists(tmp_path / "auc_dmt_c4" / "metrics.jsonl")


def test_remote_all_to_all_bytes_counts_only_members_on_other_hosts():
  colls = [{"op": "all-to-all", "scope": "cross_tower", "bytes": 800, "groups": [[0, 1, 4, 5]]},   # 2 of 4 remote
           {"op": "all-to-all", "scope": "intra_tower", "bytes": 999, "groups": [[0, 1]]},
           {"op": "all-reduce", "scope": "cross_tower", "bytes": 999, "groups": [[0, 4]]}]
  assert slb.remote_all_to_all_bytes(colls, group_size=4) == 400
