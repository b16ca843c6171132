"""Run outputs of process 0: ``config.json``, ``metrics.jsonl`` and a progress bar."""

from __future__ import annotations

import json
import math
import os
import sys


class _NoProgress:
  def update(self, n):
    pass

  def close(self):
    pass


def _clean(v):
  if isinstance(v, float) and not math.isfinite(v):
    return None if math.isnan(v) else (1e308 if v > 0 else -1e308)
  return v


class MetricsWriter:
  """Appends one JSON object per line to ``<workdir>/metrics.jsonl`` (each with ``"step"``)."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.workdir, self.enabled = workdir, enabled
    self.path = os.path.join(workdir, "metrics.jsonl")
    if enabled:
      os.makedirs(workdir, exist_ok=True)

  def write_config(self, config) -> None:
    if self.enabled:
      with open(os.path.join(self.workdir, "config.json"), "w") as f:
        f.write(config.to_json_best_effort(indent=2, sort_keys=True))

  def truncate_after(self, step: int) -> None:
    """On resume: drop lines a killed run wrote after its last checkpoint (they are re-computed)."""
    if not self.enabled or not os.path.exists(self.path):
      return
    keep = []
    with open(self.path) as f:
      for line in f:
        try:
          if json.loads(line)["step"] <= step:
            keep.append(line if line.endswith("\n") else line + "\n")
        except (ValueError, KeyError):
          continue        # a torn last line from a killed process
    tmp = self.path + ".tmp"
    with open(tmp, "w") as f:
      f.writelines(keep)
    os.replace(tmp, self.path)

  def write(self, step: int, values: dict) -> None:
    if not self.enabled:
      return
    with open(self.path, "a") as f:
      f.write(json.dumps({"step": int(step), **{k: _clean(v) for k, v in values.items()}}) + "\n")
      f.flush()
    if "eval/auc" in values:
      print(f"step {step}: " + ", ".join(f"{k}={v:.4f}" for k, v in values.items()
                                         if isinstance(v, float)), file=sys.stderr, flush=True)

  def progress(self, start: int, total: int):
    if not self.enabled:
      return _NoProgress()
    from tqdm import tqdm
    return tqdm(total=total, initial=start, desc="train", unit="step", file=sys.stderr,
                mininterval=2.0, disable=None)

  def close(self) -> None:
    pass
