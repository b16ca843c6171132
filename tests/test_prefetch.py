"""pipeline.Prefetcher: results in step order, errors at their own step, and a training run whose metrics do
not depend on prefetching (a batch is a pure function of its step)."""

import json
import os
import threading
import time

import pytest

from dmt_jax.data.pipeline import Prefetcher


def test_results_in_order_and_made_ahead():
  made, lock = [], threading.Lock()

  def make(s):
    with lock:
      made.append(s)
    return s * 10

  with Prefetcher(make, 3, 9, depth=2) as p:
    assert p.get(3) == 30
    deadline = time.monotonic() + 5
    while len(made) < 3 and time.monotonic() < deadline:   # 4 and 5 are made without being asked for
      time.sleep(0.01)
    assert made[:3] == [3, 4, 5]
    assert [p.get(s) for s in range(4, 9)] == [40, 50, 60, 70, 80]
  assert made == list(range(3, 9))                          # never past the last step


def test_error_surfaces_at_its_step_and_skipping_ahead():
  def make(s):
    if s == 2:
      raise ValueError("bad ids in train batch 2")
    return s

  with Prefetcher(make, 0, 10, depth=3) as p:
    assert p.get(0) == 0 and p.get(1) == 1
    with pytest.raises(ValueError, match="train batch 2"):
      p.get(2)
    assert p.get(7) == 7                                     # jump ahead: older pending work is dropped
    with pytest.raises(ValueError, match="already taken"):
      p.get(5)


def test_depth_zero_is_on_demand():
  made = []
  with Prefetcher(lambda s: made.append(s) or s, 0, 5, depth=0) as p:
    assert p.get(0) == 0
    time.sleep(0.05)
    assert made == [0]


def _metric_lines(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    lines = [json.loads(l) for l in f]
  return [{k: v for k, v in l.items() if not k.startswith("perf/")} for l in lines]


@pytest.mark.slow
def test_training_metrics_do_not_depend_on_prefetch(tmp_path):
  from dmt_jax import config_base, train
  runs = {}
  for depth in (0, 2):
    c = config_base.get_config("dlrm", "flat", "tiny")
    c.num_train_steps, c.log_every, c.eval_every, c.checkpoint_every = 6, 2, 3, 0
    c.num_eval_batches, c.prefetch_batches = 1, depth
    train.train_and_evaluate(c, str(tmp_path / f"d{depth}"))
    runs[depth] = _metric_lines(tmp_path / f"d{depth}")
  assert len(runs[0]) >= 5 and runs[0] == runs[2]
