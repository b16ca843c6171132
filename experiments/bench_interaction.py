r"""Micro-benchmark: DLRM's pairwise dot interaction, forward + backward, per formulation.

  python experiments/bench_interaction.py                      # [4096, 27, 64] over 8 emulated devices
  python experiments/bench_interaction.py --num_cpu_devices=1  # the same on one device

``models.interactions.dot_interaction`` (gram matrix by einsum, then the strictly-lower triangle by
index) against four rewrites: the triangle as a concatenation of row slices, a custom VJP that uses
the gram's symmetry (one batched matmul instead of two), the gram as one fused broadcast-multiply-sum
(no matmul at all), and the triangle's backward as a gather with fill (instead of XLA's zero-fill +
scatter-add). ``--num_cpu_devices=1`` times one device (one thread) instead of 8. All are checked against
the library's values and gradients first; then each is timed (median of ``--repeats``), interleaved
over ``--rounds``.
"""

import statistics
import time

from absl import flags
import numpy as np

import cli

_BATCH = flags.DEFINE_integer("batch", 4096, "Global batch.")
_VECTORS = flags.DEFINE_integer("vectors", 27, "Interacting vectors (features + the bottom output).")
_DIM = flags.DEFINE_integer("dim", 64, "Vector width.")
_DEVICES = flags.DEFINE_integer("num_cpu_devices", 8, "Emulated devices (batch sharded over them).")
_REPEATS = flags.DEFINE_integer("repeats", 10, "Timed calls per round.")
_ROUNDS = flags.DEFINE_integer("rounds", 2, "Interleaved rounds.")


def main(argv):
  del argv
  import jax
  jax.config.update("jax_num_cpu_devices", _DEVICES.value)
  import jax.numpy as jnp
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
  from dmt_jax.models.interactions import dot_interaction

  n = _VECTORS.value

  def by_slices(x):
    g = jnp.einsum("bid,bjd->bij", x, x)
    return jnp.concatenate([g[:, i, :i] for i in range(1, n)], axis=1)

  @jax.custom_vjp
  def gram(x):
    return jnp.einsum("bid,bjd->bij", x, x)

  gram.defvjp(lambda x: (gram(x), x),
              lambda x, g: (jnp.einsum("bij,bjd->bid", g + jnp.swapaxes(g, 1, 2), x),))

  def symmetric_vjp(x):
    g = gram(x)
    return jnp.concatenate([g[:, i, :i] for i in range(1, n)], axis=1)

  rows, cols = np.tril_indices(n, k=-1)

  def broadcast_sum(x):   # one fused multiply + reduce over D instead of a batched matmul
    return jnp.sum(x[:, :, None, :] * x[:, None, :, :], axis=-1)[:, rows, cols]

  # The triangle's transpose as a gather (with fill) instead of a zero-fill + scatter-add.
  tri_flat = rows * n + cols
  tri_inverse = np.full(n * n, len(tri_flat), np.int32)
  tri_inverse[tri_flat] = np.arange(len(tri_flat))

  @jax.custom_vjp
  def triangle(g2):   # [b, n*n] -> [b, n(n-1)/2]
    return jnp.take(g2, tri_flat, axis=1, mode="fill", fill_value=0)

  triangle.defvjp(lambda g2: (triangle(g2), None),
                  lambda _, ct: (jnp.take(ct, tri_inverse, axis=1, mode="fill", fill_value=0),))

  def gather_transpose(x):
    return triangle(jnp.einsum("bid,bjd->bij", x, x).reshape(x.shape[0], n * n))

  arms = {"library (einsum + index)": dot_interaction, "triangle by slices": by_slices,
          "symmetric custom vjp": symmetric_vjp, "broadcast multiply-sum": broadcast_sum,
          "triangle bwd as gather": gather_transpose}
  x = jax.random.normal(jax.random.key(0), (_BATCH.value, n, _DIM.value))
  ct = jax.random.normal(jax.random.key(1), (_BATCH.value, n * (n - 1) // 2))
  ref, ref_g = dot_interaction(x), jax.grad(lambda x: jnp.sum(dot_interaction(x) * ct))(x)
  for name, f in arms.items():
    np.testing.assert_allclose(f(x), ref, rtol=1e-4, atol=1e-3, err_msg=name)
    np.testing.assert_allclose(jax.grad(lambda x, f=f: jnp.sum(f(x) * ct))(x), ref_g, rtol=1e-4, atol=1e-3,
                               err_msg=name)
  mesh = Mesh(np.array(jax.devices()), ("d",))
  xs = jax.device_put(x, NamedSharding(mesh, P("d")))
  cts = jax.device_put(ct, NamedSharding(mesh, P("d")))
  fns = {name: jax.jit(jax.shard_map(lambda x, c, f=f: jax.grad(lambda x: jnp.sum(f(x) * c))(x), mesh=mesh,
                                     in_specs=(P("d"), P("d")), out_specs=P("d")))
         for name, f in arms.items()}
  times = {name: [] for name in arms}
  for fn in fns.values():
    jax.block_until_ready(fn(xs, cts))
  for _ in range(_ROUNDS.value):
    for name, fn in fns.items():
      for _ in range(_REPEATS.value):
        t = time.perf_counter()
        jax.block_until_ready(fn(xs, cts))
        times[name].append(time.perf_counter() - t)
  print(f"dot interaction fwd+bwd, [{_BATCH.value}, {n}, {_DIM.value}] over {_DEVICES.value} devices:")
  for name, ts in times.items():
    print(f"  {name:28s} median {1e3 * statistics.median(ts):7.2f} ms  min {1e3 * min(ts):7.2f} ms")


if __name__ == "__main__":
  cli.run(main)
