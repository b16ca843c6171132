"""Checkpoints on orbax ``CheckpointManager``: save, keep-last-N, resume, preemption.

The whole train state (dense and tower params, sharded table blocks, dense and sparse optimizer
states, step) is one pytree saved with ``StandardSave``. The input pipeline's position is the step
(batches are a pure function of the step), and initialisation is seeded, so restoring the state at
step s and re-running gives bit-identical steps after s on CPU. Orbax writes into a temporary folder
and renames it when complete, so an interrupted save is never listed and never restored.
"""

from __future__ import annotations

import signal
import threading

import jax
import orbax.checkpoint as ocp


class Preempted(RuntimeError):
  """Raised after a SIGTERM: the state was saved; re-running the same command resumes."""


class PreemptionFlag:
  """A SIGTERM handler that asks the training loop to save and stop at the next step boundary."""

  @staticmethod
  def install() -> threading.Event:
    ev = threading.Event()
    if threading.current_thread() is threading.main_thread():
      signal.signal(signal.SIGTERM, lambda *_: ev.set())
    return ev


class CheckpointManager:
  """Thin wrapper owning the orbax manager and the metrics truncation on resume."""

  def __init__(self, directory: str, exp, config, writer=None):
    self.exp, self.config, self.writer = exp, config, writer
    opts = ocp.CheckpointManagerOptions(
        max_to_keep=int(config.keep_checkpoints) or None,
        enable_async_checkpointing=bool(config.async_checkpointing))
    self.manager = ocp.CheckpointManager(directory, options=opts)

  def latest_step(self):
    return self.manager.latest_step()

  def restore_latest(self, state):
    """(state, start step): the latest complete checkpoint restored onto ``state``'s shardings."""
    step = self.manager.latest_step()
    if step is None:
      return state, 0
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    restored = self.manager.restore(step, args=ocp.args.StandardRestore(abstract))
    if self.writer is not None:
      self.writer.truncate_after(step)
    return restored, int(step)

  def save(self, step: int, state, force: bool = False) -> None:
    self.manager.save(step, args=ocp.args.StandardSave(state), force=force)

  def wait(self) -> None:
    self.manager.wait_until_finished()
