r"""A/B: the row-sparse update's dedupe as ``jnp.unique`` (before) vs ``sparse_optim.dedupe_rows`` (now).

  python experiments/bench_dedupe.py

Part 1 times the dedupe alone on one device (n = 16384 received rows, 400k local rows: the flat
``medium`` model's largest shard). Part 2 compiles the flat ``medium`` train step twice, once with each
dedupe, and times them interleaved on 8 emulated devices (8 rounds x 5 steps).
"""

import statistics
import time

import jax
jax.config.update("jax_num_cpu_devices", 8)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from dmt_jax import config_base  # noqa: E402
from dmt_jax.analysis import bench  # noqa: E402
from dmt_jax.embedding import sparse_optim as so  # noqa: E402

new = so.dedupe_rows


def old(rows, fill):
  u, i = jnp.unique(rows, size=rows.shape[0], fill_value=fill, return_inverse=True)
  return u, i.reshape(-1)


def alone(fn, rows, fill, reps=30):
  f = jax.jit(fn, static_argnums=1)
  jax.block_until_ready(f(rows, fill))
  ts = []
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(f(rows, fill))
    ts.append(time.perf_counter() - t0)
  return 1e3 * statistics.median(ts)


n, R = 16384, 400_000
rows = jnp.asarray(np.random.default_rng(0).zipf(1.2, n) % R, jnp.int32)
for name, fn in (("unique (old)", old), ("dedupe_rows (new)", new)):
  print(f"dedupe alone, n={n}: {name:20s} {alone(fn, rows, R):.2f} ms")

cases = []
for name, fn in (("unique (old)", old), ("dedupe_rows (new)", new)):
  so.dedupe_rows = fn        # read when the step is traced, so each compiled step keeps its own
  cases.append(bench.prepare(bench.Case(name, config_base.get_config("dlrm", "flat", "medium"))))
so.dedupe_rows = new
bench.interleaved(cases, 8, 5)
for c in cases:
  print(f"flat medium step, 8 devices: {c.name:20s} median {1e3 * statistics.median(c.times):.1f} ms  "
        f"min {1e3 * min(c.times):.1f}  max {1e3 * max(c.times):.1f}")
