"""dmt_jax.metrics: AUC vs brute force, NE, log loss, calibration, accumulator, throughput."""

import math

import numpy as np
import pytest

from dmt_jax import metrics


def brute_force_auc(labels, scores):
  """O(n^2) pair counting: P(score_pos > score_neg) + 0.5 P(tie)."""
  pos = [s for y, s in zip(labels, scores) if y == 1]
  neg = [s for y, s in zip(labels, scores) if y == 0]
  total = 0.0
  for p in pos:
    for n in neg:
      total += 1.0 if p > n else 0.5 if p == n else 0.0
  return total / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_matches_pair_counting_with_ties(seed):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 2, 300)
  scores = rng.integers(0, 12, 300).astype(np.float32)  # heavy ties
  assert metrics.auc(labels, scores) == pytest.approx(brute_force_auc(labels, scores), abs=1e-12)


def test_auc_continuous_scores_and_shapes():
  rng = np.random.default_rng(3)
  labels = rng.integers(0, 2, (10, 20))
  scores = rng.normal(size=(10, 20)) + labels
  assert metrics.auc(labels, scores) == pytest.approx(
      brute_force_auc(labels.ravel(), scores.ravel()), abs=1e-12)


def test_auc_perfect_reversed_and_constant():
  labels = np.array([0, 0, 1, 0, 1, 1])
  perfect = labels + 0.1 * np.arange(6)
  assert metrics.auc(labels, perfect) == 1.0
  assert metrics.auc(labels, -perfect) == 0.0
  assert metrics.auc(labels, np.zeros(6)) == 0.5


def test_auc_one_class_raises():
  with pytest.raises(ValueError, match="one class"):
    metrics.auc(np.ones(5), np.arange(5))


def test_ne_of_base_rate_predictor_is_one():
  labels = np.array([1, 0, 0, 0, 1, 0, 0, 0, 0, 0])
  p = labels.mean()
  assert metrics.normalized_entropy(labels, np.full(10, p)) == pytest.approx(1.0, abs=1e-12)
  better = np.where(labels == 1, 0.6, 0.1)
  assert metrics.normalized_entropy(labels, better) < 1.0


def test_log_loss_closed_form():
  assert metrics.log_loss([1, 0], [0.8, 0.3]) == pytest.approx(-(math.log(0.8) + math.log(0.7)) / 2)
  assert np.isfinite(metrics.log_loss([1, 0], [0.0, 1.0]))  # clipped, not inf


def test_log_loss_from_logits_equals_from_probs():
  rng = np.random.default_rng(4)
  labels = rng.integers(0, 2, 1000)
  logits = rng.normal(scale=4.0, size=1000)
  probs = 1.0 / (1.0 + np.exp(-logits))
  assert metrics.log_loss_from_logits(labels, logits) == pytest.approx(
      metrics.log_loss(labels, probs, eps=1e-15), rel=1e-9)


def test_log_loss_from_logits_is_stable_for_huge_logits():
  ll = metrics.log_loss_from_logits([1, 0, 1, 0], [800.0, -800.0, -800.0, 800.0])
  assert ll == pytest.approx(400.0)  # (0 + 0 + 800 + 800) / 4: each confident miss costs 800
  np.testing.assert_allclose(metrics.sigmoid([-800.0, 0.0, 800.0]), [0.0, 0.5, 1.0])


def test_calibration():
  labels = np.array([1, 0, 0, 0])
  assert metrics.calibration(labels, np.full(4, 0.25)) == pytest.approx(1.0)
  assert metrics.calibration(labels, np.full(4, 0.5)) == pytest.approx(2.0)


def test_accumulator_equals_one_shot():
  rng = np.random.default_rng(5)
  labels = rng.integers(0, 2, 1000)
  logits = rng.normal(size=1000) + labels
  acc = metrics.EvalAccumulator()
  for i in range(0, 1000, 128):
    acc.update(labels[i:i + 128], logits[i:i + 128])
  got = acc.result()
  probs = metrics.sigmoid(logits)
  assert got["num_examples"] == 1000
  assert got["base_rate"] == pytest.approx(labels.mean())
  assert got["auc"] == pytest.approx(metrics.auc(labels, probs), abs=1e-12)
  assert got["logloss"] == pytest.approx(metrics.log_loss(labels, probs, eps=1e-15), rel=1e-9)
  assert got["ne"] == pytest.approx(metrics.normalized_entropy(labels, probs, eps=1e-15), rel=1e-9)
  assert got["calibration"] == pytest.approx(metrics.calibration(labels, probs), rel=1e-12)


def test_accumulator_mask_drops_padding_and_one_class_is_nan():
  acc = metrics.EvalAccumulator()
  acc.update(np.array([1, 0, 1, 1]), np.array([2.0, -1.0, 5.0, 5.0]), mask=np.array([1, 1, 0, 0]))
  assert acc.result()["num_examples"] == 2
  assert acc.result()["auc"] == 1.0
  acc.reset()
  acc.update(np.ones(3), np.zeros(3))
  r = acc.result()
  assert math.isnan(r["auc"]) and math.isnan(r["ne"]) and r["num_examples"] == 3


class FakeClock:
  def __init__(self):
    self.t = 0.0

  def __call__(self):
    return self.t


def test_throughput_excludes_compile_step_and_windows():
  clock = FakeClock()
  tp = metrics.Throughput(window=2, skip_steps=1, clock=clock)
  clock.t = 10.0  # compile step: 10 s
  assert math.isnan(tp.update(100))
  clock.t = 11.0
  assert tp.update(100) == pytest.approx(100.0)
  clock.t = 11.5
  assert tp.update(100) == pytest.approx(200 / 1.5)
  clock.t = 11.75
  assert tp.update(100) == pytest.approx(200 / 0.75)  # window of 2 steps
  assert tp.total_rate() == pytest.approx(300 / 1.75)


def test_throughput_without_skip_counts_from_start():
  clock = FakeClock()
  tp = metrics.Throughput(window=10, clock=clock)
  clock.t = 2.0
  assert tp.update(50) == pytest.approx(25.0)
