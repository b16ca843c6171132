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


def _setting(label, mbit, fast_cap, flat_s, dmt_s, link_s=0.01, fast_s=0.001, mix_s=None):
  times = {"flat_tw": [flat_s] * 3, "dmt_c4": [dmt_s] * 3}
  if mix_s is not None:
    times["dmt_c4_mix"] = [mix_s, mix_s / 2, mix_s * 2]
  return {"label": label, "mbit": mbit, "fast_cap_mbit": fast_cap, "probe_bytes": 1_000_000,
          "link_a2a_s": [link_s], "fast_a2a_s": [fast_s], "loadavg_1m": [1.0], "times": times}


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


def test_summary_has_a_speedup_for_every_dmt_case(tmp_path):
  record = {"settings": {"100": _setting("100", 100.0, 1000.0, 1.0, 0.4, mix_s=0.25),
                         "unthrottled": _setting("unthrottled", 0.0, None, 0.2, 0.25, link_s=0.001, mix_s=0.1)}}
  rows = slb.summarize(record)
  capped = next(r for r in rows if r["label"] == "100")
  assert capped["dmt_c4_mix_speedup"] == pytest.approx(4.0)             # 1.0 / median 0.25
  assert capped["dmt_c4_mix_speedup_min"] == pytest.approx(8.0)         # 1.0 / min 0.125
  cases = ["flat_tw", "dmt_c4", "dmt_c4_mix"]
  md = slb.markdown(rows, cases)
  assert "| dmt_c4 vs best flat | dmt_c4_mix vs best flat |" in md.splitlines()[0]
  assert "| 4.00x (vs flat_tw; on min 8.00x) |" in md
  slb.plot(rows, cases, str(tmp_path / "p.png"))
  assert (tmp_path / "p.png").stat().st_size > 0
  only_uncapped = slb.summarize({"settings": {"unthrottled": record["settings"]["unthrottled"]}})
  slb.plot(only_uncapped, cases, str(tmp_path / "q.png"))                # nothing capped: no plot, no error
  assert not (tmp_path / "q.png").exists()


def test_dmt_case_names():
  """dmt_c<k>[_<module>] -> (c, module); one subprocess for all (the script defines absl flags)."""
  want = {"dmt_c4": (4.0, "linear"), "dmt_c4_mix": (4.0, "mix"), "dmt_c8_dot": (8.0, "dot")}
  res = subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, 'experiments'); "
                        "import slow_link_benchmark as s; print([s.dmt_case(c) for c in sys.argv[1:]])", *want],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
  assert res.returncode == 0, res.stderr[-2000:]
  assert res.stdout.strip() == repr(list(want.values()))


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
