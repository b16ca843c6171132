"""Single-accelerator throughput: embedding lookup, row-sparse update, tower modules, full train steps.

  python experiments/gpu_benchmark.py --output_dir=/tmp/gpu_bench            # one H100/H200-class GPU
  python experiments/gpu_benchmark.py --quick --output_dir=/tmp/gpu_bench_q  # small sizes (also on CPU)

Measures on ``jax.devices()[0]`` (a 1x1 mesh):
  * lookup: route + gather + pool of a batch, ids/s (Criteo Kaggle table shapes, dim 128);
  * update: row-sparse row-wise Adagrad on the touched rows, rows/s;
  * tower modules (linear, mlp, dcn, dot) forward+backward on ``[B, F_t, D]`` in float32 and bfloat16;
  * train steps of the flat DLRM / DCN-v2 ``criteo_kaggle`` shapes and their DMT variants, examples/s.
Writes ``gpu_benchmark.json`` and ``gpu_benchmark.md`` with the command and the device description.
"""

import json
import os
import statistics
import sys
import time

from absl import flags

import cli

flags.DEFINE_string("output_dir", "/tmp/gpu_bench", "Where the JSON and markdown go.")
flags.DEFINE_bool("quick", False, "Small shapes (runs on CPU too).")
flags.DEFINE_integer("repeats", 20, "Timed repetitions per measurement.")
FLAGS = flags.FLAGS


def timeit(fn, *args, repeats):
  import jax
  out = fn(*args)
  jax.block_until_ready(out)
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def config(model, mode, quick):
  from dmt_jax import config_base
  c = config_base.get_config(model, mode, "criteo_kaggle")
  c.data.source = "synthetic"
  c.topology, c.tower_level, c.num_cpu_devices = "host=1,device=1", "host", 0
  if quick:
    c.data.vocab_sizes = tuple(min(v, 5000) for v in c.data.vocab_sizes)
    c.data.embedding_dim = 16
    c.model.bottom_mlp = (64, 16)
    c.model.top_mlp = (64, 1)
    c.model.deep_mlp = (64,)
    c.model.low_rank = 8
    c.batch_size = 512
  else:
    # cap the largest tables at 2M rows so synthetic data generation stays quick; dim 128, batch 64k
    c.data.vocab_sizes = tuple(min(v, 2_000_000) for v in c.data.vocab_sizes)
    c.batch_size = 65536
  c.eval_batch_size = c.batch_size
  if mode == "dmt":
    c.towers.num_towers = 2
    c.towers.compression = 4.0
  return c


def main(argv):
  del argv
  import jax
  import jax.numpy as jnp
  from dmt_jax import tower_modules, train
  from dmt_jax.analysis import bench
  reps = 3 if FLAGS.quick else FLAGS.repeats
  dev = jax.devices()[0]
  results = {"device": f"{dev.platform} {dev.device_kind}", "command": "python experiments/gpu_benchmark.py "
             + " ".join(sys.argv[1:]), "rows": []}
  rows = results["rows"]

  # 1. lookup and update on the flat layout
  exp = train.build_experiment(config("dlrm", "flat", FLAGS.quick))
  state = bench.fast_state(exp)
  batch = train.to_global(exp, exp.source.train_batch(0))
  eng = exp.engine
  n_ids = int((batch.ids >= 0).sum())
  route = jax.jit(eng.route)
  routed = route(batch.ids, batch.weights)
  lookup = jax.jit(lambda t, r: eng.embed(eng.gather(t, r), None, r))
  t = timeit(lookup, state["tables"], routed, repeats=reps)
  t_route = timeit(route, batch.ids, batch.weights, repeats=reps)
  rows.append({"what": "lookup (gather + pool)", "ms": 1e3 * t, "rate": n_ids / t, "unit": "ids/s"})
  rows.append({"what": "id routing (bucketise)", "ms": 1e3 * t_route, "rate": n_ids / t_route, "unit": "ids/s"})
  d_rows = jnp.ones((1, eng.members * eng.capacity, eng.layout.width), jnp.float32) * 1e-3
  upd = jax.jit(eng.update, donate_argnums=(0, 1))
  tables, opt = state["tables"], state["table_opt"]
  tables, opt = upd(tables, opt, routed, d_rows)
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    tables, opt = upd(tables, opt, routed, d_rows)
    jax.block_until_ready(tables)
    times.append(time.perf_counter() - t0)
  t = statistics.median(times)
  rows.append({"what": "row-sparse update (row-wise Adagrad)", "ms": 1e3 * t, "rate": n_ids / t, "unit": "rows/s"})
  del state, tables, opt, exp

  # 2. tower modules, fp32 vs bf16, forward + backward
  B = 512 if FLAGS.quick else 65536
  F_t, D = 13, (16 if FLAGS.quick else 128)
  for kind in ("linear", "mlp", "dcn", "dot", "mix"):
    for dtype in (jnp.float32, jnp.bfloat16):
      mod = tower_modules.make_tower_module(kind, F_t, D, 4.0, hidden=(512,), num_cross_layers=2)
      x = jnp.ones((B, F_t, D), dtype)
      params = jax.tree.map(lambda p: p.astype(dtype), mod.init(jax.random.key(0), x)["params"])
      fb = jax.jit(jax.value_and_grad(lambda p, x: jnp.sum(mod.apply({"params": p}, x).astype(jnp.float32))))
      t = timeit(fb, params, x, repeats=reps)
      rows.append({"what": f"tower {kind} fwd+bwd {jnp.dtype(dtype).name}", "ms": 1e3 * t, "rate": B / t,
                   "unit": "examples/s"})

  # 3. full train steps
  for model in ("dlrm", "dcn"):
    for mode in ("flat", "dmt"):
      case = bench.Case(f"{mode} {model}", config(model, mode, FLAGS.quick))
      bench.prepare(case, num_batches=2)
      bench.interleaved([case], 1, reps)
      t = statistics.median(case.times)
      rows.append({"what": f"train step {mode} {model}", "ms": 1e3 * t, "rate": case.config.batch_size / t,
                   "unit": "examples/s"})
      bench.release(case)

  os.makedirs(FLAGS.output_dir, exist_ok=True)
  with open(os.path.join(FLAGS.output_dir, "gpu_benchmark.json"), "w") as f:
    json.dump(results, f, indent=1)
  md = [f"`{results['command']}` on {results['device']}", "", "| measurement | ms | rate | unit |", "|---|---|---|---|"]
  md += [f"| {r['what']} | {r['ms']:.3g} | {r['rate']:.3g} | {r['unit']} |" for r in rows]
  with open(os.path.join(FLAGS.output_dir, "gpu_benchmark.md"), "w") as f:
    f.write("\n".join(md) + "\n")
  print("\n".join(md))


if __name__ == "__main__":
  cli.run(main)
