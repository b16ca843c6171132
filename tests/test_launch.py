"""Multi-process launch: launcher output / failure handling, cross-process collectives, fail-fast.

The children are a throwaway script written into ``tmp_path`` (not ``experiments/main.py``): it takes the
flags the launcher appends, builds the global ``host x device`` mesh and runs a psum and a peer
all-to-all across processes.
"""

import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from dmt_jax import distributed

ROOT = Path(__file__).resolve().parents[1]
LAUNCHER = ROOT / "launch" / "local.py"

CHILD = textwrap.dedent("""
    import argparse, os, signal, sys, time
    p = argparse.ArgumentParser()
    p.add_argument("--mode", default="ok")  # ok | exit | raise | kill (applied by process 1)
    p.add_argument("--survivor", default="collective")  # collective | sleep (process 0 after mode)
    p.add_argument("--heartbeat_timeout_s", type=int, default=30)
    p.add_argument("--coordinator_address")
    p.add_argument("--num_processes", type=int)
    p.add_argument("--process_id", type=int)
    p.add_argument("--num_cpu_devices", type=int)
    a = p.parse_args()

    import jax
    jax.config.update("jax_num_cpu_devices", a.num_cpu_devices)
    from dmt_jax import distributed, topology
    distributed.initialize(a.coordinator_address, a.num_processes, a.process_id,
                           heartbeat_timeout_s=a.heartbeat_timeout_s)
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P

    me, n, k = distributed.process_info()
    mesh = topology.make_mesh(topology.host_level_topology(n, k))
    axes = ("host", "device")
    # Row of device (h, d): [100*h + 10*d + t for t < n]; this process owns rows h = me.
    local = np.array([[100 * me + 10 * d + t for t in range(n)] for d in range(k)], np.float32)
    x = jax.make_array_from_process_local_data(NamedSharding(mesh, P(axes, None)), local)

    def step(b):  # b: [1, n] per device
      total = jax.lax.psum(b.sum(), axes)
      peer = jax.lax.all_to_all(b, "host", split_axis=1, concat_axis=1, tiled=True)
      return total[None], peer

    f = jax.jit(jax.shard_map(step, mesh=mesh, in_specs=P(axes, None),
                              out_specs=(P(axes), P(axes, None))))
    total, peer = f(x)
    rows = [s.data.tolist() for s in sorted(peer.addressable_shards, key=lambda s: s.index[0].start)]
    ids = sorted(d.id for d in jax.local_devices())
    print(f"RESULT process={me} psum={int(total.addressable_shards[0].data[0])} "
          f"a2a={[[int(v) for v in r[0]] for r in rows]} ids={ids}", flush=True)
    if a.mode != "ok":
      if me == 1:
        if a.mode == "exit":
          os._exit(3)
        if a.mode == "raise":
          raise RuntimeError("boom in process 1")
        os.kill(os.getpid(), signal.SIGKILL)
      print("BLOCKING", flush=True)
      if a.survivor == "sleep":
        time.sleep(60)  # Long host-side work: only the fail-fast watcher / heartbeat can end it.
      else:
        f(x)[0].block_until_ready()  # Process 1 never joins: blocks in (or fails) the gloo collective.
      print("UNREACHABLE", flush=True)
""")


def _child(tmp_path):
  path = tmp_path / "child.py"
  path.write_text(CHILD)
  return str(path)


def _expected(n, k):
  """What process ``me`` prints for psum and all_to_all on the n x k mesh."""
  total = sum(100 * h + 10 * d + t for h in range(n) for d in range(k) for t in range(n))
  return {me: (total, [[100 * s + 10 * d + me for s in range(n)] for d in range(k)]) for me in range(n)}


def _launch(args, timeout=60):
  t0 = time.monotonic()
  r = subprocess.run([sys.executable, str(LAUNCHER), *args], capture_output=True, text=True,
                     timeout=timeout, cwd=ROOT)
  return r, time.monotonic() - t0


@pytest.mark.multiprocess
@pytest.mark.timeout(120)
def test_two_processes_psum_and_all_to_all(tmp_path):
  r, _ = _launch(["--num_processes=2", "--devices_per_process=2", "--", _child(tmp_path)], timeout=90)
  assert r.returncode == 0, r.stdout + r.stderr
  results = dict(re.findall(r"^\[p(\d)\] (RESULT .*)$", r.stdout, re.M))
  assert sorted(results) == ["0", "1"], r.stdout + r.stderr
  for me, (total, a2a) in _expected(2, 2).items():
    line = results[str(me)]
    assert f"process={me} psum={total} a2a={a2a}" in line, line
  # Device ids are not mesh positions: process 1's start at 2048 on CPU.
  assert "ids=[2048, 2049]" in results["1"], results["1"]


@pytest.mark.multiprocess
@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode, code", [("exit", 3), ("kill", 1)])
def test_launcher_stops_all_when_one_fails(tmp_path, mode, code):
  r, took = _launch(["--num_processes=2", "--devices_per_process=2", "--grace_period_s=2", "--",
                     _child(tmp_path), f"--mode={mode}"], timeout=90)
  out = r.stdout + r.stderr
  assert r.returncode == code, out
  assert took < 60, took
  assert "[p0] BLOCKING" in r.stdout, out
  assert "UNREACHABLE" not in out
  # Which failure the launcher sees first is a race: the killed process 1, or process 0 whose blocked
  # collective fails when its peer's connection closes. Either way the launcher reports and exits.
  assert "[launch] process 1" in r.stderr or "[launch] process 0" in r.stderr, out


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _run_direct(tmp_path, mode, heartbeat_timeout_s=30):
  # Process 0 sleeps instead of entering a collective: gloo itself may report "Connection closed by
  # peer" there, which would end it through its own exception rather than through the mechanism tested.
  """Starts both processes without the launcher; returns (outputs, seconds until both exited)."""
  child, port = _child(tmp_path), _free_port()
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  procs = [subprocess.Popen(
      [sys.executable, "-u", child, f"--mode={mode}", "--survivor=sleep",
       f"--heartbeat_timeout_s={heartbeat_timeout_s}",
       f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}",
       "--num_cpu_devices=2"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
           for i in range(2)]
  t0 = time.monotonic()
  try:
    outs = [p.communicate(timeout=60)[0] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.send_signal(signal.SIGKILL)
        p.wait()
  return [(p.returncode, o) for p, o in zip(procs, outs)], time.monotonic() - t0


@pytest.mark.multiprocess
@pytest.mark.timeout(120)
def test_exception_in_one_process_ends_all_fast(tmp_path):
  ((c0, out0), (c1, out1)), took = _run_direct(tmp_path, "raise")
  assert took < 20, took
  assert c1 == 1 and "RuntimeError: boom in process 1" in out1, out1
  assert c0 == 1, out0
  assert "BLOCKING" in out0 and "UNREACHABLE" not in out0, out0
  assert "process 0 exiting: process 1: RuntimeError: boom in process 1" in out0, out0


@pytest.mark.multiprocess
@pytest.mark.timeout(120)
def test_killed_process_detected_by_heartbeat(tmp_path):
  ((c0, out0), (c1, _)), took = _run_direct(tmp_path, "kill", heartbeat_timeout_s=5)
  assert took < 40, took
  assert c1 == -signal.SIGKILL
  assert c0 not in (0, None), out0
  assert "BLOCKING" in out0 and "UNREACHABLE" not in out0, out0
  assert "another task died" in out0 or "unhealthy" in out0, out0


def test_single_process_is_noop():
  assert distributed.initialize(None, None, None) is False
  assert distributed.initialize("127.0.0.1:1234", 1, 0) is False
  with pytest.raises(ValueError, match="needs coordinator_address"):
    distributed.initialize(None, 2, None)
  idx, count, local = distributed.process_info()
  assert (idx, count) == (0, 1) and local == 8  # conftest's fake devices.
  assert distributed.is_main_process()


def test_launcher_help_and_bad_args():
  r, _ = _launch(["--help"], timeout=30)
  assert r.returncode == 0 and "--num_processes" in r.stdout
  r, _ = _launch(["--num_processes=2"], timeout=30)
  assert r.returncode == 2 and "missing the child command" in r.stderr


@pytest.mark.parametrize("script", ["slurm_gpu.sbatch", "tpu_pod.sh"])
def test_shell_scripts_parse(script):
  r = subprocess.run(["bash", "-n", str(ROOT / "launch" / script)], capture_output=True, text=True)
  assert r.returncode == 0, r.stderr
