"""Flags shared by every entry point that runs a JAX program: fake CPU devices and multi-process start-up.

``define()`` declares them; ``start(config)`` applies them in ``main()`` before anything touches the
backend. The launchers in ``launch/`` append ``--coordinator_address/--num_processes/--process_id``
(or pass ``--distributed=auto``) and ``--num_cpu_devices``.
"""

from absl import flags

FLAGS = flags.FLAGS


def define_host_memory():
  """Only the host-memory flag (for scripts that manage devices themselves); defining it twice is a no-op
  (tests import several scripts into one process)."""
  if "retain_host_memory" in FLAGS:
    return
  flags.DEFINE_bool("retain_host_memory", True,
                    "Keep freed host memory in the process (glibc mallopt) so XLA:CPU's per-step temporaries "
                    "are not page-faulted in again every step; see dmt_jax/host_memory.py.")


def apply_host_memory():
  """Applies ``--retain_host_memory``; call before the first JAX computation."""
  if FLAGS.retain_host_memory:
    from dmt_jax import host_memory
    host_memory.retain_freed_memory()


def define():
  define_host_memory()
  flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0 (multi-process).")
  flags.DEFINE_integer("num_processes", None, "Number of JAX processes (multi-process).")
  flags.DEFINE_integer("process_id", None, "This process's index (multi-process).")
  flags.DEFINE_string("distributed", "", "'auto': let jax.distributed detect SLURM / Open MPI / TPU.")
  flags.DEFINE_integer("num_cpu_devices", None, "Fake CPU devices per process (default: config).")


def start(config):
  """Keeps freed host memory (``--retain_host_memory``), sets the fake CPU device count (flag, else
  ``config.num_cpu_devices``) and joins the job."""
  apply_host_memory()
  import jax
  ndev = FLAGS.num_cpu_devices if FLAGS.num_cpu_devices is not None else config.num_cpu_devices
  if ndev:
    jax.config.update("jax_num_cpu_devices", int(ndev))
  from dmt_jax import distributed
  distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
                         auto=FLAGS.distributed == "auto")
