"""Host-side (numpy) evaluation metrics for binary click prediction, and a throughput meter.

All metrics take flat arrays of equal length ``[N]`` (any shape is flattened) and compute in
float64. Labels are 0/1 (log loss and NE also accept soft labels in [0, 1]; AUC needs hard ones).

* ``auc``: exact ROC AUC by the Mann–Whitney U statistic with average ranks for ties (a tied
  positive/negative pair counts 1/2). It **raises** ``ValueError`` when only one class is present;
  ``EvalAccumulator`` reports ``nan`` instead so a tiny eval does not crash training.
* ``log_loss`` / ``log_loss_from_logits``: mean binary cross-entropy (natural log). From logits it
  uses ``log sigmoid(z) = -logaddexp(0, -z)``, exact for any finite logit; from probabilities it
  clips to ``[eps, 1 - eps]``.
* ``normalized_entropy``: NE = log loss / entropy of the base rate p (``-p log p - (1-p) log(1-p)``),
  TorchRec's and the DMT paper's headline metric; 1.0 = no better than predicting the CTR. Raises
  when p is 0 or 1 (entropy 0).
* ``calibration``: mean prediction / observed CTR (1.0 = calibrated).
"""

from __future__ import annotations

import collections
import math
import time
from typing import Callable

import numpy as np


def _flat(x) -> np.ndarray:
  return np.asarray(x, dtype=np.float64).reshape(-1)


def _pair(labels, other, what: str) -> tuple[np.ndarray, np.ndarray]:
  y, s = _flat(labels), _flat(other)
  if y.shape != s.shape:
    raise ValueError(f"labels and {what} must have the same number of elements, "
                     f"got {y.size} and {s.size}")
  if y.size == 0:
    raise ValueError("metrics need at least one example")
  return y, s


def sigmoid(logits) -> np.ndarray:
  """Stable logistic function (no overflow for large |z|)."""
  z = _flat(logits)
  e = np.exp(-np.abs(z))
  return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def log_sigmoid(logits) -> np.ndarray:
  """``log(sigmoid(z)) = -log(1 + exp(-z))``, exact for any finite z."""
  return -np.logaddexp(0.0, -_flat(logits))


def auc(labels, scores) -> float:
  """Exact ROC AUC with ties (Mann–Whitney U over average ranks). Raises if one class only."""
  y, s = _pair(labels, scores, "scores")
  if not np.all((y == 0) | (y == 1)):
    raise ValueError("auc needs binary labels in {0, 1}")
  n_pos = int(y.sum())
  n_neg = y.size - n_pos
  if n_pos == 0 or n_neg == 0:
    raise ValueError(f"AUC is undefined with only one class present ({n_pos} positives, "
                     f"{n_neg} negatives)")
  order = np.argsort(s, kind="mergesort")
  sorted_s = s[order]
  # Average rank (1-based) of each run of equal scores.
  starts = np.flatnonzero(np.r_[True, sorted_s[1:] != sorted_s[:-1]])
  ends = np.r_[starts[1:], s.size]
  avg_rank = (starts + ends + 1) / 2.0  # mean of ranks starts+1 .. ends
  ranks = np.empty(s.size)
  ranks[order] = np.repeat(avg_rank, ends - starts)
  u = ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0
  return float(u / (n_pos * n_neg))


def log_loss(labels, probs, eps: float = 1e-7) -> float:
  """Mean binary cross-entropy of probabilities, clipped to ``[eps, 1 - eps]``."""
  y, p = _pair(labels, probs, "probs")
  p = np.clip(p, eps, 1.0 - eps)
  return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p)))


def log_loss_from_logits(labels, logits) -> float:
  """Mean binary cross-entropy of logits: ``-[y log σ(z) + (1-y) log σ(-z)]``, no clipping needed."""
  y, z = _pair(labels, logits, "logits")
  return float(-np.mean(y * log_sigmoid(z) + (1.0 - y) * log_sigmoid(-z)))


def binary_entropy(p: float) -> float:
  """Entropy (nats) of a Bernoulli(p); 0 at p in {0, 1}."""
  if p <= 0.0 or p >= 1.0:
    return 0.0
  return float(-(p * math.log(p) + (1.0 - p) * math.log1p(-p)))


def _ne(logloss: float, base_rate: float) -> float:
  h = binary_entropy(base_rate)
  if h == 0.0:
    raise ValueError(f"NE is undefined when the base rate is {base_rate} (one class only)")
  return logloss / h


def normalized_entropy(labels, probs, eps: float = 1e-7) -> float:
  """NE = log loss / entropy of the observed base rate. 1.0 for the constant base-rate predictor."""
  y, _ = _pair(labels, probs, "probs")
  return _ne(log_loss(labels, probs, eps), float(y.mean()))


def calibration(labels, probs) -> float:
  """Mean predicted probability / observed CTR (inf when there are no positives)."""
  y, p = _pair(labels, probs, "probs")
  ctr = y.mean()
  return float(p.mean() / ctr) if ctr > 0 else math.inf


class EvalAccumulator:
  """Collects ``(labels, logits)`` over eval batches; ``result()`` computes every metric at once.

  ``update(labels [B], logits [B], mask [B] | None)``: ``mask`` (1 = real example) drops the padding
  of a statically-shaped last batch. Arrays may be jax or numpy, any shape (flattened). All kept
  examples are stored (exact AUC needs every score): 12 bytes per example.

  ``result()`` -> ``{"auc", "ne", "logloss", "calibration", "base_rate", "num_examples"}``; a metric
  that is undefined on the data seen (one class only) is ``nan``.
  """

  def __init__(self):
    self.reset()

  def reset(self) -> None:
    self._labels: list[np.ndarray] = []
    self._logits: list[np.ndarray] = []

  def update(self, labels, logits, mask=None) -> None:
    y = np.asarray(labels, dtype=np.float32).reshape(-1)
    z = np.asarray(logits, dtype=np.float64).reshape(-1)
    if y.shape != z.shape:
      raise ValueError(f"labels and logits must have the same number of elements, "
                       f"got {y.size} and {z.size}")
    if mask is not None:
      m = np.asarray(mask).reshape(-1).astype(bool)
      if m.shape != y.shape:
        raise ValueError(f"mask must have {y.size} elements, got {m.size}")
      y, z = y[m], z[m]
    self._labels.append(y)
    self._logits.append(z)

  @property
  def num_examples(self) -> int:
    return int(sum(a.size for a in self._labels))

  def result(self) -> dict:
    n = self.num_examples
    if n == 0:
      nan = float("nan")
      return dict(auc=nan, ne=nan, logloss=nan, calibration=nan, base_rate=nan, num_examples=0)
    y = np.concatenate(self._labels).astype(np.float64)
    z = np.concatenate(self._logits)
    base_rate = float(y.mean())
    ll = log_loss_from_logits(y, z)
    try:
      a = auc(y, z)  # sigmoid is monotone: AUC of logits == AUC of probabilities
    except ValueError:
      a = float("nan")
    h = binary_entropy(base_rate)
    return dict(
        auc=a,
        ne=ll / h if h > 0 else float("nan"),
        logloss=ll,
        calibration=float(sigmoid(z).mean() / base_rate) if base_rate > 0 else float("nan"),
        base_rate=base_rate,
        num_examples=n)


class Throughput:
  """Examples per second over the last ``window`` steps, from wall-clock time.

  Call ``update(num_examples)`` right after each step has *finished* (block on its outputs first,
  e.g. ``jax.block_until_ready`` or reading the loss; otherwise async dispatch makes steps look
  free). The first ``skip_steps`` updates only move the reference time, so with ``skip_steps=1`` the
  compile step is excluded. With ``skip_steps=0`` the reference is the construction time or the
  last ``start()`` call.

  ``update`` returns the windowed rate (nan until one counted step exists); ``total_rate()`` is the
  rate over every counted step.
  """

  def __init__(self, window: int = 20, skip_steps: int = 0,
               clock: Callable[[], float] = time.perf_counter):
    if window < 1:
      raise ValueError(f"window must be >= 1, got {window}")
    if skip_steps < 0:
      raise ValueError(f"skip_steps must be >= 0, got {skip_steps}")
    self.window = window
    self.skip_steps = skip_steps
    self._clock = clock
    self.start()

  def start(self) -> None:
    """Resets the meter; the reference time is now."""
    self._seen = 0
    self._events: collections.deque = collections.deque([(self._clock(), 0)], maxlen=self.window + 1)
    self._first_t = self._events[0][0]
    self._total = 0

  def update(self, num_examples: int) -> float:
    now = self._clock()
    self._seen += 1
    if self._seen <= self.skip_steps:
      self._events.clear()
      self._events.append((now, 0))
      self._first_t = now
      return float("nan")
    self._events.append((now, int(num_examples)))
    self._total += int(num_examples)
    return self.rate()

  def rate(self) -> float:
    """Examples/s over the last ``window`` counted steps (nan before the first one)."""
    if len(self._events) < 2:
      return float("nan")
    dt = self._events[-1][0] - self._events[0][0]
    n = sum(k for _, k in list(self._events)[1:])
    return n / dt if dt > 0 else float("inf")

  def steps_per_sec(self) -> float:
    if len(self._events) < 2:
      return float("nan")
    dt = self._events[-1][0] - self._events[0][0]
    return (len(self._events) - 1) / dt if dt > 0 else float("inf")

  def total_rate(self) -> float:
    """Examples/s over every counted step since the reference time."""
    if len(self._events) < 2:
      return float("nan")
    dt = self._events[-1][0] - self._first_t
    return self._total / dt if dt > 0 else float("inf")
