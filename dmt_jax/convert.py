"""Flat -> DMT initialisation: continue a (briefly trained) flat model as a DMT model.

The embedding tables are *logical* ``[V, D]`` arrays in a checkpoint's logical state, independent of
how they were sharded, so a DMT model takes them unchanged: ``state_from_logical`` re-homes every table
to the group of its tower. Dense (over-arch) parameters are kept wherever the path and shape match
the new model (``checkpoint.convert_towers``):

* identity towers (c = 1): the over-arch sees the same ``[B, F, D]`` in the flat order, so *every*
  parameter carries over and the DMT model computes the flat model's function;
* compressing towers: the over-arch sees ``[B, T*K, D]``; DLRM keeps its bottom MLP and every top-MLP
  layer after the first (whose input width ``D + (T*K+1)T*K/2`` changed), DCN-v2 keeps its deep MLP
  layers after the first; the tower modules are freshly initialised from ``seed``.

The optax state restarts (unless every parameter was kept and ``keep_optimizer``); the row-sparse
optimizer accumulators move with their tables; the step restarts at 0.
"""

from __future__ import annotations

from dmt_jax import checkpoint as ckpt_lib


def logical_from_checkpoint(checkpoint_dir: str, new_exp, step: int | None = None, seed: int = 0,
                            keep_optimizer: bool = False) -> tuple[dict, dict]:
  """Reads ``checkpoint_dir`` (a flat or DMT run) and converts it for ``new_exp``.

  Returns:
    (logical state for ``new_exp``, report {"source", "source_step", "kept", "reinitialised"}).

  Raises:
    checkpoint.CheckpointError: the checkpoint's tables differ from ``new_exp``'s (names or shapes).
  """
  config_dict, logical = ckpt_lib.load_logical(checkpoint_dir, step)
  want = {t.name: (t.vocab_size, t.dim) for t in new_exp.fs.tables}
  have = {k: tuple(v.shape) for k, v in logical["tables"].items()}
  if want != have:
    diff = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))[:6]
    raise ckpt_lib.CheckpointError(
        f"{checkpoint_dir}: its tables do not fit this config: {[(k, have.get(k), want.get(k)) for k in diff]} "
        f"(name, checkpoint [V, D], config [V, D]); init_from needs the same features and tables")
  new, report = ckpt_lib.convert_towers(logical, new_exp, seed=seed, keep_optimizer=keep_optimizer)
  report = {"source": checkpoint_dir, "source_step": int(logical["step"]),
            "source_mode": config_dict.get("mode"), **report}
  return new, report


def init_state_from_checkpoint(exp, checkpoint_dir: str, step: int | None = None, seed: int = 0,
                               keep_optimizer: bool = False):
  """(train state on ``exp``'s mesh, report): ``exp``'s initial state taken from another run's checkpoint."""
  logical, report = logical_from_checkpoint(checkpoint_dir, exp, step, seed, keep_optimizer)
  return ckpt_lib.state_from_logical(exp, logical), report
