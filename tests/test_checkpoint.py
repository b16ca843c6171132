"""Checkpoints: logical state, incomplete checkpoints, restore onto other meshes, tower conversion,
eval from a checkpoint, export round trip, and (slow, subprocess) SIGTERM / SIGKILL exact resume."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dmt_jax import checkpoint as ckpt
from dmt_jax import config_base, train
from dmt_jax.models import dmt as dmt_models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cfg(mode, model="dlrm", **over):
  c = config_base.get_config(model, mode, "tiny")
  c.batch_size, c.eval_batch_size, c.num_eval_batches = 64, 64, 1
  if mode == "dmt":
    c.towers.num_towers = 4
  config_base.set_fields(c, over)
  return c


def _tree_equal(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb))


def _eval_logits(exp, state):
  batch = next(iter(exp.source.eval_batches()))
  logits, _ = train.make_eval_step(exp)(state, train.to_global(exp, batch))
  return np.asarray(logits), batch


@pytest.fixture(scope="module", params=["flat", "dmt"])
def trained(request, tmp_path_factory):
  """A model trained 2 steps on the 2x4 mesh and saved at step 2 under <workdir>/checkpoints."""
  mode = request.param
  cfg = _cfg(mode)
  exp = train.build_experiment(cfg)
  state = train.init_state(exp, 0)
  step_fn = train.make_train_step(exp, train.state_shardings(state))
  for s in range(2):
    state, _ = step_fn(state, train.to_global(exp, exp.source.train_batch(s)))
  workdir = str(tmp_path_factory.mktemp(f"ckpt_{mode}"))
  mgr = ckpt.CheckpointManager(os.path.join(workdir, "checkpoints"), exp, cfg)
  mgr.save(2, state, force=True)
  mgr.close()
  logits, batch = _eval_logits(exp, state)
  return {"mode": mode, "cfg": cfg, "exp": exp, "state": state, "workdir": workdir, "logits": logits,
          "batch": batch, "step_fn": step_fn}


def test_logical_roundtrip(trained):
  exp, state = trained["exp"], trained["state"]
  logical = ckpt.state_to_logical(exp, state)
  assert logical["step"] == 2
  for t in exp.fs.tables:
    assert logical["tables"][t.name].shape == (t.vocab_size, t.dim)
    assert logical["table_opt"][t.name].shape == (t.vocab_size, t.dim)      # adagrad
  if trained["mode"] == "dmt":
    assert jax.tree.leaves(logical["params"]["towers"])[0].shape[0] == 4
  # load_logical from disk (layout rebuilt without the old devices) = the in-memory conversion
  config_dict, loaded = ckpt.load_logical(trained["workdir"])
  assert config_dict["mode"] == trained["mode"] and _tree_equal(loaded, logical)
  # back to the same layout: bit-identical physical state
  assert _tree_equal(ckpt.state_from_logical(exp, loaded), state)
  a = ckpt.abstract_state(exp)
  assert jax.tree.structure(a) == jax.tree.structure(state)
  assert all(x.shape == y.shape for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(state)))


RESHARD_TARGETS = [
    ("host=1,device=8", None, 8),
    ("host=4,device=2", "row_wise", 8),
    ("host=2,device=2", "column_wise", 4),       # 8 -> 4 devices
]


@pytest.mark.parametrize("topology,sharding,ndev", RESHARD_TARGETS)
def test_restore_on_other_mesh(trained, topology, sharding, ndev):
  over = {"topology": topology}
  if sharding:
    over["sharding"] = sharding
  cfg = _cfg(trained["mode"], **over)
  exp = train.build_experiment(cfg, devices=jax.devices()[:ndev])
  mgr = ckpt.CheckpointManager(os.path.join(trained["workdir"], "checkpoints"), exp, cfg)
  state, step = mgr.restore_latest(None)       # the resume path train_and_evaluate takes
  assert step == 2 and int(state["step"]) == 2
  assert state["tables"].sharding.mesh.devices.size == ndev
  logits, _ = _eval_logits(exp, state)
  np.testing.assert_allclose(logits, trained["logits"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("trained", ["dmt"], indirect=True)     # tower params exist in DMT only
@pytest.mark.parametrize("placement", ["group", "replicated"])
def test_restore_with_other_tower_param_placement(trained, placement):
  """Tower params are saved logically: a run may switch towers.param_placement on resume."""
  assert trained["mode"] == "dmt"
  cfg = _cfg("dmt", **{"towers.param_placement": placement})
  exp = train.build_experiment(cfg)
  assert exp.engine.cfg.replicate_tower_params == (placement == "replicated")
  mgr = ckpt.CheckpointManager(os.path.join(trained["workdir"], "checkpoints"), exp, cfg)
  state, step = mgr.restore_latest(None)
  mgr.close()
  leaf = jax.tree.leaves(state["params"]["towers"])[0]
  assert leaf.sharding.spec == exp.engine.tower_param_spec()
  logits, _ = _eval_logits(exp, state)
  np.testing.assert_allclose(logits, trained["logits"], rtol=1e-5, atol=1e-6)


def test_incomplete_checkpoints_never_used(trained, tmp_path):
  if trained["mode"] != "flat":
    pytest.skip("layout-independent; once is enough")
  d = str(tmp_path / "checkpoints")
  shutil.copytree(os.path.join(trained["workdir"], "checkpoints"), d)
  shutil.copytree(os.path.join(d, "2"), os.path.join(d, "9"))
  os.remove(os.path.join(d, "9", ckpt.COMMIT_FILE))             # no commit marker
  shutil.copytree(os.path.join(d, "2"), os.path.join(d, "8"))
  shutil.rmtree(os.path.join(d, "8", ckpt.META))                 # an item missing
  os.makedirs(os.path.join(d, "12.orbax-checkpoint-tmp-1234", "state"))   # killed mid-save
  assert ckpt.complete_steps(d) == [2]
  exp, cfg = trained["exp"], trained["cfg"]
  mgr = ckpt.CheckpointManager(d, exp, cfg)
  assert mgr.manager.all_steps() == [2] and mgr.latest_step() == 2
  state, step = mgr.restore_latest(None)
  assert step == 2 and _tree_equal(state, trained["state"])
  mgr.save(9, state, force=True)                                 # the step can be written again
  mgr.close()
  assert ckpt.complete_steps(d) == [2, 9]
  assert sorted(x for x in os.listdir(d) if "incomplete" in x) == ["8.incomplete-0", "9.incomplete-0"]
  with pytest.raises(ckpt.CheckpointError, match="not a complete checkpoint"):
    ckpt.load_logical(d, step=12)


def test_tower_change_needs_explicit_conversion(trained, tmp_path):
  _, logical = ckpt.load_logical(trained["workdir"])
  cfg = _cfg("dmt", **{"towers.num_towers": 2})
  exp = train.build_experiment(cfg)
  if trained["mode"] == "dmt":
    mgr = ckpt.CheckpointManager(os.path.join(trained["workdir"], "checkpoints"), exp, cfg)
    with pytest.raises(ckpt.CheckpointError, match="convert_towers"):
      mgr.restore_latest(None)
  with pytest.raises(ckpt.CheckpointError, match="convert_towers"):
    ckpt.state_from_logical(exp, logical)
  new, report = ckpt.convert_towers(logical, exp)
  assert any("bottom_mlp" in k for k in report["kept"]) and report["reinitialised"]
  assert all(not k.startswith("['towers']") for k in report["kept"])
  assert new["step"] == 0
  path = ckpt.save_logical_as_init(new, cfg, str(tmp_path), exp=exp)
  assert path.endswith(os.path.join("checkpoints", "0"))
  state, step = ckpt.CheckpointManager(os.path.join(str(tmp_path), "checkpoints"), exp, cfg).restore_latest(None)
  back = ckpt.state_to_logical(exp, state)
  assert step == 0 and _tree_equal(back["tables"], logical["tables"])
  assert _tree_equal(back["table_opt"], logical["table_opt"])
  np.testing.assert_array_equal(back["params"]["dense"]["bottom_mlp"]["dense_0"]["kernel"],
                                logical["params"]["dense"]["bottom_mlp"]["dense_0"]["kernel"])


def test_async_save_survives_donation(trained, tmp_path):
  """An async save returns before the files are written; the next (donating) train step must not
  change what it writes."""
  if trained["mode"] != "dmt":
    pytest.skip("once is enough")
  exp, cfg = trained["exp"], _cfg("dmt", async_checkpointing=True)
  state = ckpt.state_from_logical(exp, ckpt.state_to_logical(exp, trained["state"]))
  want = ckpt.state_to_logical(exp, state)
  mgr = ckpt.CheckpointManager(str(tmp_path / "checkpoints"), exp, cfg)
  mgr.save(2, state, force=True)
  for s in range(2, 4):
    state, _ = trained["step_fn"](state, train.to_global(exp, exp.source.train_batch(s)))
  mgr.close()
  assert _tree_equal(ckpt.load_logical(str(tmp_path))[1], want)


def test_evaluate_checkpoint(trained):
  if trained["mode"] != "flat":
    pytest.skip("one mode is enough (the restore path is shared)")
  exp, state = trained["exp"], trained["state"]
  want = train.evaluate(exp, train.make_eval_step(exp), state)
  got = train.evaluate_checkpoint(trained["cfg"], trained["workdir"])
  assert got["step"] == 2 and got["auc"] == want["auc"] and got["logloss"] == want["logloss"]
  with open(os.path.join(trained["workdir"], "metrics.jsonl")) as f:
    last = json.loads(f.readlines()[-1])
  assert last["step"] == 2 and last["eval/auc"] == want["auc"]


# --- export ----------------------------------------------------------------------------------------

def _reference_logits(npz, info, batch):
  """The exported model on one host, no mesh: numpy pooled lookup + plain flax apply."""
  cfg = ckpt.config_from_dict(info["config"])
  ids, w = np.asarray(batch.ids), np.asarray(batch.weights)
  offs = np.concatenate([[0], np.cumsum([f["max_bag"] for f in info["features"]])])
  pooled = []
  for i, f in enumerate(info["features"]):
    table = npz[f"embedding/{f['table']}"]
    fid, fw = ids[:, offs[i]:offs[i + 1]], w[:, offs[i]:offs[i + 1]]
    real = fid >= 0
    rows = table[np.where(real, fid, 0)] * np.where(real, fw, 0.0)[..., None]
    v = rows.sum(1)
    if f["pooling"] == "mean":
      v = v / np.maximum(real.sum(1, keepdims=True), 1)
    pooled.append(v)
  emb = np.stack(pooled, 1)                                              # [B, F, D]
  dim = emb.shape[-1]

  def tree(prefix):
    out = {}
    for k in npz.files:
      if k.startswith(prefix + "/"):
        node = out
        *path, leaf = k[len(prefix) + 1:].split("/")
        for p in path:
          node = node.setdefault(p, {})
        node[leaf] = jnp.asarray(npz[k])
    return out

  if info["mode"] == "dmt":
    f_t, towers = info["features_per_tower"], info["towers"]
    tmod, K = dmt_models.tower_module(cfg.towers, f_t, dim)
    assert K == info["tower_vectors"]
    tparams = tree("towers")
    outs = []
    for t, feats in enumerate(towers):
      x = np.zeros((emb.shape[0], f_t, dim), np.float32)
      x[:, :len(feats)] = emb[:, feats]
      outs.append(x if tmod is None else tmod.apply({"params": jax.tree.map(lambda a: a[t], tparams)}, x))
    emb = np.concatenate([np.asarray(o) for o in outs], 1)
  model = dmt_models.over_arch(cfg.model, dim)
  return np.asarray(model.apply({"params": tree("dense")}, jnp.asarray(batch.dense), jnp.asarray(emb)))


def test_export_roundtrip(trained, tmp_path):
  out, js = ckpt.export_checkpoint(trained["cfg"], trained["workdir"], str(tmp_path / "model.npz"))
  with open(js) as f:
    info = json.load(f)
  npz = np.load(out, allow_pickle=False)
  assert info["step"] == 2 and set(info["shapes"]) == set(npz.files)
  for t in trained["exp"].fs.tables:
    assert npz[f"embedding/{t.name}"].shape == (t.vocab_size, t.dim)
  assert npz["dense/bottom_mlp/dense_0/kernel"].shape == (13, 64)
  if trained["mode"] == "dmt":
    assert npz["towers/proj/kernel"].shape[0] == 4
  ref = _reference_logits(npz, info, trained["batch"])
  np.testing.assert_allclose(ref, trained["logits"], rtol=1e-5, atol=1e-5)


def test_export_cli_help():
  r = subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "export.py"), "--help"],
                     capture_output=True, text=True, timeout=120)
  assert "--output" in r.stdout and "embedding/<table>" in r.stdout   # absl's --help exits with 1


# --- subprocess: preemption and exact resume -------------------------------------------------------

STEPS = ["--config.num_train_steps=40", "--config.checkpoint_every=10", "--config.log_every=5",
         "--config.eval_every=20", "--config.batch_size=64", "--config.eval_batch_size=64",
         "--config.num_eval_batches=1"]


@pytest.fixture(scope="module")
def jax_cache(tmp_path_factory):
  """A persistent compilation cache shared by the subprocesses (same programs, compiled once)."""
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("jax_cache")),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1",
             PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  env.pop("XLA_FLAGS", None)
  return env


def _max_step(path):
  try:
    with open(path) as f:
      steps = [json.loads(l)["step"] for l in f if l.endswith("\n")]
    return max(steps, default=-1)
  except (OSError, ValueError):
    return -1


def _run(config, workdir, env, kill_at=None, sig=None, timeout=300):
  """Runs main.py; with ``kill_at`` sends ``sig`` once metrics.jsonl shows a step >= kill_at."""
  log = open(os.path.join(workdir + ".log"), "a")
  cmd = [sys.executable, os.path.join(ROOT, "experiments", "main.py"), f"--config={config}",
         f"--workdir={workdir}", *STEPS]
  p = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
  t0 = time.time()
  try:
    if kill_at is not None:
      while p.poll() is None and _max_step(os.path.join(workdir, "metrics.jsonl")) < kill_at:
        assert time.time() - t0 < timeout, "run did not reach the kill step"
        time.sleep(0.05)
      assert p.poll() is None, "run finished before it could be interrupted"
      p.send_signal(sig)
    rc = p.wait(timeout=timeout)
  finally:
    if p.poll() is None:
      p.kill()
    log.close()
  with open(workdir + ".log") as f:
    return rc, f.read()


def _metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(l) for l in f]
  return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in rows]


@pytest.mark.slow
@pytest.mark.parametrize("name,first_signal", [("flat_dlrm", signal.SIGKILL), ("dmt_dlrm", signal.SIGTERM)])
def test_interrupted_runs_resume_exactly(tmp_path, jax_cache, name, first_signal):
  config = os.path.join(ROOT, "experiments", "configs", f"{name}.py") + ":tiny"
  ref, run = str(tmp_path / "ref"), str(tmp_path / "run")
  rc, out = _run(config, ref, jax_cache)
  assert rc == 0, out[-3000:]
  rc, out = _run(config, run, jax_cache, kill_at=15, sig=first_signal)
  if first_signal == signal.SIGTERM:
    # saved at the step it stopped on, exited non-zero with the message
    assert rc != 0 and "preempted (SIGTERM) at step" in out, out[-3000:]
    stopped = int(re.search(r"preempted \(SIGTERM\) at step (\d+): checkpoint", out).group(1))
    assert rc == 143, rc   # main.py exits with the conventional SIGTERM status after saving
    assert stopped >= 15 and stopped in ckpt.complete_steps(os.path.join(run, "checkpoints"))
  else:
    assert rc == -signal.SIGKILL
  rc, out = _run(config, run, jax_cache, kill_at=25, sig=signal.SIGKILL)
  assert rc == -signal.SIGKILL, out[-3000:]
  rc, out = _run(config, run, jax_cache)
  assert rc == 0, out[-3000:]
  got, want = _metrics(run), _metrics(ref)
  assert [r["step"] for r in got] == [r["step"] for r in want]
  assert got == want
