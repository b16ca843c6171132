"""Flat vs DMT training steps across a real, rate-limited link between two emulated hosts.

  sudo python experiments/slow_link_benchmark.py --quick --output_dir=/tmp/slowlink_quick  # ~5 min
  sudo python experiments/slow_link_benchmark.py --output_dir=/tmp/slowlink                # ~25 min

Needs root, ``ip netns`` and ``tc`` (see ``dmt_jax/analysis/netem.py``). The parent creates two network
namespaces joined by a veth pair (10.213.0.1 <-> 10.213.0.2, addresses that exist only there) with a
``tbf`` token-bucket cap on both ends (plus ``netem`` delay with ``--delay_ms`` where the kernel has
it), and per-namespace ``/etc/netns/<ns>/hosts`` mapping this machine's hostname to the namespace's
address (gloo binds to it). It starts two JAX processes with ``ip netns exec``, one per namespace, each
with 4 fake CPU devices: topology ``host=2,device=4``, tower level ``host``, coordinator at namespace
A's address. Collectives among one process's devices stay inside its namespace (XLA:CPU runs them over
gloo on the namespace's own address, i.e. loopback, or in memory); everything between the processes
crosses the capped veth. Everything created is removed at the end (also on failure / Ctrl-C).

Model (the same for every case): DLRM, 26 one-hot tables x 50k rows x dim 64, batch 2048 global
(256 per device), bottom MLP 13-256-64, top MLP 256-128-1, row-sparse Adagrad for the tables, Adam for
the dense part. Dim 64 keeps DMT's linear tower module (F_t*D -> F_t*D/c per tower, cost ~D^2) small;
the modest MLPs keep the dense all-reduce (~0.6 MB per device) below the flat embedding exchange
(~4 MB per device) as at production batch sizes, where pooled embeddings dominate the wire; 50k rows keep
5 compiled cases x 2 processes within memory (rows do not change the exchange: the update is row-sparse).

The children build every case once (``train.build_experiment``, ``bench.fast_state``,
``train.make_train_step``, compiled AOT; the compiled HLO gives the communication report), then the
parent runs ``--repeats`` rounds; in each round it visits every link setting (order rotated per round,
so the shared machine's load drifts spread over all settings), sets the cap and tells both children
(stdin) to measure:

* ``link``: a cross-host ``all_to_all`` over the ``host`` axis (each device sends half of an
  S-byte buffer to its peer on the other host): achieved bytes/s per direction of the veth.
* ``fast``: an ``all_to_all`` over the ``device`` axis inside one process (each device sends 3/4 of
  the same S bytes to its 3 neighbours): the intra-host bytes/s the run's own collectives get. A
  separate single-process probe measures the same with in-process collectives (memory only, no gloo).
  S = one device's pooled embeddings ``[B/8, 26, D]`` f32, the message size of the flat lookup.
  fast/slow ratio = intra-host bytes/s / cross-host bytes/s (same 4 devices, same message).
* every case (order rotated per round): one untimed step, then ``--steps`` steps each timed to
  ``block_until_ready``; process 0 reports the times.

Cross-host share of a flat step at a setting = (step - step on the uncapped veth) / step (the uncapped
veth, ``0`` in ``--speeds``, moves ~400 MB/s here; ``--local_reference`` also times both processes in
one namespace). With ``--auc_steps`` it finally trains flat TW and DMT once, without link emulation,
and reports the eval AUCs: with ``experiments/main.py`` on the ``tiny`` preset, or with
``--auc_model=bench`` the timed model itself (every timed case but ``flat_rw``, on its synthetic data,
one process with 8 devices; internal ``--child_auc=<case>``).

Writes ``slowlink.json``, ``slowlink.md`` and ``slowlink.png`` under ``--output_dir`` and prints the
command line. Internal: ``--child`` runs one timing process (started by the parent).
"""

from __future__ import annotations

import json
import os
import select
import signal
import statistics
import subprocess
import sys
import time

from absl import flags

import cli

from dmt_jax.analysis.slowlink_report import markdown, plot, remote_all_to_all_bytes, summarize

flags.DEFINE_string("output_dir", "/tmp/dmt_slowlink", "Where JSON, markdown and the plot go.")
flags.DEFINE_bool("quick", False, "Batch 1024, 20k rows, speeds 250/1000/uncapped, 1 round, 50-step AUC "
                  "runs (a few minutes); explicitly given flags still win.")
flags.DEFINE_list("speeds", ["100", "250", "500", "1000", "2000", "0"],
                  "Link caps in Mbit/s per direction; 0 = veth without cap.")
flags.DEFINE_list("cases", ["flat_tw", "flat_rw", "flat_twrw", "dmt_c4", "dmt_c1"],
                  "Cases: flat_tw, flat_rw, flat_twrw, flat_cw, dmt_c<k>[_<tower module>] (dmt_c4 = linear "
                  "towers, dmt_c4_mix = feature-mixing towers; see dmt_jax/tower_modules.py).")
flags.DEFINE_integer("repeats", 3, "Rounds over all link settings (speed and case order rotated each round).")
flags.DEFINE_integer("steps", 3, "Timed steps per case per link setting per round.")
flags.DEFINE_float("fast_ratio", 0.0,
                   "0: the intra-host tier (each namespace's loopback, where gloo runs a process's own "
                   "collectives) is left uncapped. > 0: it is capped at fast_ratio x the link cap, so the "
                   "fast/slow ratio is fixed (e.g. 15 = NVLink vs NIC) while both tiers are slow relative "
                   "to this CPU's compute, as on a GPU cluster. Uncapped speeds leave both tiers uncapped.")
flags.DEFINE_float("delay_ms", 0.0, "One-way added delay per direction (needs the netem qdisc).")
flags.DEFINE_bool("local_reference", False,
                  "Also time all cases with both processes in one namespace (a second start-up and compile).")
flags.DEFINE_integer("batch_size", 2048, "Global batch (8 devices).")
flags.DEFINE_integer("vocab", 50_000, "Rows per table (26 tables).")
flags.DEFINE_integer("dim", 64, "Embedding dim.")
flags.DEFINE_list("bottom_mlp", ["256", "64"], "Bottom MLP widths (last = dim).")
flags.DEFINE_list("top_mlp", ["256", "128", "1"], "Top MLP widths (last = 1).")
flags.DEFINE_integer("auc_steps", 300, "Steps of the flat/DMT AUC runs; 0 = skip.")
flags.DEFINE_enum("auc_model", "tiny", ["tiny", "bench"],
                  "Model of the AUC runs: the 'tiny' preset (experiments/main.py), or 'bench' = the timed model "
                  "itself (26 x --vocab x --dim, --batch_size, the MLPs above) on its synthetic data, one process "
                  "with 8 devices, no link emulation. 'bench' also trains flat_twrw / dmt_c8 when timed.")
flags.DEFINE_string("child_auc", None, "Internal: train one case of the timed model, print its eval metrics.")
flags.DEFINE_integer("timeout_s", 1800, "Give up on a phase (start-up or one link setting) after this.")
flags.DEFINE_bool("child", False, "Internal: run one timing process.")
flags.DEFINE_bool("child_probe", False, "Internal: in-memory all-to-all probe (one process, no network).")
flags.DEFINE_string("coordinator_address", None, "Internal (child).")
flags.DEFINE_integer("process_id", 0, "Internal (child).")
FLAGS = flags.FLAGS

TAG = "@@"            # child -> parent protocol lines: TAG + JSON
NUM_PROCESSES, DEVICES_PER_PROCESS = 2, 4
SCRIPT = os.path.abspath(__file__)
REPO = os.path.dirname(os.path.dirname(SCRIPT))


# --- configuration (shared by parent and children) -------------------------------------------------

def model_config(case: str, batch: int, vocab: int, dim: int, bottom, top):
  """The one benchmark model (DLRM, 26 tables) in flat or DMT form."""
  from dmt_jax import config_base
  mode = "dmt" if case.startswith("dmt") else "flat"
  c = config_base.get_config("dlrm", mode, "medium")
  c.topology, c.tower_level = "host=2,device=4", "host"
  c.data.vocab_sizes = (int(vocab),) * 26
  c.data.max_bags = (1,) * 26
  c.data.embedding_dim = int(dim)
  c.model.bottom_mlp = tuple(int(x) for x in bottom)
  c.model.top_mlp = tuple(int(x) for x in top)
  c.batch_size = int(batch)
  c.eval_batch_size = int(batch)
  if mode == "dmt":
    c.sharding = "table_wise"                       # inside the tower group (one host)
    c.towers.num_towers = 2
    c.towers.compression, c.towers.module = dmt_case(case)
  else:
    c.sharding = {"flat_tw": "table_wise", "flat_rw": "row_wise", "flat_twrw": "table_row_wise",
                  "flat_cw": "column_wise"}[case]
  return c


def dmt_case(case: str) -> tuple[float, str]:
  """``dmt_c4`` -> (4.0, "linear"); ``dmt_c4_mix`` -> (4.0, "mix")."""
  from dmt_jax import tower_modules
  parts = case.split("_")
  if len(parts) not in (2, 3) or parts[0] != "dmt" or not parts[1].startswith("c"):
    raise ValueError(f"DMT case must be dmt_c<k>[_<module>], got {case!r}")
  module = parts[2] if len(parts) == 3 else "linear"
  if module not in tower_modules.KINDS:
    raise ValueError(f"case {case!r}: unknown tower module {module!r}; expected one of {tower_modules.KINDS}")
  return float(parts[1][1:]), module


def settings():
  """Model sizes, speeds and counts after ``--quick``."""
  s = dict(batch=FLAGS.batch_size, vocab=FLAGS.vocab, dim=FLAGS.dim, bottom=FLAGS.bottom_mlp,
           top=FLAGS.top_mlp, speeds=[float(x) for x in FLAGS.speeds], repeats=FLAGS.repeats,
           steps=FLAGS.steps, cases=list(FLAGS.cases), auc_steps=FLAGS.auc_steps)
  if FLAGS.quick:   # smaller defaults; flags given explicitly still win
    quick = dict(batch=("batch_size", 1024), vocab=("vocab", 20_000), speeds=("speeds", [250.0, 1000.0, 0.0]),
                 repeats=("repeats", 1), steps=("steps", 3), auc_steps=("auc_steps", 50))
    s.update({k: v for k, (flag, v) in quick.items() if not FLAGS[flag].present})
  return s


# --- child: one JAX process ------------------------------------------------------------------------

def emit(obj) -> None:
  sys.stdout.write(TAG + json.dumps(obj) + "\n")
  sys.stdout.flush()


def tagged(stdout: str) -> list[dict]:
  """The child -> parent messages (``TAG`` + JSON lines) in a child's output."""
  return [json.loads(line[len(TAG):]) for line in stdout.splitlines() if line.startswith(TAG)]


def probe_bytes(s) -> int:
  """S: one device's pooled embeddings ``[B/8, 26, D]`` f32 (the flat lookup's message size)."""
  return s["batch"] // (NUM_PROCESSES * DEVICES_PER_PROCESS) * 26 * s["dim"] * 4


def _a2a_probe(mesh, axis: str, nbytes: int, reps: int = 10) -> list[float]:
  """Seconds of ``reps`` ``all_to_all``s over ``axis`` of an ``nbytes`` f32 buffer per device."""
  import jax
  import numpy as np
  from jax.sharding import NamedSharding, PartitionSpec as P
  n = mesh.shape[axis]
  per = max(n, nbytes // 4 // n * n)
  spec = P(tuple(mesh.axis_names))
  f = jax.jit(jax.shard_map(lambda x: jax.lax.all_to_all(x, axis, 0, 0, tiled=True), mesh=mesh,
                            in_specs=spec, out_specs=spec))
  x = jax.make_array_from_callback((mesh.size * per,), NamedSharding(mesh, spec),
                                   lambda idx: np.ones((per,), np.float32))
  f(x).block_until_ready()
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    f(x).block_until_ready()
    times.append(time.perf_counter() - t0)
  return times


def probe_main() -> None:
  """The in-memory reference: one process, 4 devices, in-process collectives (no gloo, no network)."""
  import jax
  import numpy as np
  from jax.sharding import Mesh
  jax.config.update("jax_num_cpu_devices", DEVICES_PER_PROCESS)
  mesh = Mesh(np.array(jax.devices()[:DEVICES_PER_PROCESS]), ("device",))
  b = probe_bytes(settings())
  emit({"event": "probe", "probe_bytes": b, "inproc_a2a_s": _a2a_probe(mesh, "device", b, reps=20)})


def child_main() -> None:
  import jax
  jax.config.update("jax_num_cpu_devices", DEVICES_PER_PROCESS)
  from dmt_jax import distributed
  distributed.initialize(FLAGS.coordinator_address, NUM_PROCESSES, FLAGS.process_id,
                         heartbeat_timeout_s=120, initialization_timeout_s=300)
  from jax.experimental import multihost_utils
  from dmt_jax import train
  from dmt_jax.analysis import bench, hlo
  s = settings()
  pidx, pcount = jax.process_index(), jax.process_count()
  cases = {}
  for name in s["cases"]:
    cfg = model_config(name, s["batch"], s["vocab"], s["dim"], s["bottom"], s["top"])
    exp = train.build_experiment(cfg, pidx, pcount)
    state = bench.fast_state(exp)
    batches = [train.to_global(exp, exp.source.train_batch(i)) for i in range(2)]
    t0 = time.perf_counter()
    compiled = train.make_train_step(exp, train.state_shardings(state)).lower(state, batches[0]).compile()
    compile_s = time.perf_counter() - t0
    rep = hlo.comm_report(compiled.as_text(), exp.topology.group_size)
    state, out = compiled(state, batches[0])
    jax.block_until_ready(out)
    cases[name] = {"step": compiled, "state": state, "batches": batches}
    if pidx == 0:
      emit({"event": "built", "case": name, "compile_s": compile_s,
            "comm": {k: rep[k] for k in ("cross_tower_bytes", "intra_tower_bytes",
                                         "embedding_cross_tower_bytes", "dense_sync_bytes")},
            "comm_by_role": rep["bytes_by_role"],
            "remote_a2a_bytes": remote_all_to_all_bytes(rep["collectives"], exp.topology.group_size)})
  mesh = next(iter(cases.values()))["state"]["tables"].sharding.mesh
  nbytes = probe_bytes(s)
  emit({"event": "ready", "process": pidx})
  for line in sys.stdin:
    cmd = json.loads(line)
    if cmd["cmd"] == "quit":
      break
    multihost_utils.sync_global_devices(f"setting {cmd['label']} round {cmd['round']}")
    t_link = _a2a_probe(mesh, "host", nbytes, cmd["probe_reps"])
    t_fast = _a2a_probe(mesh, "device", nbytes, cmd["probe_reps"])
    names = list(cases)
    k = cmd["round"] % len(names)            # rotate the case order from round to round
    times = {n: [] for n in names}
    for n in names[k:] + names[:k]:
      c = cases[n]
      c["state"], out = c["step"](c["state"], c["batches"][1])     # untimed: settle after switching
      jax.block_until_ready(out)
      for i in range(cmd["steps"]):
        t0 = time.perf_counter()
        c["state"], out = c["step"](c["state"], c["batches"][i % 2])
        jax.block_until_ready(out)
        times[n].append(time.perf_counter() - t0)
    if pidx == 0:
      emit({"event": "result", "label": cmd["label"], "probe_bytes": nbytes,
            "link_a2a_s": t_link, "fast_a2a_s": t_fast, "times": times})
    emit({"event": "done", "process": pidx, "label": cmd["label"]})


# --- parent ----------------------------------------------------------------------------------------

def child_args() -> list[str]:
  """The parent's own flags, minus the internal ones, for the children."""
  return [a for a in sys.argv[1:] if not a.startswith(("--child", "--coordinator_address", "--process_id",
                                                       "--output_dir"))]   # also drops --child_auc


class Children:
  """The two timing processes of one placement, their stdin and their tagged stdout lines."""

  def __init__(self, link, ends, log, port):
    self.log = log
    coord = f"{link.address('a')}:{port}"
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    args = child_args()
    self.procs = []
    for i, end in enumerate(ends):
      cmd = link.exec_prefix(end) + [sys.executable, "-u", SCRIPT, *args, "--child",
                                     f"--coordinator_address={coord}", f"--process_id={i}"]
      self.procs.append(subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, cwd=REPO, env=env, text=True,
                                         bufsize=1, start_new_session=True))
    self._buf = {p.stdout.fileno(): "" for p in self.procs}

  def messages(self, until, timeout_s):
    """Yields tagged messages until ``until(msg)`` has been true once per process."""
    pending = set(range(len(self.procs)))
    deadline = time.monotonic() + timeout_s
    fds = {p.stdout.fileno(): i for i, p in enumerate(self.procs)}
    while pending:
      if time.monotonic() > deadline:
        raise TimeoutError(f"children did not finish within {timeout_s} s")
      for i, p in enumerate(self.procs):
        if p.poll() is not None and p.returncode != 0:
          raise RuntimeError(f"child {i} exited with status {p.returncode} (see the log)")
      if not fds:
        raise RuntimeError("children closed their output before finishing (see the log)")
      ready, _, _ = select.select(list(fds), [], [], 1.0)
      for fd in ready:
        data = os.read(fd, 1 << 16).decode(errors="replace")
        if not data:
          fds.pop(fd)
          continue
        self._buf[fd] += data
        *lines, self._buf[fd] = self._buf[fd].split("\n")
        for line in lines:
          self.log.write(f"[p{fds[fd]}] {line}\n")
          if line.startswith(TAG):
            msg = json.loads(line[len(TAG):])
            if until(msg):
              pending.discard(msg.get("process", fds[fd]))
            yield msg
      self.log.flush()

  def send(self, obj) -> None:
    for p in self.procs:
      p.stdin.write(json.dumps(obj) + "\n")
      p.stdin.flush()

  def close(self) -> None:
    for p in self.procs:
      try:
        if p.poll() is None:
          p.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
          p.stdin.flush()
      except (BrokenPipeError, OSError):
        pass
    deadline = time.monotonic() + 60
    for p in self.procs:
      try:
        p.wait(timeout=max(0.1, deadline - time.monotonic()))
      except subprocess.TimeoutExpired:
        os.killpg(p.pid, 9)
        p.wait()


def _label(speed: float, local: bool) -> str:
  return "local" if local else ("unthrottled" if speed <= 0 else f"{speed:g}")


def run_placement(link, ends, speeds, s, log, record, port) -> None:
  """Starts the two children on ``ends`` (("a", "b") or ("a", "a")) and measures every speed.

  Rounds are the outer loop and the speed order is rotated every round, so slow drifts of this
  shared machine's load spread over all link settings instead of biasing one.
  """
  local = ends[0] == ends[1]
  kids = Children(link, ends, log, port)
  try:
    for msg in kids.messages(lambda m: m.get("event") == "ready", FLAGS.timeout_s):
      if msg.get("event") == "built":
        record["cases"].setdefault(msg["case"], {}).update(
            {k: v for k, v in msg.items() if k not in ("event", "case")})
        print(f"[slowlink] built {msg['case']} ({msg['compile_s']:.0f} s compile)", file=sys.stderr, flush=True)
    for r in range(s["repeats"]):
      order = speeds[r % len(speeds):] + speeds[:r % len(speeds)]
      for speed in order:
        label = _label(speed, local)
        fast_cap = speed * FLAGS.fast_ratio if speed > 0 and FLAGS.fast_ratio > 0 else None
        if not local:
          link.set_rate(None if speed <= 0 else speed, FLAGS.delay_ms)
          link.set_local_rate(fast_cap)
        t0 = time.perf_counter()
        kids.send({"cmd": "measure", "label": label, "round": r, "steps": s["steps"], "probe_reps": 5})
        for msg in kids.messages(lambda m: m.get("event") == "done", FLAGS.timeout_s):
          if msg.get("event") != "result":
            continue
          acc = record["settings"].setdefault(label, {
              "label": label, "mbit": None if local else speed, "fast_cap_mbit": fast_cap,
              "qdisc": link.qdisc_text(),
              "probe_bytes": msg["probe_bytes"], "link_a2a_s": [], "fast_a2a_s": [], "loadavg_1m": [],
              "wall_s": 0.0, "times": {n: [] for n in msg["times"]}})
          acc["link_a2a_s"] += msg["link_a2a_s"]
          acc["fast_a2a_s"] += msg["fast_a2a_s"]
          acc["loadavg_1m"].append(os.getloadavg()[0])
          acc["wall_s"] += time.perf_counter() - t0
          for n, t in msg["times"].items():
            acc["times"][n] += t
          print(f"[slowlink] round {r} {label}: " + ", ".join(
              f"{n} {1e3 * statistics.median(t):.0f} ms" for n, t in msg["times"].items()) +
                f" (load {os.getloadavg()[0]:.1f})", file=sys.stderr, flush=True)
  finally:
    kids.close()


def auc_child_main() -> None:
  """``--child_auc=<case>``: the timed model trained for ``--auc_steps`` in one process, eval at the end."""
  import jax
  jax.config.update("jax_num_cpu_devices", NUM_PROCESSES * DEVICES_PER_PROCESS)
  from dmt_jax import train
  s = settings()
  cfg = model_config(FLAGS.child_auc, s["batch"], s["vocab"], s["dim"], s["bottom"], s["top"])
  cfg.num_train_steps, cfg.eval_every, cfg.checkpoint_every = s["auc_steps"], 0, 0
  cfg.log_every = max(1, s["auc_steps"] // 4)
  cfg.num_eval_batches = 16          # 16 x batch held-out examples (the default 4 is noisy at +-0.005)
  result = train.train_and_evaluate(cfg, os.path.join(FLAGS.output_dir, f"auc_{FLAGS.child_auc}"))
  emit({"event": "auc", "case": FLAGS.child_auc, "step": s["auc_steps"], "auc": result["auc"],
        "ne": result.get("ne")})


def run_auc_bench(steps: int, out_dir: str, cases) -> dict:
  """Eval AUC of the timed model itself, per timed case (flat_rw left out: same model as flat_tw)."""
  result = {}
  for name in [c for c in cases if c != "flat_rw"]:
    cmd = [sys.executable, "-u", SCRIPT, *child_args(), f"--output_dir={out_dir}", f"--child_auc={name}"]
    print(f"[slowlink] AUC run (timed model): {name}", file=sys.stderr, flush=True)
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    msgs = tagged(r.stdout)
    command = ("python experiments/slow_link_benchmark.py " + " ".join(child_args()) +
               f" --output_dir={out_dir} --child_auc={name}")
    if r.returncode != 0 or not msgs:
      result[name] = {"error": r.stderr[-2000:], "command": command}
      continue
    result[name] = {"command": command, "step": msgs[-1]["step"], "auc": msgs[-1]["auc"], "ne": msgs[-1]["ne"]}
  return result


def run_auc(steps: int, out_dir: str) -> dict:
  """Trains flat TW, DMT c=4 and DMT c=1 (tiny preset, 2x4 mesh, one process) and reads eval AUC."""
  runs = {"flat_tw": ("flat_dlrm.py:tiny", ["--config.sharding=table_wise"]),
          "dmt_c4": ("dmt_dlrm.py:tiny", ["--config.towers.compression=4", "--config.towers.num_towers=2"]),
          "dmt_c1": ("dmt_dlrm.py:tiny", ["--config.towers.compression=1", "--config.towers.num_towers=2"])}
  if FLAGS.quick:
    runs.pop("dmt_c1")
  result = {}
  for name, (cfg, over) in runs.items():
    wd = os.path.join(out_dir, f"auc_{name}")
    subprocess.run(["rm", "-rf", wd], check=True)
    cmd = [sys.executable, "experiments/main.py", f"--config=experiments/configs/{cfg}", f"--workdir={wd}",
           f"--config.num_train_steps={steps}", "--config.checkpoint_every=0", *over]
    print(f"[slowlink] AUC run: {' '.join(cmd)}", file=sys.stderr, flush=True)
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    if r.returncode != 0:
      result[name] = {"error": r.stderr[-2000:], "command": " ".join(cmd)}
      continue
    with open(os.path.join(wd, "metrics.jsonl")) as f:
      evals = [m for m in map(json.loads, f) if "eval/auc" in m]
    result[name] = {"command": " ".join(["python"] + cmd[1:]), "step": evals[-1]["step"], "auc": evals[-1]["eval/auc"],
                    "ne": evals[-1].get("eval/ne")}
  return result


def _exit_on_sigterm(signum, _frame):
  raise SystemExit(128 + signum)   # unwinds through the finally blocks: children stopped, link removed


def parent_main() -> int:
  from dmt_jax.analysis import netem
  signal.signal(signal.SIGTERM, _exit_on_sigterm)
  ok, why = netem.netns_supported()
  if not ok:
    print(f"slow_link_benchmark: cannot emulate the link: {why}", file=sys.stderr)
    return 2
  s = settings()
  out_dir = FLAGS.output_dir
  os.makedirs(out_dir, exist_ok=True)
  command = "python experiments/slow_link_benchmark.py " + " ".join(sys.argv[1:])
  print(f"[slowlink] {command}", file=sys.stderr, flush=True)
  record = {"command": command, "settings_used": s, "delay_ms": FLAGS.delay_ms, "cases": {}, "settings": {},
            "processes": NUM_PROCESSES, "devices_per_process": DEVICES_PER_PROCESS}
  spec = netem.LinkSpec.unique(os.getpid())
  record["link"] = {"ns": [spec.ns_a, spec.ns_b], "addresses": [spec.addr_a, spec.addr_b],
                    "qdisc": "tbf per veth end (egress), burst max(64 KiB, 1 ms at rate), latency 100 ms"}
  t_start = time.time()
  r = subprocess.run([sys.executable, "-u", SCRIPT, *child_args(), "--child_probe"], cwd=REPO, capture_output=True,
                     text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=FLAGS.timeout_s)
  probe = tagged(r.stdout)
  if r.returncode != 0 or not probe:
    raise RuntimeError(f"in-memory probe failed ({r.returncode}): {r.stderr[-2000:]}")
  record["inproc_probe"] = probe[0]
  with open(os.path.join(out_dir, "children.log"), "w") as log, netem.SlowLink(spec) as link:
    if FLAGS.delay_ms > 0 and not link.netem_available():
      raise RuntimeError("--delay_ms needs the netem qdisc, which this kernel lacks")
    record["netem_available"] = link.netem_available()
    if FLAGS.local_reference:
      run_placement(link, ("a", "a"), [0.0], s, log, record, port=29501)
    run_placement(link, ("a", "b"), s["speeds"], s, log, record, port=29502)
  record["benchmark_wall_s"] = time.time() - t_start
  if s["auc_steps"] > 0:
    record["auc_model"] = FLAGS.auc_model
    record["auc"] = (run_auc_bench(s["auc_steps"], out_dir, s["cases"]) if FLAGS.auc_model == "bench"
                     else run_auc(s["auc_steps"], out_dir))
  rows = summarize(record, DEVICES_PER_PROCESS)
  record["rows"] = rows
  with open(os.path.join(out_dir, "slowlink.json"), "w") as f:
    json.dump(record, f, indent=1)
  md = [f"`{command}`", "", markdown(rows, s["cases"]), ""]
  md.append("Cross-host bytes per device per step (HLO of the compiled step; cross_tower = every collective "
            "whose group spans both hosts, remote a2a = all-to-all bytes that leave the host):")
  md.append("")
  md.append("| case | cross_tower_bytes | embedding_cross_tower_bytes | dense_sync_bytes | remote a2a bytes | "
            "intra_tower_bytes | compile s |")
  md.append("|---|---|---|---|---|---|---|")
  for n in s["cases"]:
    c = record["cases"].get(n, {})
    cm = c.get("comm", {})
    md.append(f"| {n} | {cm.get('cross_tower_bytes', 0) / 1e6:.2f} MB | "
              f"{cm.get('embedding_cross_tower_bytes', 0) / 1e6:.2f} MB | {cm.get('dense_sync_bytes', 0) / 1e6:.2f} MB | "
              f"{c.get('remote_a2a_bytes', 0) / 1e6:.2f} MB | {cm.get('intra_tower_bytes', 0) / 1e6:.2f} MB | "
              f"{c.get('compile_s', 0):.0f} |")
  if "auc" in record:
    what = ("the timed model itself, its synthetic data" if FLAGS.auc_model == "bench" else "tiny preset")
    md += ["", f"AUC ({what}, {s['auc_steps']} steps, one process, 2x4 mesh, no link emulation):", ""]
    for n, a in record["auc"].items():
      md.append(f"* {n}: " + (f"eval AUC {a['auc']:.4f} at step {a['step']} (`{a['command']}`)"
                              if "auc" in a else f"failed: {a['error'][-300:]}"))
  with open(os.path.join(out_dir, "slowlink.md"), "w") as f:
    f.write("\n".join(md) + "\n")
  plot(rows, s["cases"], os.path.join(out_dir, "slowlink.png"))
  print("\n".join(md))
  print(f"\n[slowlink] wrote {out_dir}/slowlink.json, slowlink.md, slowlink.png, children.log\n"
        f"[slowlink] command: {command}", flush=True)
  return 0


def main(argv):
  del argv
  if FLAGS.child:
    child_main()
    return 0
  if FLAGS.child_probe:
    probe_main()
    return 0
  if FLAGS.child_auc:
    auc_child_main()
    return 0
  return parent_main()


if __name__ == "__main__":
  cli.run(main)
