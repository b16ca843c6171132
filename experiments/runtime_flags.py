"""Flags shared by every entry point that runs a JAX program: fake CPU devices and multi-process start-up.

``define()`` declares them; ``start(config)`` applies them in ``main()`` before anything touches the
backend. The launchers in ``launch/`` append ``--coordinator_address/--num_processes/--process_id``
(or pass ``--distributed=auto``) and ``--num_cpu_devices``.
"""

from absl import flags

FLAGS = flags.FLAGS


def define():
  flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0 (multi-process).")
  flags.DEFINE_integer("num_processes", None, "Number of JAX processes (multi-process).")
  flags.DEFINE_integer("process_id", None, "This process's index (multi-process).")
  flags.DEFINE_string("distributed", "", "'auto': let jax.distributed detect SLURM / Open MPI / TPU.")
  flags.DEFINE_integer("num_cpu_devices", None, "Fake CPU devices per process (default: config).")


def start(config):
  """Sets the fake CPU device count (flag, else ``config.num_cpu_devices``) and joins the job."""
  import jax
  ndev = FLAGS.num_cpu_devices if FLAGS.num_cpu_devices is not None else config.num_cpu_devices
  if ndev:
    jax.config.update("jax_num_cpu_devices", int(ndev))
  from dmt_jax import distributed
  distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
                         auto=FLAGS.distributed == "auto")
