"""Failure behaviour: impossible configs name their field, bad ids are caught on the host naming the
feature (or hashed / clipped by ``id_policy``), and NaN/Inf losses stop the run or skip the update."""

import json

import numpy as np
import pytest

from dmt_jax import config_base, train
from dmt_jax.config_check import ConfigError, validate_config
from dmt_jax.data import pipeline
from dmt_jax.features import BadInputError


def _cfg(mode_="dmt", model_="dlrm", **over):
  c = config_base.get_config(model_, mode_, "tiny")
  c.batch_size, c.eval_batch_size, c.num_eval_batches = 64, 64, 1
  config_base.set_fields(c, over)
  return c


BAD_CONFIGS = [
    # (mode, model, overrides, expected substring)
    ("dmt", "dlrm", {"mode": "hybrid"}, "config.mode='hybrid': must be one of"),
    ("flat", "dlrm", {"sharding": "diagonal"}, "config.sharding='diagonal'"),
    ("dmt", "dlrm", {"sharding": "data_parallel"}, "config.sharding='data_parallel'"),
    ("flat", "dlrm", {"sharding": "table_row_wise", "tower_level": ""}, "table_row_wise needs config.tower_level"),
    ("dmt", "dlrm", {"optimizer": "rmsprop"}, "config.optimizer='rmsprop'"),
    ("dmt", "dlrm", {"embedding_optimizer": "adam"}, "config.embedding_optimizer='adam'"),
    ("dmt", "dlrm", {"towers.module": "transformer"}, "config.towers.module='transformer'"),
    ("dmt", "dlrm", {"batch_size": 100}, "config.batch_size=100: must be a multiple of the 8 devices"),
    ("flat", "dlrm", {"eval_batch_size": 0}, "config.eval_batch_size=0: must be an integer >= 1"),
    ("dmt", "dlrm", {"model.bottom_mlp": (64, 8)}, "config.model.bottom_mlp=(64, 8): must end in the embedding dim"),
    ("dmt", "dlrm", {"model.top_mlp": (64, 2)}, "config.model.top_mlp=(64, 2): must end in width 1"),
    ("flat", "dlrm", {"model.name": "transformer"}, "config.model.name='transformer'"),
    ("flat", "dcn", {"model.deep_mlp": (64, 0)}, "config.model.deep_mlp"),
    ("flat", "dcn", {"model.num_cross_layers": -1}, "config.model.num_cross_layers=-1"),
    ("dmt", "dlrm", {"towers.compression": 0.5}, "config.towers.compression=0.5: must be a finite number >= 1"),
    ("dmt", "dlrm", {"towers.module": "identity", "towers.compression": 2.0}, "identity tower module cannot compress"),
    ("dmt", "dlrm", {"towers.num_towers": 3}, "config.towers.num_towers=3: must be a multiple of the 2 tower groups"),
    ("dmt", "dlrm", {"towers.num_towers": 32}, "exceeds the 16 sparse features"),
    ("dmt", "dlrm", {"towers.module": "dcn", "towers.num_cross_layers": 0}, "config.towers.num_cross_layers=0"),
    ("dmt", "dlrm", {"towers.module": "mlp", "towers.hidden": (0,)}, "config.towers.hidden"),
    ("dmt", "dlrm", {"towers.wire_dtype": "int8"}, "config.towers.wire_dtype='int8'"),
    ("dmt", "dlrm", {"topology": "host=2;device=4"}, "config.topology='host=2;device=4'"),
    ("dmt", "dlrm", {"topology": "host=2,device"}, "level 'device' must look like name=size"),
    ("dmt", "dlrm", {"topology": "host=2,host=4"}, "level name 'host' appears twice"),
    ("flat", "dlrm", {"topology": "host=0,device=8"}, "has size 0; sizes must be >= 1"),
    ("dmt", "dlrm", {"tower_level": "rack"}, "config.tower_level='rack': is not a level of config.topology"),
    ("dmt", "dlrm", {"tower_level": ""}, "DMT needs a tower level"),
    ("flat", "dlrm", {"capacity_factor": -1.0}, "config.capacity_factor=-1.0"),
    ("flat", "dlrm", {"id_policy": "drop"}, "config.id_policy='drop'"),
    ("flat", "dlrm", {"on_nonfinite": "ignore"}, "config.on_nonfinite='ignore'"),
    ("flat", "dlrm", {"learning_rate": 0.0}, "config.learning_rate=0.0: must be a finite number > 0"),
    ("flat", "dlrm", {"embedding_learning_rate": -0.1}, "config.embedding_learning_rate=-0.1"),
    ("flat", "dlrm", {"embedding_initial_accumulator": -1.0}, "config.embedding_initial_accumulator=-1.0"),
    ("flat", "dlrm", {"data.source": "parquet"}, "config.data.source='parquet'"),
    ("flat", "dlrm", {"data.pooling": "max"}, "config.data.pooling='max'"),
    ("flat", "dlrm", {"data.max_bags": (1, 2)}, "config.data.max_bags=(1, 2): has 2 entries"),
    ("flat", "dlrm", {"data.vocab_sizes": (10, 0)}, "config.data.vocab_sizes=(10, 0)"),
    ("flat", "dlrm", {"data.embedding_dim": 12, "model.bottom_mlp": (64, 12), "sharding": "column_wise"},
     "the dim must be divisible by 8"),
    ("flat", "dlrm", {"log_every": 0}, "config.log_every=0: must be an integer >= 1"),
    ("flat", "dlrm", {"num_train_steps": -5}, "config.num_train_steps=-5"),
    ("flat", "dlrm", {"keep_checkpoints": -1}, "config.keep_checkpoints=-1"),
    ("flat", "dlrm", {"num_eval_batches": 0}, "config.num_eval_batches=0"),
]


@pytest.mark.parametrize("mode,model,over,match", BAD_CONFIGS,
                         ids=[f"{i}-{next(iter(o))}" for i, (_, _, o, _) in enumerate(BAD_CONFIGS)])
def test_bad_config_names_field(mode, model, over, match):
  with pytest.raises(ConfigError) as e:
    validate_config(_cfg(mode, model, **over))
  assert match in str(e.value), str(e.value)


def test_good_presets_validate():
  for model in ("dlrm", "dcn"):
    for mode in ("flat", "dmt"):
      for preset in config_base.PRESETS:
        validate_config(config_base.get_config(model, mode, preset))


def test_all_problems_reported_together_and_build_checks_first():
  c = _cfg("dmt", **{"optimizer": "lamb", "towers.compression": 0.0, "batch_size": 7})
  with pytest.raises(ConfigError) as e:
    train.build_experiment(c)         # validate_config runs before anything is built
  msg = str(e.value)
  assert "config.optimizer='lamb'" in msg and "config.towers.compression=0.0" in msg and "config.batch_size=7" in msg


def test_device_count_mismatch_is_clear():
  with pytest.raises(ValueError, match="needs 16 devices but 8 are available"):
    train.build_experiment(_cfg("flat", topology="host=4,device=4"))


# --- bad ids -------------------------------------------------------------------------------------

def _bad_ids_batch(value, feature=3):
  src = pipeline.make_source(_cfg("flat"))
  b = src.train_batch(0)
  ids = np.array(b.ids, copy=True)
  col = int(src.fs.slot_offsets[feature])
  ids[5, col] = value
  return src.fs, b._replace(ids=ids), col


@pytest.mark.parametrize("value", [500, 10_000, -2, -7])     # f3's table t3 has 500 rows
def test_bad_ids_caught_on_host(value):
  fs, b, _ = _bad_ids_batch(value)
  with pytest.raises(BadInputError, match=rf"train batch 0: feature 'f3' \(table 't3', vocab 500\) has id {value}"):
    pipeline.checked(fs, b, "error", "train batch 0")


@pytest.mark.parametrize("policy,value,want", [("hash", 503, 3), ("hash", -2, 498), ("clip", 10_000, 499),
                                              ("clip", -7, 0)])
def test_id_policy_fixes_ids(policy, value, want):
  fs, b, col = _bad_ids_batch(value)
  out = pipeline.checked(fs, b, policy, "train batch 0")
  assert out.ids[5, col] == want
  assert np.array_equal(np.delete(out.ids, col, 1), np.delete(np.asarray(b.ids), col, 1))


def test_bad_ids_stop_training_naming_feature(tmp_path, monkeypatch):
  orig = pipeline.SyntheticSource.train_batch

  def bad(self, step):
    b = orig(self, step)
    ids = np.array(b.ids, copy=True)
    ids[0, int(self.fs.slot_offsets[7])] = -3
    return b._replace(ids=ids)

  monkeypatch.setattr(pipeline.SyntheticSource, "train_batch", bad)
  with pytest.raises(BadInputError, match=r"train batch 0: feature 'f7' \(table 't7', vocab 1000\) has id -3"):
    train.train_and_evaluate(_cfg("flat", num_train_steps=3), str(tmp_path))


# --- non-finite loss / gradients -----------------------------------------------------------------

NAN_STEP = 2


def _inject_nan(monkeypatch):
  """Dense features of train batch NAN_STEP become NaN after the host validation passed."""
  orig = pipeline.checked

  def checked(fs, batch, policy, where):
    batch = orig(fs, batch, policy, where)
    if where == f"train batch {NAN_STEP}":
      dense = np.array(batch.dense, copy=True)
      dense[3, 1] = np.nan
      batch = batch._replace(dense=dense)
    return batch

  monkeypatch.setattr(pipeline, "checked", checked)


def test_nonfinite_stop(tmp_path, monkeypatch):
  _inject_nan(monkeypatch)
  cfg = _cfg("dmt", num_train_steps=5, log_every=1, eval_every=0, checkpoint_every=1, on_nonfinite="stop")
  with pytest.raises(train.TrainingError) as e:
    train.train_and_evaluate(cfg, str(tmp_path))
  msg = str(e.value)
  assert f"step {NAN_STEP}: non-finite loss nan" in msg and f"train batch {NAN_STEP} (global rows 128...191)" in msg
  assert "on_nonfinite='skip'" in msg
  from dmt_jax.checkpoint import complete_steps
  assert complete_steps(str(tmp_path / "checkpoints")) == [1, 2]    # nothing saved after the NaN step
  state_steps = [json.loads(l)["step"] for l in open(tmp_path / "metrics.jsonl")]
  assert max(state_steps) == NAN_STEP


def test_nonfinite_skip(tmp_path, monkeypatch):
  _inject_nan(monkeypatch)
  cfg = _cfg("flat", num_train_steps=4, log_every=1, eval_every=0, checkpoint_every=0, on_nonfinite="skip")
  result = train.train_and_evaluate(cfg, str(tmp_path))
  rows = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  skipped = {r["step"]: r["train/skipped_nonfinite"] for r in rows if "train/skipped_nonfinite" in r}
  assert skipped == {1: 0, 2: 0, 3: 1, 4: 0}       # batch 2 is step 3's update
  assert np.isfinite(result["logloss"]) and np.isfinite(result["auc"])
  assert all(np.isfinite(r["train/loss"]) for r in rows if "train/loss" in r and r["step"] != NAN_STEP + 1)
