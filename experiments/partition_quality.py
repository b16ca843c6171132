r"""Partition quality on synthetic data with planted interaction groups: flat vs DMT with TP / random /
round-robin towers, several seeds, AUC and NE mean and spread -> JSON + markdown.

  python experiments/partition_quality.py --config=experiments/configs/flat_dlrm.py:tiny \
      --workdir=/tmp/pq --seeds=0,1,2 --num_towers=4 --tower_module=dot --compression=4 \
      --num_train_steps=3000 --partition_step=2000

Per seed s (parameter-init seed s; the data, hence the planted groups and the eval set, is fixed):

1. the flat model trains ``--num_train_steps`` steps and keeps its checkpoint at ``--partition_step``;
2. TP partitions the features into ``--num_towers`` towers from that checkpoint (learned interaction
   affinity on ``--num_sample_batches`` later batches, default balance limits, seed s); the random
   (balanced, seed s) and round-robin baselines use the same constraints;
3. a DMT model per partition trains from scratch for ``--num_train_steps`` steps (tower module
   ``--tower_module``, compression ``--compression``); with ``--with_init_from`` also DMT-TP
   initialised from the flat checkpoint at ``--partition_step`` and trained for the remaining steps.

Every model is evaluated on the same ``--num_eval_batches`` eval batches. Output under ``--workdir``:
one run folder per model, ``towers_<method>_<seed>.json``, ``quality.json`` (all numbers, per-seed
paired differences) and ``quality.md`` (the table). ARI = adjusted Rand index of the towers vs the
planted groups (1 = recovered).
"""

import json
import os
import time

from absl import app, flags
from ml_collections import config_flags

import cli

config_flags.DEFINE_config_file("config", None, "Flat experiment config file[:arg] (synthetic data).",
                                lock_config=False)
flags.DEFINE_string("workdir", None, "Output folder.")
flags.DEFINE_string("seeds", "0,1,2", "Comma-separated parameter-init seeds.")
flags.DEFINE_integer("num_towers", 4, "Towers T (a multiple of the tower-group count).")
flags.DEFINE_string("tower_module", "dot", "DMT tower module: identity | linear | mlp | dcn | dot | mix.")
flags.DEFINE_float("compression", 4.0, "Tower compression ratio c.")
flags.DEFINE_integer("num_train_steps", 3000, "Training steps of every model.")
flags.DEFINE_integer("partition_step", 2000, "Flat checkpoint step the partitioner reads.")
flags.DEFINE_integer("num_sample_batches", 8, "Batches for the affinity.")
flags.DEFINE_integer("num_eval_batches", 16, "Eval batches (of config.eval_batch_size) for every model.")
flags.DEFINE_string("methods", "affinity,random,round_robin", "Partition methods to compare.")
flags.DEFINE_bool("with_init_from", False, "Also run DMT-TP initialised from the flat checkpoint.")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS

LABELS = {"flat": "flat", "affinity": "DMT + TP towers", "random": "DMT + random towers",
          "round_robin": "DMT + round-robin towers", "greedy_cost": "DMT + greedy-cost towers",
          "affinity_init": "DMT + TP towers, init from flat"}


def _last_eval(workdir):
  last = None
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      rec = json.loads(line)
      if "eval/auc" in rec:
        last = rec
  return last


def main(argv):
  del argv
  import jax
  jax.config.update("jax_num_cpu_devices", 8)
  import jax.numpy as jnp
  import numpy as np

  from dmt_jax import checkpoint as ckpt_lib
  from dmt_jax import partitioner as tp
  from dmt_jax import train
  from dmt_jax.data import pipeline
  from dmt_jax.models import dmt as dmt_models
  from dmt_jax.topology import Topology

  base = FLAGS.config
  if base.data.source != "synthetic":
    raise app.UsageError("partition_quality needs config.data.source='synthetic' (planted groups)")
  base.num_eval_batches = FLAGS.num_eval_batches
  base.num_train_steps = FLAGS.num_train_steps
  seeds = [int(s) for s in FLAGS.seeds.split(",") if s]
  methods = [m for m in FLAGS.methods.split(",") if m]
  os.makedirs(FLAGS.workdir, exist_ok=True)
  source = pipeline.make_source(base)
  fs, planted = source.fs, source.gen.group_of
  G = Topology.from_string(base.topology, base.tower_level or None).num_groups
  cons = tp.Constraints(FLAGS.num_towers, G)
  results = {"config": {"base": base.to_dict(), "seeds": seeds, "num_towers": FLAGS.num_towers,
                        "tower_module": FLAGS.tower_module, "compression": FLAGS.compression,
                        "num_train_steps": FLAGS.num_train_steps, "partition_step": FLAGS.partition_step,
                        "num_sample_batches": FLAGS.num_sample_batches,
                        "num_eval_batches": FLAGS.num_eval_batches,
                        "planted_groups": [list(map(int, g)) for g in source.planted_groups]},
             "runs": []}
  out_json = os.path.join(FLAGS.workdir, "quality.json")

  def record(seed, variant, workdir, towers=None, extra=None):
    ev = _last_eval(workdir)
    row = {"seed": seed, "variant": variant, "auc": ev["eval/auc"], "ne": ev["eval/ne"],
           "logloss": ev["eval/logloss"], "step": ev["step"], "workdir": workdir, **(extra or {})}
    if towers is not None:
      labels = np.full(fs.num_features, -1)
      for t, feats in enumerate(towers):
        labels[feats] = t
      row["ari"] = tp.adjusted_rand_index(planted, labels)
      row["towers"] = towers
    results["runs"].append(row)
    with open(out_json, "w") as f:
      json.dump(results, f, indent=1, default=float)
    print(json.dumps({k: v for k, v in row.items() if k != "towers"}, default=float), flush=True)

  def run(cfg, workdir):
    if _has_final_eval(workdir, int(cfg.num_train_steps)):
      return
    t0 = time.time()
    train.train_and_evaluate(cfg, workdir)
    print(f"{workdir}: {time.time() - t0:.0f}s", flush=True)

  for seed in seeds:
    flat = base.copy_and_resolve_references()
    flat.mode, flat.seed = "flat", seed
    flat.checkpoint_every, flat.keep_checkpoints = FLAGS.partition_step, 0
    fdir = os.path.join(FLAGS.workdir, f"flat_{seed}")
    run(flat, fdir)
    record(seed, "flat", fdir)

    _, logical = ckpt_lib.load_logical(fdir, FLAGS.partition_step)
    batches = [source.train_batch(FLAGS.partition_step + i) for i in range(FLAGS.num_sample_batches)]
    costs = tp.feature_costs(fs, batches, flat.embedding_optimizer)
    emb = tp.pooled_embeddings(fs, logical["tables"], np.concatenate([b.ids for b in batches]),
                               np.concatenate([b.weights for b in batches]))
    model = dmt_models.over_arch(flat.model, fs.uniform_dim())
    params = jax.tree.map(jnp.asarray, logical["params"]["dense"])
    logit_fn = jax.jit(lambda d, e: model.apply({"params": params}, d, e))
    affinity = tp.interaction_affinity(logit_fn, np.concatenate([b.dense for b in batches]), emb, seed=seed)

    for method in methods:
      part = tp.partition(fs, costs, cons, method, affinity, seed=seed)
      tfile = os.path.join(FLAGS.workdir, f"towers_{method}_{seed}.json")
      tp.save_towers(tfile, part, fs, {"affinity": np.round(affinity, 6).tolist()})
      dmt = base.copy_and_resolve_references()
      dmt.mode, dmt.seed = "dmt", seed
      dmt.towers.file, dmt.towers.num_towers = tfile, FLAGS.num_towers
      dmt.towers.module, dmt.towers.compression = FLAGS.tower_module, FLAGS.compression
      dmt.checkpoint_every = 0
      ddir = os.path.join(FLAGS.workdir, f"dmt_{method}_{seed}")
      run(dmt, ddir)
      record(seed, method, ddir, part.towers, {"objective": part.report["objective"],
                                                "intra_fraction": part.report["intra_fraction"]})
      if method == "affinity" and FLAGS.with_init_from:
        dmt.init_from = fdir
        dmt.num_train_steps = FLAGS.num_train_steps - FLAGS.partition_step
        idir = os.path.join(FLAGS.workdir, f"dmt_affinity_init_{seed}")
        run(dmt, idir)
        record(seed, "affinity_init", idir, part.towers)

  summary = _summarise(results["runs"])
  results["summary"] = summary
  with open(out_json, "w") as f:
    json.dump(results, f, indent=1, default=float)
  md = _markdown(results)
  with open(os.path.join(FLAGS.workdir, "quality.md"), "w") as f:
    f.write(md)
  print(md, flush=True)
  return 0


def _has_final_eval(workdir, steps):
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return False
  ev = _last_eval(workdir)
  return ev is not None and ev["step"] >= steps


def _summarise(runs):
  import numpy as np
  out = {}
  variants = list(dict.fromkeys(r["variant"] for r in runs))
  for v in variants:
    rows = [r for r in runs if r["variant"] == v]
    s = {"n": len(rows)}
    for k in ("auc", "ne", "ari"):
      x = np.array([r[k] for r in rows if k in r], np.float64)
      if len(x):
        s[k] = {"mean": float(x.mean()), "std": float(x.std(ddof=1)) if len(x) > 1 else 0.0,
                "min": float(x.min()), "max": float(x.max())}
    out[v] = s
  by = {(r["variant"], r["seed"]): r for r in runs}
  paired = {}
  for a, b in (("affinity", "flat"), ("affinity", "random"), ("affinity", "round_robin"),
               ("affinity_init", "flat")):
    d = [by[(a, s)]["auc"] - by[(b, s)]["auc"] for (v, s) in by if v == a and (b, s) in by]
    if d:
      paired[f"auc[{a}] - auc[{b}]"] = {"mean": float(np.mean(d)), "per_seed": [float(x) for x in d]}
  out["paired"] = paired
  return out


def _markdown(results):
  s, c = results["summary"], results["config"]
  lines = [f"T={c['num_towers']} towers, tower module `{c['tower_module']}`, c={c['compression']:g}, "
           f"{c['num_train_steps']} steps, TP from the flat checkpoint at step {c['partition_step']}, "
           f"seeds {c['seeds']}, eval on {c['num_eval_batches']} batches.", "",
           "| model | AUC mean ± std (min–max) | NE mean ± std | towers ARI vs planted |",
           "|---|---|---|---|"]
  for v, row in s.items():
    if v == "paired":
      continue
    auc, ne = row["auc"], row["ne"]
    ari = f"{row['ari']['mean']:.3f} ± {row['ari']['std']:.3f}" if "ari" in row else "—"
    lines.append(f"| {LABELS.get(v, v)} | {auc['mean']:.4f} ± {auc['std']:.4f} ({auc['min']:.4f}–{auc['max']:.4f}) "
                 f"| {ne['mean']:.4f} ± {ne['std']:.4f} | {ari} |")
  lines.append("")
  for k, d in s["paired"].items():
    lines.append(f"* paired {k}: mean {d['mean']:+.4f}, per seed {', '.join(f'{x:+.4f}' for x in d['per_seed'])}")
  return "\n".join(lines) + "\n"


if __name__ == "__main__":
  cli.run(main)
