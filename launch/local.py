"""Runs N cooperating JAX processes on this machine over a loopback coordinator.

  python launch/local.py --num_processes=2 --devices_per_process=4 -- \\
      experiments/main.py --config=experiments/configs/flat_dlrm.py:tiny --workdir=/tmp/w2

Everything after ``--`` is run as ``sys.executable -u <args...>`` in every child, with
``--coordinator_address=127.0.0.1:PORT --num_processes=N --process_id=i --num_cpu_devices=K``
appended and ``JAX_PLATFORMS=cpu`` (see ``--jax_platforms``) in its environment. Each child's stdout /
stderr lines are echoed with a ``[p{i}] `` prefix; the launcher's own lines start with ``[launch] ``.

Failure behaviour: as soon as one child exits non-zero (or is killed), the others get SIGTERM, then
SIGKILL after ``--grace_period_s``, and the launcher exits with the first failure's status (1 for a
signal). SIGINT / SIGTERM sent to the launcher are forwarded to every child (each child runs in its own
process group, so its own subprocesses are signalled too); a second signal kills them. Exit 0 only when
every child exits 0.
"""

from __future__ import annotations

import argparse
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time

_PRINT_LOCK = threading.RLock()  # Re-entrant: the signal handler logs on the main thread.


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
  """Splits ``argv`` at the first ``--``: launcher flags before, the child command after."""
  parser = argparse.ArgumentParser(
      prog="launch/local.py",
      description="Run N JAX processes on this machine (loopback coordinator, K CPU devices each).",
      usage="%(prog)s --num_processes=N --devices_per_process=K [options] -- script.py [args...]")
  parser.add_argument("--num_processes", type=int, required=True, help="number of child processes N")
  parser.add_argument("--devices_per_process", type=int, default=1,
                      help="fake CPU devices per process K (passed as --num_cpu_devices=K)")
  parser.add_argument("--port", type=int, default=0,
                      help="coordinator port on 127.0.0.1; 0 = pick a free one")
  parser.add_argument("--grace_period_s", type=float, default=5.0,
                      help="seconds between SIGTERM and SIGKILL when stopping children")
  parser.add_argument("--jax_platforms", default="cpu",
                      help="JAX_PLATFORMS for the children ('' = leave the environment as it is)")
  if "--" in argv:
    split = argv.index("--")
    own, command = argv[:split], argv[split + 1:]
  else:
    own, command = argv, []
  args = parser.parse_args(own)
  if not command:
    parser.error("missing the child command after '--', e.g. -- experiments/main.py --config=...")
  if args.num_processes < 1 or args.devices_per_process < 1:
    parser.error("--num_processes and --devices_per_process must be >= 1")
  return args, command


def free_port() -> int:
  """A currently free TCP port on 127.0.0.1 (the coordinator binds it moments later)."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def log(msg: str) -> None:
  with _PRINT_LOCK:
    sys.stderr.write(f"[launch] {msg}\n")
    sys.stderr.flush()


def _pump(stream, out, prefix: str) -> None:
  """Copies ``stream`` to ``out`` line by line with ``prefix`` (bytes in, text out)."""
  for raw in iter(stream.readline, b""):
    line = raw.decode("utf-8", errors="replace")
    if not line.endswith("\n"):
      line += "\n"
    with _PRINT_LOCK:
      out.write(prefix + line)
      out.flush()
  stream.close()


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
  if proc.poll() is not None:
    return
  try:
    os.killpg(proc.pid, sig)
  except (ProcessLookupError, PermissionError):
    pass


class Launcher:
  """Owns the children, their output pumps and the stop logic."""

  def __init__(self, args: argparse.Namespace, command: list[str]):
    self.args = args
    self.command = command
    self.procs: list[subprocess.Popen] = []
    self.pumps: list[threading.Thread] = []
    self.stop_deadline: float | None = None  # When set: SIGKILL whatever is alive at this time.
    self.exit_code: int | None = None
    self.signals = 0
    # (index, status) in the order the children exited: one waiter thread per child reaps it the moment
    # it exits, so the first failure is told apart from the failures it causes (a peer's collective
    # breaking milliseconds later) even when both have exited by the time the main loop looks.
    self.exits: queue.Queue[tuple[int, int]] = queue.Queue()

  def start(self) -> None:
    a = self.args
    port = a.port or free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if a.jax_platforms:
      env["JAX_PLATFORMS"] = a.jax_platforms
    log(f"{a.num_processes} processes x {a.devices_per_process} devices, coordinator 127.0.0.1:{port}")
    for i in range(a.num_processes):
      cmd = [sys.executable, "-u", *self.command,
             f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={a.num_processes}",
             f"--process_id={i}", f"--num_cpu_devices={a.devices_per_process}"]
      proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                              env=env, start_new_session=True)
      self.procs.append(proc)
      threading.Thread(target=lambda i=i, p=proc: self.exits.put((i, p.wait())), daemon=True).start()
      for stream, out in ((proc.stdout, sys.stdout), (proc.stderr, sys.stderr)):
        t = threading.Thread(target=_pump, args=(stream, out, f"[p{i}] "), daemon=True)
        t.start()
        self.pumps.append(t)

  def stop_all(self, sig: int, reason: str) -> None:
    """Sends ``sig`` to every live child and arms the SIGKILL deadline."""
    log(f"{reason}; sending {signal.Signals(sig).name} to the remaining processes")
    for p in self.procs:
      _signal_group(p, sig)
    if self.stop_deadline is None:
      self.stop_deadline = time.monotonic() + self.args.grace_period_s

  def on_signal(self, signum, _frame) -> None:
    self.signals += 1
    if self.exit_code is None:
      self.exit_code = 128 + signum
    if self.signals == 1:
      self.stop_all(signum, f"received {signal.Signals(signum).name}")
    else:
      self.stop_deadline = time.monotonic()  # Second signal: kill now.

  def wait(self) -> int:
    """Polls the children until all have exited; returns the launcher's exit status."""
    exited = 0
    while True:
      try:
        while True:
          i, c = self.exits.get_nowait()
          exited += 1
          if c != 0 and self.exit_code is None:
            self.exit_code = c if 0 < c < 256 else 1
            how = f"was killed by {signal.Signals(-c).name}" if c < 0 else f"exited with status {c}"
            self.stop_all(signal.SIGTERM, f"process {i} {how}")
      except queue.Empty:
        pass
      if exited == len(self.procs):
        break
      codes = [p.returncode for p in self.procs]
      if self.stop_deadline is not None and time.monotonic() >= self.stop_deadline:
        alive = [i for i, c in enumerate(codes) if c is None]
        log(f"processes {alive} still alive after the grace period; sending SIGKILL")
        for p in self.procs:
          _signal_group(p, signal.SIGKILL)
        self.stop_deadline = time.monotonic() + 3600  # Only once; waiting for the reaper now.
      time.sleep(0.05)
    for t in self.pumps:
      t.join(timeout=2.0)  # A grandchild holding the pipe must not keep us alive.
    code = self.exit_code or 0
    log("all processes exited successfully" if code == 0 else f"failed (exit status {code})")
    return code


def main(argv: list[str]) -> int:
  args, command = parse_args(argv)
  launcher = Launcher(args, command)
  signal.signal(signal.SIGINT, launcher.on_signal)
  signal.signal(signal.SIGTERM, launcher.on_signal)
  launcher.start()
  return launcher.wait()


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
