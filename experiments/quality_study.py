r"""Quality-parity study on MovieLens-100K: flat vs DMT (c in {1, 2, 4}) for DLRM and DCN-v2, several seeds.

  nohup nice -n 10 python experiments/quality_study.py --output_dir=/tmp/quality > /tmp/quality.log 2>&1 &
  python experiments/quality_study.py --output_dir=/tmp/q --seeds=1 --compressions=4 --models=dlrm  # smoke

Every arm trains the ``movielens`` preset (``--config_arg``, e.g. ``movielens,steps=600``) on 8 fake CPU
devices (host=2 x device=4) with ``train.train_and_evaluate``; seed k sets both ``config.seed`` (init) and
``config.data.seed`` (shuffle order). DMT arms use the tower assignment of ``--towers``:

* ``semantic`` (default; a fixed, documented assignment used while no partitioner output is given):
  2 towers, one per host group — user side ``user_id, age, gender, occupation, zip2`` and item side
  ``item_id, genres, year``. With the padded tower width F_t = 5 a tower emits K = ceil(5 / c) vectors:
  c=1 -> 5, c=2 -> 3, c=4 -> 2 (the flat over-arch sees 8 feature vectors, DMT 2K).
* ``contiguous``: ``config.towers.num_towers`` (default one per group) contiguous blocks of features.
* ``file``: ``--towers_file`` (towers JSON, ``config.towers.file``), e.g. the tower partitioner's output
  from a flat run of the same preset (``{model}`` in the path is replaced by the model name)::

    python experiments/main.py --config=experiments/configs/flat_dlrm.py:movielens --workdir=/tmp/p/flat_dlrm
    python experiments/partition.py --workdir=/tmp/p/flat_dlrm --num_towers=2 --output=/tmp/p/towers_dlrm.json
    (same for dcn)
    python experiments/quality_study.py --output_dir=/tmp/q --towers=file --towers_file=/tmp/p/towers_{model}.json

Trivial baselines on the same eval rows: the base-rate predictor (train CTR), the item-CTR predictor
(per-item train CTR shrunk to the base rate with strength ``--prior``) and the item-popularity predictor
(number of train ratings of the item, mapped to a probability by a 1-D logistic fit on the train split).

Outputs under ``--output_dir``: ``results.json`` (every run, per-arm mean/std, baselines, the command),
``results.md`` (markdown table), ``quality.png`` (AUC and NE per arm, mean +- std), and ``runs/<arm>/seed<k>/``
(metrics.jsonl, result.json). Finished runs are reused, so re-running the same command resumes the study.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time

from absl import app, flags, logging

import cli

flags.DEFINE_string("output_dir", None, "Directory for results.json, results.md, quality.png and runs/.")
flags.DEFINE_list("models", ["dlrm", "dcn"], "Models: dlrm, dcn.")
flags.DEFINE_list("compressions", ["1", "2", "4"], "DMT compression ratios c.")
flags.DEFINE_integer("seeds", 5, "Seeds per arm (0 .. seeds-1): config.seed and config.data.seed.")
flags.DEFINE_string("config_arg", "movielens", "Preset and overrides for every arm ('movielens,steps=600').")
flags.DEFINE_string("dmt_arg", "", "Extra comma-separated key=value overrides for the DMT arms only.")
flags.DEFINE_string("tower_module", "linear", "DMT tower module: identity, linear, mlp, dcn, dot.")
flags.DEFINE_enum("towers", "semantic", ["semantic", "contiguous", "file"], "DMT tower assignment.")
flags.DEFINE_string("towers_file", "", "Towers JSON for --towers=file (e.g. experiments/partition.py's "
                    "output); '{model}' in the path is replaced by dlrm / dcn.")
flags.DEFINE_string("data_path", "", "recbole wheel cache dir (default ~/.cache/dmt_jax).")
flags.DEFINE_float("prior", 10.0, "Shrinkage strength (pseudo-ratings) of the item-CTR baseline.")
flags.DEFINE_integer("num_cpu_devices", 8, "Fake CPU devices.")
flags.DEFINE_bool("keep_checkpoints", False, "Keep each run's checkpoints (large-ish); default deletes them.")
flags.mark_flags_as_required(["output_dir"])
FLAGS = flags.FLAGS

SEMANTIC_TOWERS = "user_id,age,gender,occupation,zip2|item_id,genres,year"
TOLERANCE = 0.003  # issue acceptance: |mean DMT AUC - mean flat AUC| <= 0.003


def _command() -> str:
  return "python " + " ".join(a if " " not in a else repr(a) for a in sys.argv)


def arm_config(model: str, comp: float | None, seed: int):
  """The config of one run; ``comp=None`` is the flat baseline."""
  from dmt_jax import config_base
  arg = FLAGS.config_arg
  if comp is not None and FLAGS.dmt_arg:
    arg = f"{arg},{FLAGS.dmt_arg}"
  c = config_base.get_config(model, "flat" if comp is None else "dmt", arg)
  c.seed, c.data.seed = seed, seed
  if FLAGS.data_path:
    c.data.path = FLAGS.data_path
  c.checkpoint_every = 0
  if comp is not None:
    c.towers.module, c.towers.compression = FLAGS.tower_module, float(comp)
    if FLAGS.towers == "semantic":
      c.towers.assignment = SEMANTIC_TOWERS
    elif FLAGS.towers == "file":
      if not FLAGS.towers_file:
        raise app.UsageError("--towers=file needs --towers_file")
      c.towers.file = FLAGS.towers_file.format(model=model)
  return c


def run_one(name: str, config, seed: int) -> dict:
  """Trains one arm/seed (or reuses a finished run); returns its final eval metrics plus wall time."""
  from dmt_jax import train
  wd = os.path.join(FLAGS.output_dir, "runs", name, f"seed{seed}")
  done = os.path.join(wd, "result.json")
  if os.path.exists(done):
    with open(done) as f:
      return json.load(f)
  if os.path.exists(wd):
    shutil.rmtree(wd)  # a killed run: start it over (same numbers; keeps metrics.jsonl clean)
  t0 = time.time()
  result = train.train_and_evaluate(config, wd)
  result = {k: float(v) for k, v in result.items()} | {"wall_s": time.time() - t0, "seed": seed}
  if not FLAGS.keep_checkpoints:
    shutil.rmtree(os.path.join(wd, "checkpoints"), ignore_errors=True)
  with open(done, "w") as f:
    json.dump(result, f, indent=1)
  return result


# --- trivial baselines ------------------------------------------------------------------------------

def _logistic_fit(x, y, steps: int = 50):
  """(a, b) minimising the log loss of sigmoid(a*x + b) by Newton's method; x, y float [N]."""
  import numpy as np
  w = np.zeros(2)
  X = np.stack([x, np.ones_like(x)], 1)
  for _ in range(steps):
    p = 1 / (1 + np.exp(-(X @ w)))
    g = X.T @ (p - y)
    H = (X * (p * (1 - p))[:, None]).T @ X + 1e-9 * np.eye(2)
    w -= np.linalg.solve(H, g)
  return w


def baselines(config) -> dict:
  """Base-rate, item-CTR and item-popularity predictors on exactly the rows the model is evaluated on."""
  import numpy as np
  from dmt_jax import metrics
  from dmt_jax.data.pipeline import make_source
  src = make_source(config)
  item = src.fs.slot_offsets[src.fs.feature_index("item_id")]
  tr_item = src.data.train.ids[:, item].astype(np.int64)
  tr_y = src.data.train.labels.astype(np.float64)
  rows = np.concatenate(list(src.eval_rows()))
  ev_item = src.data.eval.ids[rows, item].astype(np.int64)
  ev_y = src.data.eval.labels[rows].astype(np.float64)
  n_items = src.fs.table_of(src.fs.feature_index("item_id")).vocab_size
  p = tr_y.mean()
  count = np.bincount(tr_item, minlength=n_items).astype(np.float64)
  pos = np.bincount(tr_item, weights=tr_y, minlength=n_items)
  ctr = (pos + FLAGS.prior * p) / (count + FLAGS.prior)
  a, b = _logistic_fit(np.log1p(count[tr_item]), tr_y)
  pop = 1 / (1 + np.exp(-(a * np.log1p(count[ev_item]) + b)))
  out = {}
  for name, probs in (("base rate", np.full(len(ev_y), p)), ("item CTR", ctr[ev_item]),
                      ("item popularity", pop)):
    out[name] = {"auc": metrics.auc(ev_y, probs), "ne": metrics.normalized_entropy(ev_y, probs),
                 "logloss": metrics.log_loss(ev_y, probs)}
  out["_rows"] = int(len(ev_y))
  return out


# --- report -------------------------------------------------------------------------------------------

def _stats(xs):
  n = len(xs)
  m = sum(xs) / n
  sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1)) if n > 1 else 0.0
  return m, sd


def summarize(runs: dict, arms: list) -> list[dict]:
  rows = []
  for model, comp, name in arms:
    rs = runs[name]
    flat = runs[f"{model}_flat"]
    auc, ne = _stats([r["auc"] for r in rs]), _stats([r["ne"] for r in rs])
    # paired by seed: same init seed and data order as the flat run
    d = _stats([r["auc"] - f["auc"] for r, f in zip(rs, flat)]) if comp is not None else (0.0, 0.0)
    rows.append({"model": model, "arm": "flat" if comp is None else f"DMT c={comp:g}", "name": name,
                 "compression": comp, "seeds": len(rs), "auc_mean": auc[0], "auc_std": auc[1],
                 "ne_mean": ne[0], "ne_std": ne[1], "dauc_mean": d[0], "dauc_std": d[1],
                 "within_tolerance": comp is None or abs(d[0]) <= TOLERANCE,
                 "wall_s_mean": _stats([r["wall_s"] for r in rs])[0]})
  return rows


def markdown(rows, base, meta) -> str:
  out = [f"Command: `{meta['command']}`", "",
         f"MovieLens-100K, eval = per-user temporal split (last 20% of each user's ratings), "
         f"{base['_rows']} eval rows; {meta['seeds']} seeds per arm; DMT towers: {meta['towers']}; "
         f"tower module: {meta['tower_module']}.", ""]
  for model, towers in meta.get("towers_by_model", {}).items():
    out += [f"Towers for {model}: " + " | ".join(", ".join(map(str, t)) for t in towers), ""]
  out += ["| model | arm | AUC (mean ± std) | NE (mean ± std) | ΔAUC vs flat (paired) | within 0.003 | s/run |",
          "|---|---|---|---|---|---|---|"]
  for r in rows:
    dauc = "—" if r["compression"] is None else f"{r['dauc_mean']:+.4f} ± {r['dauc_std']:.4f}"
    ok = "—" if r["compression"] is None else ("yes" if r["within_tolerance"] else "**no**")
    out.append(f"| {r['model']} | {r['arm']} | {r['auc_mean']:.4f} ± {r['auc_std']:.4f} | "
               f"{r['ne_mean']:.4f} ± {r['ne_std']:.4f} | {dauc} | {ok} | {r['wall_s_mean']:.0f} |")
  for name in ("base rate", "item CTR", "item popularity"):
    b = base[name]
    out.append(f"| baseline | {name} | {b['auc']:.4f} | {b['ne']:.4f} | | | |")
  return "\n".join(out) + "\n"


def plot(rows, base, path) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  models = sorted({r["model"] for r in rows}, key=[r["model"] for r in rows].index)
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for ax, key, label in ((axes[0], "auc", "eval AUC"), (axes[1], "ne", "eval NE")):
    for i, model in enumerate(models):
      mr = [r for r in rows if r["model"] == model]
      xs = [j + 0.2 * (i - (len(models) - 1) / 2) for j in range(len(mr))]
      ax.errorbar(xs, [r[f"{key}_mean"] for r in mr], yerr=[r[f"{key}_std"] for r in mr], fmt="o", capsize=4,
                  label=model)
      flat = mr[0][f"{key}_mean"]
      if key == "auc":
        ax.axhspan(flat - TOLERANCE, flat + TOLERANCE, color=f"C{i}", alpha=0.12)
    note = ", ".join(f"{n} {base[n][key]:.3f}" for n in ("base rate", "item CTR", "item popularity"))
    ax.text(0.01, 0.01, f"baselines (off scale): {note}", transform=ax.transAxes, fontsize=7, color="gray")
    arms = [r["arm"] for r in rows if r["model"] == models[0]]
    ax.set_xticks(range(len(arms)), arms)
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
  axes[0].set_title("AUC (band: flat ± 0.003)")
  axes[1].set_title("NE (lower is better)")
  axes[0].legend(fontsize=8)
  fig.suptitle("MovieLens-100K: flat vs DMT, mean ± std over seeds")
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  import jax
  jax.config.update("jax_num_cpu_devices", FLAGS.num_cpu_devices)
  os.makedirs(FLAGS.output_dir, exist_ok=True)
  cmd = _command()
  print(f"command: {cmd}", flush=True)
  comps = [float(c) for c in FLAGS.compressions]
  arms = []
  for model in FLAGS.models:
    arms.append((model, None, f"{model}_flat"))
    arms += [(model, c, f"{model}_dmt_c{c:g}") for c in comps]
  base = baselines(arm_config(FLAGS.models[0], None, 0))
  print("baselines: " + json.dumps({k: v for k, v in base.items()}), flush=True)
  runs: dict = {}
  for seed in range(FLAGS.seeds):  # seeds outermost: a partial study already has every arm
    for model, comp, name in arms:
      r = run_one(name, arm_config(model, comp, seed), seed)
      runs.setdefault(name, []).append(r)
      print(f"{name} seed {seed}: auc={r['auc']:.4f} ne={r['ne']:.4f} ({r['wall_s']:.0f}s)", flush=True)
  rows = summarize(runs, arms)
  meta = {"command": cmd, "seeds": FLAGS.seeds, "config_arg": FLAGS.config_arg, "dmt_arg": FLAGS.dmt_arg,
          "tower_module": FLAGS.tower_module,
          "towers": {"semantic": f"2 fixed towers {SEMANTIC_TOWERS!r} (user side | item side)",
                     "contiguous": "contiguous blocks of features",
                     "file": f"from {FLAGS.towers_file}"}[FLAGS.towers],
          "tolerance": TOLERANCE}
  if FLAGS.towers == "file":
    for model in FLAGS.models:
      with open(FLAGS.towers_file.format(model=model)) as f:
        meta.setdefault("towers_by_model", {})[model] = json.load(f)["towers"]
  with open(os.path.join(FLAGS.output_dir, "results.json"), "w") as f:
    json.dump({"meta": meta, "arms": rows, "baselines": base, "runs": runs}, f, indent=1)
  md = markdown(rows, base, meta)
  with open(os.path.join(FLAGS.output_dir, "results.md"), "w") as f:
    f.write(md)
  png = os.path.join(FLAGS.output_dir, "quality.png")
  plot(rows, base, png)
  print(md)
  print(f"wrote {FLAGS.output_dir}/results.json, results.md, {png}")
  print(f"command: {cmd}", flush=True)


if __name__ == "__main__":
  cli.run(main)
