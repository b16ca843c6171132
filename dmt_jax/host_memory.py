"""Keep freed host memory in the process instead of handing it back to the kernel after every step.

XLA:CPU allocates each execution's temporary buffer (tens of MiB per emulated device for the medium
DLRM) with ``malloc`` and frees it when the step ends. glibc's defaults give such blocks back to the
kernel (``munmap`` of a thread-arena heap, or trimming the heap top), so the next step touches fresh
pages and takes a page fault for every 4 KiB of them: 3.5k–24k faults and 18–71 ms of system time per
step on this 2-core machine (flat DLRM medium, 8 emulated devices), varying with glibc's adaptive
mmap threshold. ``retain_freed_memory`` fixes glibc's thresholds with ``mallopt`` so freed blocks are
reused: under 1.3k faults and 5–7 ms of system time per step, and a ~15% faster, steadier step
(``python experiments/bench_host_memory.py``; BENCHMARKS.md "Host memory").

The cost is resident memory: the process keeps its peak heap instead of shrinking after a step.
Only glibc has ``mallopt``; elsewhere this does nothing and says so. Call it once, before the first
JAX computation (thresholds apply to later allocations).
"""

from __future__ import annotations

import ctypes
import ctypes.util

# mallopt parameter numbers from glibc's <malloc.h>.
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3

# glibc refuses an mmap threshold above HEAP_MAX_SIZE / 2 = 32 MiB on 64-bit; blocks larger than the
# threshold are always mmap'ed (and faulted in again on every use).
MAX_MMAP_THRESHOLD = 32 << 20


def retain_freed_memory(mmap_threshold: int = MAX_MMAP_THRESHOLD, top_pad: int = 64 << 20,
                        trim_threshold: int = 2**31 - 1) -> dict:
  """Sets glibc's malloc thresholds so that freed blocks stay in the process.

  Args:
    mmap_threshold: blocks up to this size come from the heap, not from a fresh ``mmap`` (at most
      ``MAX_MMAP_THRESHOLD``; setting it also stops glibc's adaptive threshold).
    top_pad: extra bytes kept at the top of a heap when it shrinks; this also keeps glibc from deleting
      an emptied thread-arena heap (which is what returns the per-step temporaries otherwise).
    trim_threshold: free bytes at the heap top before glibc trims it.

  Returns:
    ``{"applied": True, ...the values}`` on glibc, ``{"applied": False, "reason": ...}`` elsewhere.

  Raises:
    ValueError: a threshold out of glibc's range (``mallopt`` would silently keep the old value).
  """
  if not 0 < mmap_threshold <= MAX_MMAP_THRESHOLD:
    raise ValueError(f"mmap_threshold must be in (0, {MAX_MMAP_THRESHOLD}] bytes, got {mmap_threshold}")
  for name, v in (("top_pad", top_pad), ("trim_threshold", trim_threshold)):
    if not 0 <= v <= 2**31 - 1:
      raise ValueError(f"{name} must be in [0, 2**31 - 1] bytes (mallopt takes an int), got {v}")
  libc = _glibc()
  if libc is None:
    return {"applied": False, "reason": "not glibc: mallopt is unavailable"}
  values = {"mmap_threshold": int(mmap_threshold), "top_pad": int(top_pad), "trim_threshold": int(trim_threshold)}
  for param, v in ((_M_MMAP_THRESHOLD, mmap_threshold), (_M_TOP_PAD, top_pad), (_M_TRIM_THRESHOLD, trim_threshold)):
    if libc.mallopt(ctypes.c_int(param), ctypes.c_int(int(v))) != 1:
      raise OSError(f"mallopt({param}, {v}) was refused by this C library")
  return {"applied": True, **values}


def _glibc():
  """The C library if it is glibc (has ``gnu_get_libc_version`` and ``mallopt``), else None."""
  name = ctypes.util.find_library("c")
  if name is None:
    return None
  try:
    libc = ctypes.CDLL(name)
  except OSError:
    return None
  if not (hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt")):
    return None
  libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
  libc.mallopt.restype = ctypes.c_int
  return libc
