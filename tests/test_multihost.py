"""Multi-process runs of the real programs (``experiments/main.py``, ``experiments/comm_report.py``).

Each ``multiprocess`` test starts ``launch/local.py --num_processes=2 --devices_per_process=4`` (2 JAX
processes x 4 CPU devices, gloo over loopback) and compares with one process owning 8 devices:

* metrics.jsonl of the tiny flat / DMT configs match the single-process run (rel. error <= 1e-5) and
  only process 0 writes them;
* in the compiled DMT step, a collective is ``cross_tower`` exactly when its replica groups cross
  processes (tower group = one process);
* SIGKILL of process 1 of a training job ends the launcher non-zero within 60 s;
* checkpoints written by 2 processes are resumed by 2 processes;
* a tower group spanning processes is refused with a clear error (unit tests with fake devices too).

Step counts are short on purpose: the two runs differ only in the summation order of the gloo vs.
in-process all-reduce (last-bit differences, ~1e-7). Over longer runs the flat tiny config amplifies
them (its Adagrad starts from a zero accumulator, so first updates are ~lr * sign(g)): after ~26 steps
the loss drifts by ~1e-4 relative. The DMT tiny config stays within ~5e-7 for 30 steps.
"""

import json
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest

from dmt_jax import topology

ROOT = Path(__file__).resolve().parents[1]
LAUNCHER = ROOT / "launch" / "local.py"
MAIN = "experiments/main.py"
COMM = "experiments/comm_report.py"
SHORT = ["--config.eval_every=0", "--config.log_every=5", "--config.checkpoint_every=0"]
COMPARED = ("train/loss", "eval/auc", "eval/ne", "eval/logloss")
RTOL = 1e-5


def _env():
  return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")


def _launch(args, timeout=240):
  """``launch/local.py --num_processes=2 --devices_per_process=4 -- args``; returns (result, seconds)."""
  t0 = time.monotonic()
  r = subprocess.run([sys.executable, str(LAUNCHER), "--num_processes=2", "--devices_per_process=4",
                      "--grace_period_s=2", "--", *args], capture_output=True, text=True,
                     timeout=timeout, cwd=ROOT, env=_env())
  return r, time.monotonic() - t0


def _single(args, timeout=180):
  """The same program in one process with the config's 8 CPU devices."""
  r = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout,
                     cwd=ROOT, env=_env())
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
  return r


def _metrics(workdir):
  with open(Path(workdir) / "metrics.jsonl") as f:
    return [json.loads(line) for line in f]


def _by_key(lines):
  """{(step, metric): value} for the compared metrics; fails on a duplicate (two writers)."""
  out = {}
  for line in lines:
    for k in COMPARED:
      if k in line:
        assert (line["step"], k) not in out, f"duplicate {k} at step {line['step']}: {lines}"
        out[(line["step"], k)] = line[k]
  return out


def _assert_close(got, want):
  assert sorted(got) == sorted(want), (sorted(got), sorted(want))
  for key in want:
    rel = abs(got[key] - want[key]) / max(abs(want[key]), 1e-12)
    assert rel <= RTOL, f"{key}: 2 processes {got[key]} vs 1 process {want[key]} (rel. error {rel:.2e})"


# --- same metrics as one process --------------------------------------------------------------------


ONE_HOT = "data.max_bags=" + "/".join(["1"] * 16)   # uniform bags: the static id route (lookup.py)


@pytest.mark.multiprocess
@pytest.mark.timeout(400)
@pytest.mark.parametrize("name, arg", [("flat_dlrm", "tiny"), ("dmt_dlrm", "tiny"),
                                       ("dmt_dlrm", f"tiny,{ONE_HOT}")])
def test_two_processes_match_one_process(tmp_path, name, arg):
  cfg = [f"--config=experiments/configs/{name}.py:{arg}", "--config.num_train_steps=20", *SHORT]
  r, _ = _launch([MAIN, *cfg, f"--workdir={tmp_path / 'multi'}"])
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
  _single([MAIN, *cfg, f"--workdir={tmp_path / 'single'}"])

  multi, single = _metrics(tmp_path / "multi"), _metrics(tmp_path / "single")
  # Only process 0 writes: exactly the single-process lines, no duplicates.
  assert [sorted(line) for line in multi] == [sorted(line) for line in single], (multi, single)
  assert [line["step"] for line in multi] == [5, 10, 15, 20, 20]
  _assert_close(_by_key(multi), _by_key(single))
  assert (tmp_path / "multi" / "config.json").exists()
  assert json.loads((tmp_path / "multi" / "config.json").read_text())["mode"] == name.split("_")[0]
  # The final result JSON is printed by process 0 only.
  printed = [ln for ln in r.stdout.splitlines() if ln.split("] ", 1)[-1].startswith('{"auc"')]
  assert len(printed) == 1 and printed[0].startswith("[p0] "), r.stdout[-2000:]


# --- comm report: cross_tower == crosses processes ----------------------------------------------------


@pytest.mark.multiprocess
@pytest.mark.timeout(400)
@pytest.mark.parametrize("topo, level", [("host=2,device=4", "host"),
                                         ("rack=2,host=2,device=2", "rack")])
def test_comm_report_cross_tower_is_cross_process(topo, level):
  # One tower group per process in both layouts; the second has its tower level *above* "host", allowed
  # because its group (host x device = 4 devices) is still one process.
  r, _ = _launch([COMM, "--config=experiments/configs/dmt_dlrm.py:tiny", f"--config.topology={topo}",
                  f"--config.tower_level={level}"])
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
  reports = [ln for ln in r.stdout.splitlines() if ln.split("] ", 1)[-1].startswith("{")]
  assert len(reports) == 1 and reports[0].startswith("[p0] "), r.stdout[-2000:]
  rep = json.loads(reports[0].split("] ", 1)[1])

  assert rep["num_processes"] == 2 and rep["num_devices"] == 8 and rep["group_size"] == 4
  proc = rep["mesh_process_index"]  # process of each position in mesh.devices.flat
  assert proc == [0] * 4 + [1] * 4, proc
  colls = rep["collectives"]
  scopes = {c["scope"] for c in colls}
  assert scopes == {"cross_tower", "intra_tower"}, scopes
  for c in colls:
    crosses = any(len({proc[p] for p in g}) > 1 for g in c["groups"])
    assert (c["scope"] == "cross_tower") == crosses, c
  assert rep["cross_tower_bytes"] == sum(c["bytes"] for c in colls if c["scope"] == "cross_tower") > 0
  roles = {c["role"] for c in colls if c["scope"] == "cross_tower"}
  assert {"ids_exchange", "tower_output_exchange"} <= roles, roles
  assert "intra_tower_lookup" in {c["role"] for c in colls if c["scope"] == "intra_tower"}


# --- failure -------------------------------------------------------------------------------------------


def _children(pid):
  """Direct children of ``pid`` (Linux /proc)."""
  kids = set()
  for task in os.listdir(f"/proc/{pid}/task"):
    try:
      with open(f"/proc/{pid}/task/{task}/children") as f:
        kids.update(int(x) for x in f.read().split())
    except FileNotFoundError:
      pass
  return kids


def _cmdline(pid):
  with open(f"/proc/{pid}/cmdline", "rb") as f:
    return f.read().split(b"\0")


@pytest.mark.multiprocess
@pytest.mark.timeout(400)
def test_sigkill_of_one_training_process_ends_the_launcher(tmp_path):
  workdir = tmp_path / "w"
  cmd = [sys.executable, str(LAUNCHER), "--num_processes=2", "--devices_per_process=4", "--grace_period_s=2",
         "--", MAIN, "--config=experiments/configs/dmt_dlrm.py:tiny", f"--workdir={workdir}",
         "--config.num_train_steps=100000", "--config.eval_every=0", "--config.log_every=1",
         "--config.checkpoint_every=0"]
  log = tmp_path / "launcher.log"  # A file, not a pipe: nobody drains it while we wait.
  with open(log, "w") as f:
    launcher = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env=_env())
  try:
    metrics = workdir / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2):  # both are training
      assert launcher.poll() is None, log.read_text()[-3000:]
      assert time.monotonic() < deadline, "training did not start within 240 s"
      time.sleep(0.2)
    p1 = [pid for pid in _children(launcher.pid) if b"--process_id=1" in _cmdline(pid)]
    assert len(p1) == 1, p1
    os.kill(p1[0], signal.SIGKILL)
    t0 = time.monotonic()
    launcher.wait(timeout=60)
    took = time.monotonic() - t0
  finally:
    if launcher.poll() is None:  # Test failed: clean up the launcher and its children (own sessions).
      kids = _children(launcher.pid)
      launcher.kill()
      launcher.wait()
      for pid in kids:
        try:
          os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
          pass
  out = log.read_text()
  assert launcher.returncode != 0, out[-3000:]
  assert took < 60, took
  assert "[launch] process 1 was killed by SIGKILL" in out, out[-3000:]


# --- checkpoints ----------------------------------------------------------------------------------------


@pytest.mark.multiprocess
@pytest.mark.timeout(600)
def test_two_processes_resume_from_checkpoint(tmp_path):
  workdir = tmp_path / "w"
  cfg = [MAIN, "--config=experiments/configs/dmt_dlrm.py:tiny", "--config.eval_every=0",
         "--config.log_every=10", "--config.checkpoint_every=10"]
  r, _ = _launch([*cfg, "--config.num_train_steps=20", f"--workdir={workdir}"])
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
  first = _metrics(workdir)
  assert [line["step"] for line in first] == [10, 20, 20], first
  assert sorted(os.listdir(workdir / "checkpoints")) == ["10", "20"]

  r, _ = _launch([*cfg, "--config.num_train_steps=30", f"--workdir={workdir}"])
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
  resumed = _metrics(workdir)
  # A restart from scratch would have appended steps 10 and 20 again.
  assert resumed[:3] == first, resumed
  assert [line["step"] for line in resumed] == [10, 20, 20, 30, 30], resumed
  assert "30" in os.listdir(workdir / "checkpoints")

  # Steps 21..30 continued from the restored state: they match an uninterrupted single-process run.
  _single([*cfg, "--config.num_train_steps=30", f"--workdir={tmp_path / 'single'}"])
  want = _by_key(_metrics(tmp_path / "single"))  # train/loss at 10, 20, 30 and the eval at 30
  got = _by_key(resumed)
  assert set(want) <= set(got), (sorted(got), sorted(want))
  _assert_close({k: got[k] for k in want}, want)


# --- mesh from the real process layout -----------------------------------------------------------------


def _fake_mesh(topo, num_processes, devices_per_process):
  """A stand-in mesh: devices in (process, id) order reshaped to the topology, like ``make_mesh``."""
  devs = [types.SimpleNamespace(process_index=p, id=2048 * p + i)
          for p in range(num_processes) for i in range(devices_per_process)]
  return types.SimpleNamespace(devices=np.array(devs, dtype=object).reshape(topo.shape))


@pytest.mark.parametrize("spec, level, procs, ok", [
    ("host=2,device=4", "host", 2, True),            # the standard layout: host = process
    ("host=4,device=2", "host", 2, True),            # 2 tower groups per process
    ("host=1,device=8", "host", 2, False),           # one group of 8 over both processes
    ("host=2,device=4", "host", 4, False),           # groups of 4 over processes of 2 devices
    ("host=2,device=4", "device", 4, True),          # tower level = device: groups of one device
    ("rack=2,host=2,device=2", "rack", 2, True),     # above host, group (host x device) = one process
    ("rack=2,host=2,device=2", "rack", 4, False),    # above host, group spans 2 processes
    ("rack=2,host=2,device=2", "host", 4, True),
    ("host=1,device=8", None, 2, True),              # flat: no tower groups, nothing to check
])
def test_tower_groups_must_stay_in_one_process(spec, level, procs, ok):
  topo = topology.Topology.from_string(spec, level)
  mesh = _fake_mesh(topo, procs, 8 // procs)
  if ok:
    topology.check_groups_within_processes(topo, mesh)
  else:
    with pytest.raises(ValueError, match=r"tower group 0 .* spans processes \[0, 1\].*must be devices of "
                                         r"one process"):
      topology.check_groups_within_processes(topo, mesh)


@pytest.mark.multiprocess
@pytest.mark.timeout(300)
def test_tower_group_spanning_processes_is_refused_in_a_real_job():
  r, took = _launch([COMM, "--config=experiments/configs/dmt_dlrm.py:tiny", "--config.topology=host=1,device=8"])
  out = r.stdout + r.stderr
  assert r.returncode == 1, out[-3000:]
  assert "tower group 0 (level 'host') spans processes [0, 1]" in out, out[-3000:]
  assert "topology 'host=2,device=4'" in out, out[-3000:]
