"""Test setup: 8 fake CPU devices, configured before the JAX backend starts."""

import os

os.environ.setdefault("XLA_FLAGS", "")
import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_platforms", "cpu")


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: multi-second end-to-end tests (run with -m slow, or all by default in CI)")
  config.addinivalue_line("markers", "multiprocess: spawns several JAX processes over loopback")
