"""dmt_jax.host_memory: glibc keeps a freed multi-MiB block in the process after ``retain_freed_memory``.

Each arm runs in a fresh interpreter (malloc thresholds are process-wide and must be set before the
allocation): an 8 MiB block is malloc'ed, touched and freed, and glibc's ``mallinfo2`` says where it
lived and how much heap is left afterwards.
"""

import json
import subprocess
import sys

import pytest

from dmt_jax import host_memory

_PROBE = r"""
import ctypes, ctypes.util, json, sys
class MallInfo2(ctypes.Structure):
  _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                              "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
if sys.argv[1] == "retain":
  from dmt_jax import host_memory
  assert host_memory.retain_freed_memory()["applied"]
size = 8 << 20
p = libc.malloc(size)
ctypes.memset(p, 1, size)
mmapped_live = libc.mallinfo2().hblkhd
libc.free(p)
print(json.dumps({"mmapped_while_live": mmapped_live, "heap_after_free": libc.mallinfo2().arena}))
"""

glibc = pytest.mark.skipif(host_memory._glibc() is None, reason="mallopt/mallinfo2 are glibc-only")


def _probe(arm: str) -> dict:
  out = subprocess.run([sys.executable, "-c", _PROBE, arm], capture_output=True, text=True, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


@glibc
def test_freed_block_stays_in_the_heap_only_when_retained():
  block = 8 << 20
  default, retained = _probe("default"), _probe("retain")
  # glibc's default: an 8 MiB block is its own mmap, unmapped on free (faulted in again next time).
  assert default["mmapped_while_live"] >= block
  assert default["heap_after_free"] < block
  # retained: served from the heap and still there after free, ready for the next step.
  assert retained["mmapped_while_live"] < block
  assert retained["heap_after_free"] >= block


@pytest.mark.parametrize("kwargs", [{"mmap_threshold": 0}, {"mmap_threshold": (32 << 20) + 1},
                                    {"top_pad": -1}, {"trim_threshold": 2**31}])
def test_out_of_range_thresholds_are_refused(kwargs):
  with pytest.raises(ValueError):
    host_memory.retain_freed_memory(**kwargs)
