"""Multi-process start-up: ``jax.distributed.initialize`` with bounded failure behaviour.

Called once from ``main()`` (never at import time), after ``jax_num_cpu_devices`` is set and before
anything touches the JAX backend. The library never reads flags or environment variables itself:
``experiments/main.py`` passes them in (``jax.distributed.initialize`` may still read JAX's own
``JAX_COORDINATOR_ADDRESS`` / SLURM / Open MPI / TPU variables in ``auto`` mode — that is its cluster
detection).

How a run ends when one process fails (measured on jax 0.10.2, CPU + gloo):

* A peer blocked in a gloo collective does *not* notice that another process died; it waits.
* JAX's coordination service declares a process dead after ``heartbeat_timeout_s`` without heartbeats
  (SIGKILL, OOM kill, machine loss) and then terminates every survivor with
  ``Terminating process because the JAX distributed service detected fatal errors``. JAX's default is
  100 s; we default to 30 s.
* A process that dies of a Python exception would, by default, first wait in JAX's at-exit shutdown
  barrier for the others (up to ``shutdown_timeout_seconds``, JAX default 300 s) while they wait for it
  in a collective. With ``fail_fast=True`` (default) we instead print the traceback, publish
  ``"process i: <error>"`` in the coordination service's key-value store and ``os._exit(1)`` at once;
  a watcher thread in every process polls that key every ``poll_interval_s`` and exits with status 1
  and a message naming the failed process. So an exception ends the whole job in about a second, a
  silent death in about ``heartbeat_timeout_s``.

``sys.exit(nonzero)`` after initialization does not go through the exception hook: the process then
waits in the shutdown barrier (at most ``shutdown_timeout_s``). Prefer raising an exception.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import traceback
from typing import Sequence

import jax

FAILURE_KEY = "dmt_jax/failure"

_state = {"watcher": None, "stop": None, "failing": False, "prev_hook": None}


def initialize(coordinator_address: str | None = None,
               num_processes: int | None = None,
               process_id: int | None = None,
               auto: bool = False,
               *,
               local_device_ids: int | Sequence[int] | None = None,
               initialization_timeout_s: int = 300,
               heartbeat_timeout_s: int = 30,
               shutdown_timeout_s: int = 120,
               fail_fast: bool = True,
               poll_interval_s: float = 1.0) -> bool:
  """Joins the JAX distributed runtime; returns True when running multi-process.

  Args:
    coordinator_address: ``HOST:PORT`` of process 0's coordinator (explicit mode).
    num_processes: total number of processes. ``None`` or 1 without ``auto`` = single process (no-op).
    process_id: this process's index in ``[0, num_processes)``.
    auto: let ``jax.distributed.initialize()`` detect SLURM / Open MPI / Cloud TPU from the environment;
      explicitly given arguments still win over detected ones.
    local_device_ids: restrict this process to these local accelerator ids (e.g. one GPU per process
      when not under SLURM); ``None`` = JAX's default.
    initialization_timeout_s: how long processes wait for each other to connect at start-up.
    heartbeat_timeout_s: a process silent this long is declared dead and all others are terminated.
    shutdown_timeout_s: how long a normally exiting process waits for the others at exit.
    fail_fast: on an uncaught exception, tell every process and exit at once (see module docstring).
    poll_interval_s: how often the fail-fast watcher checks for a failed peer.
  """
  single = num_processes in (None, 1) and not auto
  if single:
    if process_id not in (None, 0):
      raise ValueError(f"process_id={process_id} but num_processes={num_processes}: a single process is 0")
    return False
  if not auto and (coordinator_address is None or process_id is None):
    raise ValueError(
        f"num_processes={num_processes} needs coordinator_address (HOST:PORT) and process_id, got "
        f"{coordinator_address!r} and {process_id!r}; or use auto=True under SLURM / Open MPI / TPU")
  kwargs = dict(
      local_device_ids=local_device_ids,
      initialization_timeout=int(initialization_timeout_s),
      heartbeat_timeout_seconds=int(heartbeat_timeout_s),
      shutdown_timeout_seconds=int(shutdown_timeout_s))
  if not auto and local_device_ids is None:
    # All four arguments known: skip cluster auto-detection (it would e.g. pick one GPU per process
    # when started inside a SLURM allocation).
    kwargs["cluster_detection_method"] = "deactivate"
  try:
    jax.distributed.initialize(coordinator_address, num_processes, process_id, **kwargs)
  except ValueError as e:
    if not auto:
      raise
    raise ValueError(f"auto-detection found no SLURM / Open MPI / Cloud TPU environment ({e}); pass "
                     "coordinator_address, num_processes and process_id explicitly") from e
  if fail_fast:
    _install_fail_fast(poll_interval_s)
  return True


def shutdown() -> None:
  """Stops the fail-fast watcher, then ``jax.distributed.shutdown()`` (waits for all processes)."""
  _stop_watcher()
  if _state["prev_hook"] is not None:
    sys.excepthook = _state["prev_hook"]
    _state["prev_hook"] = None
  jax.distributed.shutdown()


def process_info() -> tuple[int, int, int]:
  """``(process_index, process_count, local_device_count)``; starts the backend if needed."""
  return jax.process_index(), jax.process_count(), jax.local_device_count()


def is_main_process() -> bool:
  """True on process 0: the one that writes config.json, metrics and logs."""
  return jax.process_index() == 0


def _client():
  from jax._src import distributed as jax_distributed  # pylint: disable=g-import-not-at-top
  return jax_distributed.global_state.client


def _install_fail_fast(poll_interval_s: float) -> None:
  client = _client()
  if client is None or _state["watcher"] is not None:
    return
  me = jax.process_index()
  prev = sys.excepthook

  def hook(exc_type, exc, tb):
    _state["failing"] = True
    try:
      prev(exc_type, exc, tb)
    except Exception:  # pylint: disable=broad-except
      traceback.print_exception(exc_type, exc, tb)
    try:
      client.key_value_set(FAILURE_KEY, f"process {me}: {exc_type.__name__}: {exc}"[:2000])
    except Exception:  # pylint: disable=broad-except
      pass  # Another process failed first (key exists) or the coordinator is gone.
    _flush_and_exit(130 if issubclass(exc_type, KeyboardInterrupt) else 1)

  stop = threading.Event()

  def watch():
    while not stop.wait(poll_interval_s):
      try:
        msg = client.key_value_try_get(FAILURE_KEY)
      except Exception:  # pylint: disable=broad-except
        continue  # NOT_FOUND (all well); a lost coordinator is handled by the heartbeat timeout.
      if stop.is_set() or _state["failing"]:
        return
      sys.stderr.write(f"[dmt_jax.distributed] process {me} exiting: {msg}\n")
      _flush_and_exit(1)

  sys.excepthook = hook
  thread = threading.Thread(target=watch, name="dmt_jax-fail-fast", daemon=True)
  _state.update(watcher=thread, stop=stop, prev_hook=prev)
  thread.start()
  # atexit runs last-registered first: stop polling before JAX's own at-exit distributed shutdown.
  atexit.register(_stop_watcher)


def _stop_watcher() -> None:
  thread, stop = _state["watcher"], _state["stop"]
  if thread is None:
    return
  stop.set()
  thread.join(timeout=10.0)  # An RPC to a lost coordinator must not hang the exit.
  _state.update(watcher=None, stop=None)


def _flush_and_exit(code: int) -> None:
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except Exception:  # pylint: disable=broad-except
      pass
  os._exit(code)  # pylint: disable=protected-access
