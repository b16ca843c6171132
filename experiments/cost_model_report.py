"""Cost-model report: collectives of compiled steps on the emulated mesh -> predicted step times at scale.

  nice -n 10 python experiments/cost_model_report.py --output_dir=docs/figures \\
      --compare_json=/tmp/bench_compare/compare.json --cache=/tmp/cost_model_cache.json

1. Projection. A paper-like DLRM (26 one-hot tables, dim 128, 1024 samples per device, MLPs
   13-512-256-128 / 1024-1024-512-256-1, row-wise Adagrad) is compiled on 8 emulated CPU devices
   (host=2 x device=4, small vocab: per-device bytes do not depend on it) as flat table_wise,
   row_wise, table_row_wise and DMT (linear TM, one tower per group) at c = 1, 2, 4, 8. Each compiled
   step gives its collectives (``hlo.comm_report``) and XLA's FLOPs. ``cost_model.scale_step`` moves
   them to N = 8 .. 4096 devices in hosts of 8 (weak scaling, bytes per role by the engine's law,
   towers by ``cost_model.tower_plan``), and ``cost_model.predict_step`` predicts compute /
   intra-host / cross-host time on each cluster preset.
2. Validation (``--compare_json``, from ``experiments/benchmark.py --suite=compare --quick``): the
   benchmark's own cases are compiled here and predicted on the ``local`` preset (link levels
   calibrated with an in-process all-to-all on the same mesh, compute rates from the benchmark's run);
   predicted vs measured ranking (Spearman) and per-case ratios.

Writes ``cost_model_report.json``, ``cost_model_report.md`` and three PNGs into ``--output_dir``.
14 compiles, nothing trained: ~2 CPU-minutes (~12 min wall on this shared, loaded 2-core machine);
with ``--cache`` a re-run with other assumptions (presets, efficiency, ring) takes seconds.
"""

import json
import os
import sys
import time

from absl import flags

import cli

flags.DEFINE_string("output_dir", "docs/figures", "Where the JSON, markdown and PNG plots go.")
flags.DEFINE_string("compare_json", "", "compare.json of benchmark.py --suite=compare --quick ('' = no validation).")
flags.DEFINE_integer("batch_per_device", 1024, "Samples per device (fixed under weak scaling).")
flags.DEFINE_integer("embedding_dim", 128, "Embedding dim.")
flags.DEFINE_integer("num_features", 26, "One-hot sparse features, one table each.")
flags.DEFINE_integer("vocab", 1000, "Rows per table on the emulated mesh (bytes per device do not depend on it).")
flags.DEFINE_integer("host_size", 8, "Devices per host (NVLink domain) at scale.")
flags.DEFINE_integer("max_devices", 4096, "Largest device count (powers of two from host_size).")
flags.DEFINE_list("presets", ["v100_dgx1", "a100_dgx", "h100_dgx", "h200_dgx", "tpu_v5p"], "Cluster presets.")
flags.DEFINE_float("compute_efficiency", 0.3, "Fraction of the preset's bf16 dense peak that XLA's FLOPs run at.")
flags.DEFINE_enum("ring", "flat", ["flat", "hierarchical"],
                  "Dense all-reduce across hosts: one flat ring paced by the NIC, or hierarchical (NCCL-like).")
flags.DEFINE_integer("headline_devices", 64, "Device count of the breakdown plot / paper comparison.")
flags.DEFINE_string("headline_preset", "h100_dgx", "Preset of the breakdown plot / paper comparison.")
flags.DEFINE_integer("num_cpu_devices", 8, "Fake CPU devices (the emulated mesh is host=2 x device=4).")
flags.DEFINE_string("cache", "", "JSON of compiled-step measurements: read if it exists, else written "
                    "(re-run the predictions with other assumptions without compiling again).")
FLAGS = flags.FLAGS

COMPRESSIONS = (1, 2, 4, 8)
FLAT = ("table_wise", "row_wise", "table_row_wise")


def cases():
  """(name, mode, flat sharding, compression, cost-model layout)."""
  out = [(f"flat {s}", "flat", s, None, s) for s in FLAT]
  out += [(f"dmt c={c}", "dmt", "table_wise", float(c), "dmt") for c in COMPRESSIONS]
  return out


def set_field(c, key, value):
  node = c
  *path, leaf = key.split(".")
  for p in path:
    node = node[p]
  node[leaf] = value


def paper_config(mode, sharding, compression):
  """The paper-like DLRM on the emulated mesh (criteo_kaggle-like MLPs, dim 128)."""
  from dmt_jax import config_base
  c = config_base.get_config("dlrm", mode, "medium")
  F, D = FLAGS.num_features, FLAGS.embedding_dim
  over = {"data.vocab_sizes": (FLAGS.vocab,) * F, "data.max_bags": (1,) * F, "data.embedding_dim": D,
          "model.bottom_mlp": (512, 256, D), "model.top_mlp": (1024, 1024, 512, 256, 1),
          "batch_size": FLAGS.batch_per_device * FLAGS.num_cpu_devices, "eval_batch_size": FLAGS.num_cpu_devices,
          "embedding_optimizer": "rowwise_adagrad", "sharding": sharding}
  if mode == "dmt":
    over.update({"towers.compression": compression, "towers.num_towers": 0, "towers.module": "linear",
                 "towers.param_placement": "group"})   # the byte law's in-group tower-gradient sync
  for k, v in over.items():
    set_field(c, k, v)
  return c


def bench_config(mode, sharding, compression):
  """The case of ``experiments/benchmark.py --suite=compare --quick`` (kept in sync by hand)."""
  from dmt_jax import config_base
  c = config_base.get_config("dlrm", mode, "medium")
  over = {"model.bottom_mlp": (512, 256, 64), "model.top_mlp": (512, 256, 1), "model.deep_mlp": (512, 256),
          "data.num_planted_groups": 4, "data.vocab_sizes": (20_000,) * 26, "batch_size": 1024,
          "sharding": sharding}
  if mode == "dmt":
    over.update({"towers.compression": compression, "towers.num_towers": 2, "towers.param_placement": "group"})
  for k, v in over.items():
    set_field(c, k, v)
  return c


_CACHE = {}


def measure(config):
  """``_measure`` memoised in ``--cache`` by the config's JSON."""
  key = config.to_json(sort_keys=True)
  if key not in _CACHE:
    _CACHE[key] = _measure(config)
  return _CACHE[key]


def _measure(config):
  """Compiles one train step (nothing runs): classified collectives, per-device FLOPs / bytes, params."""
  import jax
  import numpy as np
  from dmt_jax import train
  from dmt_jax.analysis import bench, hlo
  exp = train.build_experiment(config)
  state = bench.fast_state(exp)
  step = train.make_train_step(exp, train.state_shardings(state))
  batch = train.to_global(exp, exp.source.train_batch(0))
  t0 = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - t0
  ca = compiled.cost_analysis()
  ca = ca[0] if isinstance(ca, (list, tuple)) else ca
  topo = exp.topology
  gsize = topo.group_size if topo.tower_level else topo.num_devices
  colls = hlo.classify(hlo.collectives(compiled.as_text()), gsize)
  summ = hlo.summarize(colls)
  dense = state["params"]["dense"] if "dense" in state["params"] else state["params"]
  n_dense = int(sum(np.prod(x.shape) for x in jax.tree.leaves(dense)))
  return dict(collectives=[{k: c[k] for k in ("op", "groups", "bytes", "scope", "role", "op_name")} for c in colls],
              bytes_by_role=summ["bytes_by_role"], embedding_cross_tower_bytes=summ["embedding_cross_tower_bytes"],
              intra_tower_bytes=summ["intra_tower_bytes"], dense_sync_bytes=summ["dense_sync_bytes"],
              flops=float(ca.get("flops", 0.0)), bytes_accessed=float(ca.get("bytes accessed", 0.0)),
              dense_params=n_dense, num_devices=topo.num_devices, group_size=gsize, compile_s=compile_s)


def law_check(m, layout, law_kwargs):
  """Measured bytes per role / the engine law's bytes at the emulated mesh (1.0 = the law is exact)."""
  from dmt_jax.analysis import cost_model as cm
  law = cm.engine_bytes(layout, m["num_devices"], m["group_size"], **law_kwargs)
  return {r: (m["bytes_by_role"].get(r, 0) / v if v else None) for r, v in law.items()}


def device_counts():
  n, out = FLAGS.host_size, []
  while n <= FLAGS.max_devices:
    out.append(n)
    n *= 2
  return out


def project(measured, presets=None, counts=None, ring=None, efficiency=None, memory=False):
  """Predicted breakdowns: {preset: {case: {N: prediction}}}.

  memory: also charge XLA:CPU's "bytes accessed" (unscaled, an over-estimate) at the preset's HBM
  bandwidth (roofline); off by default, reported as a sensitivity.
  """
  import dataclasses
  from dmt_jax.analysis import cost_model as cm
  ring = ring or FLAGS.ring
  efficiency = FLAGS.compute_efficiency if efficiency is None else efficiency
  out = {}
  for preset in presets or FLAGS.presets:
    base = cm.get_cluster(preset)
    cl = dataclasses.replace(base, peak_flops=base.peak_flops * efficiency)
    out[preset] = {}
    for name, _, _, comp, layout in cases():
      m = measured[name]
      kw = law_kwargs(m, comp)
      out[preset][name] = {}
      for n in counts or device_counts():
        colls, flops, group = cm.scale_step(
            m["collectives"], m["flops"], layout, kw, m["num_devices"], m["group_size"], n, FLAGS.host_size,
            top_width=1024, dense_params_delta_per_pair=1024)
        p = cm.predict_step(colls, flops, m["bytes_accessed"] if memory else 0.0, cl, n, group, ring=ring)
        intra = p["by_level_s"][cl.levels[0].name]
        cross = sum(p["by_level_s"][l.name] for l in cl.levels[1:])
        out[preset][name][n] = dict(compute_ms=1e3 * p["compute_s"], intra_host_ms=1e3 * intra,
                                    cross_host_ms=1e3 * cross, total_ms=1e3 * p["total_s"],
                                    by_role_ms={r: 1e3 * v for r, v in p["by_role_s"].items()},
                                    devices_per_tower_group=group,
                                    embedding_cross_tower_bytes=sum(
                                        c["bytes"] for c in colls
                                        if c["scope"] == "cross_tower" and c["role"] != "dense_sync"))
  return out


def law_kwargs(m, compression):
  return dict(num_features=FLAGS.num_features, dim=FLAGS.embedding_dim, batch_per_device=FLAGS.batch_per_device,
              compression=compression or 1.0, dense_params=m["dense_params"])


def speedups(pred):
  """DMT c over the best flat baseline (and which) per preset and N."""
  out = {}
  for preset, by_case in pred.items():
    out[preset] = {}
    for n in next(iter(by_case.values())):
      best = min(FLAT, key=lambda s: by_case[f"flat {s}"][n]["total_ms"])
      t_best = by_case[f"flat {best}"][n]["total_ms"]
      out[preset][n] = dict(best_flat=best, best_flat_ms=t_best,
                            **{f"c={c}": t_best / by_case[f"dmt c={c}"][n]["total_ms"] for c in COMPRESSIONS})
  return out


def headline(measured, pred, speed):
  """The paper comparison at --headline_devices on --headline_preset, plus sensitivity to the assumptions."""
  n, preset = FLAGS.headline_devices, FLAGS.headline_preset
  by_case = pred[preset]
  best = speed[preset][n]["best_flat"]
  flat, dmt = by_case[f"flat {best}"][n], by_case["dmt c=4"][n]
  saved = flat["total_ms"] - dmt["total_ms"]
  # A flat step of T ms gets 1.9x if DMT saves `saved` of it: T / (T - saved) = 1.9.
  t_19 = saved / (1 - 1 / 1.9) if saved > 0 else None
  sens = []
  for memory in (False, True):
    for ring in ("flat", "hierarchical"):
      for eff in (0.1, 0.3, 1.0):
        p = project(measured, [preset], [n], ring, eff, memory)
        sp = speedups(p)[preset][n]
        sens.append(dict(memory_term=memory, ring=ring, compute_efficiency=eff, best_flat=sp["best_flat"],
                         best_flat_ms=sp["best_flat_ms"], **{f"c={c}": sp[f"c={c}"] for c in COMPRESSIONS}))
  return dict(devices=n, preset=preset, best_flat=best, flat=flat, dmt_c4=dmt, speedup_c4=speed[preset][n]["c=4"],
              flat_cross_host_share=flat["cross_host_ms"] / flat["total_ms"],
              flat_embedding_share=sum(v for r, v in flat["by_role_ms"].items() if r != "dense_sync") / flat["total_ms"],
              saved_ms=saved, flat_step_ms_for_1_9x=t_19,
              unmodelled_ms_for_1_9x=None if t_19 is None else t_19 - flat["total_ms"], sensitivity=sens)


def validate(path):
  """Benchmark cases predicted on the calibrated local preset vs their measured medians."""
  from dmt_jax import topology
  from dmt_jax.analysis import cost_model as cm
  with open(path) as f:
    bench = json.load(f)
  measured_ms = {c["name"]: c["step_ms_median"] for c in bench["cases"]}
  cfg = bench_config("flat", "table_wise", None)
  topo = topology.Topology.from_string(cfg.topology, cfg.tower_level)
  rates = bench["machine"]
  local = cm.calibrate_local_mesh(topology.make_mesh(topo), topo.local_axes, topo.peer_axes,
                                  rates["matmul_flops_per_s"], rates["memory_bytes_per_s"])
  rows = []
  for name, mode, sharding, comp, _ in cases():
    if name not in measured_ms:
      continue
    m = measure(bench_config(mode, sharding, comp))
    p_f = cm.predict_step(m["collectives"], m["flops"], 0.0, local, m["num_devices"], m["group_size"])
    p_r = cm.predict_step(m["collectives"], m["flops"], m["bytes_accessed"], local, m["num_devices"],
                          m["group_size"])
    rows.append(dict(name=name, measured_ms=measured_ms[name], predicted_ms=1e3 * p_f["total_s"],
                     predicted_roofline_ms=1e3 * p_r["total_s"], compute_ms=1e3 * p_f["compute_s"],
                     memory_ms=1e3 * m["bytes_accessed"] / local.mem_bandwidth, comm_ms=1e3 * p_f["comm_s"],
                     comm_bytes=sum(c["bytes"] for c in m["collectives"])))
  meas = [r["measured_ms"] for r in rows]
  for key, rank in (("measured_ms", "measured_rank"), ("predicted_ms", "rank_flops"),
                    ("predicted_roofline_ms", "rank_roofline")):
    for r, k in zip(rows, cm.ranks([r[key] for r in rows])):
      r[rank] = int(k)
  return dict(
      source=path, command=bench.get("command"), machine=rates,
      local_cluster=dict(levels=[dict(name=l.name, bandwidth_gb_s=l.bandwidth / 1e9, latency_us=1e6 * l.latency)
                                 for l in local.levels],
                         peak_gflops_per_device=local.peak_flops / 1e9,
                         mem_gb_s_per_device=local.mem_bandwidth / 1e9),
      rows=rows,
      spearman_flops=cm.spearman([r["predicted_ms"] for r in rows], meas),
      spearman_roofline=cm.spearman([r["predicted_roofline_ms"] for r in rows], meas),
      spearman_comm_bytes=cm.spearman([r["comm_bytes"] for r in rows], meas))


# ---------------------------------------------------------------------------------------------------
# Output


def plots(out_dir, measured, pred, speed):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  paths = {}
  ns = device_counts()
  fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
  for preset in pred:
    ax.plot(ns, [speed[preset][n]["c=4"] for n in ns], marker="o", ms=3, label=preset)
  ax.axhline(1.0, color="gray", lw=0.8)
  ax.axhline(1.9, color="gray", lw=0.8, ls="--", label="paper: up to 1.9x")
  ax.set_xscale("log", base=2)
  ax.set_xlabel("devices (hosts of 8)")
  paths["speedup"] = _finish(fig, ax, os.path.join(out_dir, "costmodel_speedup_vs_devices.png"),
                             "predicted speedup", "DMT c=4 over the best flat baseline (predicted)", 10)

  fig, ax = plt.subplots(figsize=(5, 3.4), dpi=100)
  cs = list(COMPRESSIONS)
  ax.plot(cs, [measured[f"dmt c={c}"]["embedding_cross_tower_bytes"] / 2 ** 20 for c in cs], marker="o",
          label="DMT (linear TM)")
  for s, ls in (("table_wise", "--"), ("table_row_wise", ":")):
    ax.axhline(measured[f"flat {s}"]["embedding_cross_tower_bytes"] / 2 ** 20, ls=ls, color="gray", label=f"flat {s}")
  n, preset = FLAGS.headline_devices, FLAGS.headline_preset
  ax.plot(cs, [pred[preset][f"dmt c={c}"][n]["embedding_cross_tower_bytes"] / 2 ** 20 for c in cs], marker="s",
          ls="-.", label=f"DMT scaled to {n} devices (law)")
  ax.set_xscale("log", base=2)
  ax.set_xticks(cs, [str(c) for c in cs])
  ax.set_xlabel("compression c")
  paths["bytes"] = _finish(fig, ax, os.path.join(out_dir, "costmodel_cross_bytes_vs_c.png"),
                           "MiB per device per step", "Embedding cross-tower bytes (HLO, host=2 x device=4)", 9)

  n, preset = FLAGS.headline_devices, FLAGS.headline_preset
  names = [c[0] for c in cases()]
  rows = [pred[preset][x][n] for x in names]
  fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
  bottom = [0.0] * len(rows)
  for key, label in (("compute_ms", "compute"), ("intra_host_ms", "intra-host comm"),
                     ("cross_host_ms", "cross-host comm")):
    vals = [r[key] for r in rows]
    ax.bar(range(len(rows)), vals, bottom=bottom, label=label)
    bottom = [b + v for b, v in zip(bottom, vals)]
  top = 1.5 * sorted(bottom)[-2]   # clip the row-wise outlier, label it
  ax.set_ylim(0, top)
  for i, b in enumerate(bottom):
    if b > top:
      ax.text(i, 0.93 * top, f"{b:.3g} ms", ha="center", fontsize=7, color="white")
  ax.set_xticks(range(len(rows)), [x.replace("flat ", "").replace("table_", "t").replace("_wise", "w") for x in names],
                fontsize=8)
  paths["breakdown"] = _finish(fig, ax, os.path.join(out_dir, f"costmodel_breakdown_{preset}_{n}.png"),
                               "predicted ms per step", f"Predicted step breakdown, {n} devices, {preset}", 10)
  return paths


def _finish(fig, ax, path: str, ylabel: str, title: str, title_size: int) -> str:
  """Labels, legend and layout shared by the report's plots; saves ``fig`` to ``path`` and closes it."""
  import matplotlib.pyplot as plt
  ax.set_ylabel(ylabel)
  ax.set_title(title, fontsize=title_size)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)
  return path


def fmt(v, digits=3):
  if v is None:
    return "-"
  if isinstance(v, float):
    return f"{v:.{digits}g}" if abs(v) < 1e5 else f"{v:.3e}"
  return str(v)


def table(header, rows):
  out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  out += ["| " + " | ".join(fmt(x) for x in r) + " |" for r in rows]
  return "\n".join(out)


def markdown(result):
  meas, pred, speed = result["measured"], result["predictions"], result["speedup"]
  ns = device_counts()
  roles = sorted({r for m in meas.values() for r in m["bytes_by_role"]})
  md = [f"`{result['command']}`\n",
        f"Emulated mesh host=2 x device=4, {FLAGS.batch_per_device} samples/device, {FLAGS.num_features} "
        f"one-hot tables x dim {FLAGS.embedding_dim}; compute at {FLAGS.compute_efficiency:g} x bf16 peak; "
        f"dense all-reduce: {FLAGS.ring} ring.\n",
        "**Measured per-device bytes per step by role (HLO) and law check (measured / engine law):**\n",
        table(["case", "GFLOP/dev", "dense params"] + roles + ["law check"],
              [[k, m["flops"] / 1e9, m["dense_params"]] + [m["bytes_by_role"].get(r, 0) for r in roles]
               + [", ".join(f"{r}={v:.2f}" for r, v in m["law_check"].items() if v is not None)]
               for k, m in meas.items()]),
        "\n**Predicted speedup of DMT c=4 over the best flat baseline** (best flat in brackets):\n",
        table(["preset"] + [str(n) for n in ns],
              [[p] + [f"{speed[p][n]['c=4']:.2f} ({speed[p][n]['best_flat'].replace('table_', 't').replace('_wise', 'w')})"
                      for n in ns] for p in pred]),
        "\n**Predicted speedup of DMT at every c over the best flat baseline, "
        f"{FLAGS.headline_preset}:**\n",
        table(["N"] + [f"c={c}" for c in COMPRESSIONS],
              [[n] + [speed[FLAGS.headline_preset][n][f"c={c}"] for c in COMPRESSIONS] for n in ns]),
        f"\n**Predicted breakdown at {FLAGS.headline_devices} devices, {FLAGS.headline_preset} (ms per step):**\n",
        table(["case", "compute", "intra-host", "cross-host", "total", "cross share", "devices/tower group"],
              [[k, r["compute_ms"], r["intra_host_ms"], r["cross_host_ms"], r["total_ms"],
                r["cross_host_ms"] / r["total_ms"], r["devices_per_tower_group"]]
               for k, v in pred[FLAGS.headline_preset].items() for r in [v[FLAGS.headline_devices]]])]
  h = result["headline"]
  md += [f"\n**Paper comparison ({h['devices']} devices, {h['preset']}):** best flat = {h['best_flat']} "
         f"{h['flat']['total_ms']:.3g} ms (cross-host {100 * h['flat_cross_host_share']:.0f}% of the step, "
         f"embedding exchange {100 * h['flat_embedding_share']:.0f}%), DMT c=4 {h['dmt_c4']['total_ms']:.3g} ms: "
         f"**{h['speedup_c4']:.2f}x**. DMT saves {h['saved_ms']:.3g} ms; that saving is a 1.9x speedup of a flat "
         f"step of {fmt(h['flat_step_ms_for_1_9x'])} ms, i.e. with {fmt(h['unmodelled_ms_for_1_9x'])} ms of "
         "per-step work the model does not see.\n",
         "Sensitivity (speedup of DMT over the best flat baseline):\n",
         table(["memory term", "dense all-reduce", "compute efficiency", "best flat", "best flat ms"]
               + [f"c={c}" for c in COMPRESSIONS],
               [["XLA bytes" if r["memory_term"] else "-", r["ring"], r["compute_efficiency"], r["best_flat"],
                 r["best_flat_ms"]]
                + [r[f"c={c}"] for c in COMPRESSIONS] for r in h["sensitivity"]])]
  v = result.get("validation")
  if v:
    md += [f"\n**Validation on this machine** (`{v['command']}`; local preset: "
           + ", ".join(f"{l['name']} {l['bandwidth_gb_s']:.2f} GB/s, {l['latency_us']:.0f} us"
                       for l in v["local_cluster"]["levels"])
           + f"; {v['local_cluster']['peak_gflops_per_device']:.2f} GFLOP/s and "
           f"{v['local_cluster']['mem_gb_s_per_device']:.2f} GB/s per device):\n",
           table(["case", "measured ms (rank)", "predicted ms, FLOPs (rank)", "measured / predicted",
                  "predicted ms, roofline (rank)", "measured / predicted", "compute ms", "memory ms", "comm ms"],
                 [[r["name"], f"{fmt(r['measured_ms'])} ({r['measured_rank']})",
                   f"{fmt(r['predicted_ms'])} ({r['rank_flops']})", r["measured_ms"] / r["predicted_ms"],
                   f"{fmt(r['predicted_roofline_ms'])} ({r['rank_roofline']})",
                   r["measured_ms"] / r["predicted_roofline_ms"], r["compute_ms"], r["memory_ms"], r["comm_ms"]]
                  for r in v["rows"]]),
           f"\nSpearman (predicted vs measured): FLOPs+comm {v['spearman_flops']:.2f}, roofline+comm "
           f"{v['spearman_roofline']:.2f}, comm bytes alone {v['spearman_comm_bytes']:.2f}."]
  md += ["\nPlots: " + ", ".join(f"`{p}`" for p in result["plots"].values())]
  return "\n".join(md) + "\n"


def main(argv):
  del argv
  import jax
  jax.config.update("jax_num_cpu_devices", FLAGS.num_cpu_devices)
  os.makedirs(FLAGS.output_dir, exist_ok=True)
  if FLAGS.cache and os.path.exists(FLAGS.cache):
    with open(FLAGS.cache) as f:
      _CACHE.update(json.load(f))
  measured = {}
  for name, mode, sharding, comp, layout in cases():
    print(f"[cost_model_report] compiling {name}", file=sys.stderr, flush=True)
    m = dict(measure(paper_config(mode, sharding, comp)))
    m["law_check"] = law_check(m, layout, law_kwargs(m, comp))
    measured[name] = m
  pred = project(measured)
  speed = speedups(pred)
  head = headline(measured, pred, speed)
  result = dict(command="python experiments/cost_model_report.py " + " ".join(sys.argv[1:]),
                assumptions=dict(batch_per_device=FLAGS.batch_per_device, embedding_dim=FLAGS.embedding_dim,
                                 num_features=FLAGS.num_features, host_size=FLAGS.host_size,
                                 compute_efficiency=FLAGS.compute_efficiency, ring=FLAGS.ring, overlap=False),
                measured={k: {x: y for x, y in m.items() if x != "collectives"} for k, m in measured.items()},
                predictions=pred, speedup=speed, headline=head)
  if FLAGS.compare_json:
    print("[cost_model_report] validating against " + FLAGS.compare_json, file=sys.stderr, flush=True)
    result["validation"] = validate(FLAGS.compare_json)
  if FLAGS.cache:
    with open(FLAGS.cache, "w") as f:
      json.dump(_CACHE, f)
  result["plots"] = plots(FLAGS.output_dir, measured, pred, speed)
  with open(os.path.join(FLAGS.output_dir, "cost_model_report.json"), "w") as f:
    json.dump(result, f, indent=1, default=str)
  md = markdown(result)
  with open(os.path.join(FLAGS.output_dir, "cost_model_report.md"), "w") as f:
    f.write(md)
  print(md)


if __name__ == "__main__":
  cli.run(main)
