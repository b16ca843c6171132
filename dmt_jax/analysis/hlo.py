"""Collective accounting from compiled HLO text: what crosses tower groups, and how many bytes.

Input is ``jax.jit(f).lower(*args).compile().as_text()``. Every collective instruction is parsed
(``all-to-all``, ``all-reduce``, ``all-gather``, ``reduce-scatter``, ``collective-permute``, plus
``ragged-all-to-all`` and ``collective-broadcast``); async ``*-start`` forms are counted once and
``*-done`` skipped. Ops wrapped in ``async-start(..., calls=%comp)`` are counted where they sit, inside
``%comp``.

Bytes are **per device**: the summed size of the instruction's operands (element count x dtype
bytes), e.g. XLA:CPU's tuple all-to-all ``(f32[4,8], f32[4,8]) all-to-all(%a, %b)`` has one operand
per peer and counts 2*4*8*4 = 256 bytes. Note the all-gather operand is the *local* shard (the result
is n times larger); the cost model applies each algorithm's traffic factor.

Replica groups are **positions in** ``mesh.devices.flat`` (see DESIGN.md §5), never ``device.id``.
Three spellings are expanded: explicit ``{{0,1},{2,3}}`` (``{}`` = every device), iota
``[2,4]<=[8]`` / ``[4,2]<=[2,4]T(1,0)``, and the mesh-axes form
``mesh['a'=2,'b'=4] {'b'}`` (sub-axes ``b:(1)2``, optional ``device_ids=(...)``). With
``replica_count == 1`` (every jit/shard_map program) replica ids, partition ids and global device ids
(``use_global_device_ids=true``) all coincide with mesh positions; ``channel_id`` and
``use_global_device_ids`` are kept on the record for programs where they do not.

Known limits: a collective inside a ``while`` body is counted once per compiled step, not once per
iteration; bytes are what the program moves, not what a particular algorithm puts on the wire.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import re
from typing import Iterable, Mapping, Sequence

import numpy as np

COLLECTIVE_OPS = ("all-to-all", "all-reduce", "all-gather", "reduce-scatter", "collective-permute",
                  "ragged-all-to-all", "collective-broadcast")

# Named-scope name (as written in ``jax.named_scope``) -> role. First match in this order wins.
DEFAULT_ROLES: dict[str, str] = {
    "ids_exchange": "ids_exchange",
    "tower_output_exchange": "tower_output_exchange",
    "intra_tower_lookup": "intra_tower_lookup",
    "embedding_exchange": "embedding_exchange",
    "embedding_grad_sync": "embedding_grad_sync",
    "tower_module": "tower_grad_sync",
    "dense_sync": "dense_sync",
}
DENSE_SYNC = "dense_sync"
OTHER = "other"
INTRA_TOWER = "intra_tower"
CROSS_TOWER = "cross_tower"
_DENSE_OPS = ("all-reduce", "reduce-scatter", "all-gather")


@dataclasses.dataclass
class Collective:
  """One collective instruction of a compiled program.

  op: canonical opcode (``-start`` stripped), e.g. ``"all-to-all"``.
  groups: ``[num_groups][group_size]`` mesh positions (pairs ``[src, dst]`` for collective-permute).
  bytes: per-device operand bytes.
  op_name: ``metadata={op_name=...}``, carries ``jax.named_scope`` names.
  shape: the instruction's result shape string, e.g. ``"(f32[4,8]{1,0}, f32[4,8]{1,0})"``.
  """
  op: str
  groups: list[list[int]]
  bytes: int
  op_name: str
  shape: str
  name: str = ""
  is_async: bool = False
  channel_id: int | None = None
  use_global_device_ids: bool = False


# ----------------------------------------------------------------------------------------------
# Shapes


def _dtype_bytes(dtype: str) -> float:
  if dtype == "pred":
    return 1
  if dtype in ("token", "opaque"):
    return 0
  if dtype.startswith("f8"):
    return 1
  if dtype.startswith("f4"):
    return 0.5
  m = re.fullmatch(r"[suf]?(\d+)|c(\d+)|bf(\d+)", dtype)
  if m is None:
    raise ValueError(f"unknown HLO element type {dtype!r}")
  bits = int(next(g for g in m.groups() if g is not None))
  return bits / 8


def shape_bytes(shape: str) -> int:
  """Bytes of an HLO shape string; tuples are summed. ``"(f32[2,3]{1,0}, bf16[4])"`` -> 32."""
  total = 0.0
  for dtype, dims in re.findall(r"([a-z][a-z0-9]*)\[([^\]]*)\]", shape):
    n = 1
    for d in filter(None, (x.strip() for x in dims.split(","))):
      n *= int(d.lstrip("<="))
    total += n * _dtype_bytes(dtype)
  return int(math.ceil(total))


def _tuple_elements(shape: str) -> list[str]:
  shape = shape.strip()
  if not shape.startswith("("):
    return [shape]
  return [s for s in _split_top(shape[1:-1]) if s]


# ----------------------------------------------------------------------------------------------
# Low-level scanning


def _strip_comments(s: str) -> str:
  return re.sub(r"/\*.*?\*/", "", s)


def _match_close(s: str, i: int) -> int:
  """Index of the bracket closing ``s[i]``; skips quoted strings."""
  pairs = {"(": ")", "{": "}", "[": "]"}
  stack, j, quote = [pairs[s[i]]], i + 1, False
  while j < len(s):
    c = s[j]
    if quote:
      if c == "\\":
        j += 1
      elif c == '"':
        quote = False
    elif c == '"':
      quote = True
    elif c in pairs:
      stack.append(pairs[c])
    elif c == stack[-1]:
      stack.pop()
      if not stack:
        return j
    j += 1
  raise ValueError(f"unbalanced brackets in HLO text: {s[i:i + 80]!r}")


def _split_top(s: str) -> list[str]:
  """Splits on commas that are not nested in brackets."""
  out, depth, cur = [], 0, []
  for c in s:
    if c in "([{":
      depth += 1
    elif c in ")]}":
      depth -= 1
    if c == "," and depth == 0:
      out.append("".join(cur).strip())
      cur = []
    else:
      cur.append(c)
  out.append("".join(cur).strip())
  return out


_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?(?P<name>[\w.\-]+)\s*=\s*(?P<rest>.*)$")


@dataclasses.dataclass
class _Instr:
  name: str
  shape: str
  opcode: str
  operands: str
  attrs: str


_COLLECTIVE_CALL = re.compile(r"\s(?:" + "|".join(COLLECTIVE_OPS) + r")(?:-start|-done)?\(")


def _parse_instruction(line: str, full: bool = True) -> _Instr | None:
  """``%name = shape opcode(operands), attrs``; with ``full=False`` only name and shape."""
  m = _INSTR.match(line)
  if m is None:
    return None
  rest = _strip_comments(m["rest"]).lstrip()
  if not rest:
    return None
  if rest[0] == "(":
    end = _match_close(rest, 0)
    shape, rest = rest[: end + 1], rest[end + 1:]
  else:
    sp = rest.find(" ")
    if sp < 0:
      return None
    shape, rest = rest[:sp], rest[sp:]
  if not full:
    return _Instr(m["name"], shape, "", "", "")
  om = re.match(r"\s*([\w\-]+)\(", rest)
  if om is None:
    return None
  open_at = om.end() - 1
  close = _match_close(rest, open_at)
  return _Instr(m["name"], shape, om.group(1), rest[open_at + 1: close], rest[close + 1:])


def _attr_value(attrs: str, key: str) -> str | None:
  """Raw text of ``key=value`` at the top level of an attribute list (brackets balanced)."""
  m = re.search(r"(?:^|[,\s])" + re.escape(key) + r"=", attrs)
  if m is None:
    return None
  i = m.end()
  if i < len(attrs) and attrs[i] in "{[(":
    if key == "replica_groups" and attrs[i] == "[":  # iota form: [2,4]<=[8]T(1,0)
      im = re.match(r"\[[\d,\s]*\]<=\[[\d,\s]*\](?:T\([\d,\s]*\))?", attrs[i:])
      return im.group(0) if im else None
    return attrs[i: _match_close(attrs, i) + 1]
  if attrs.startswith("mesh[", i):
    mm = re.match(r"mesh\[[^\]]*\](?:,\s*device_ids=\((?:[^()]|\([^()]*\))*\))?\s*\{[^}]*\}",
                  attrs[i:])
    return mm.group(0) if mm else None
  vm = re.match(r"[^,\s]+", attrs[i:])
  return vm.group(0) if vm else None


# ----------------------------------------------------------------------------------------------
# Replica groups


def instruction_shapes(hlo_text: str) -> dict[str, str]:
  """Result shape of every instruction of an HLO module text, by instruction name (first wins)."""
  out: dict[str, str] = {}
  for line in hlo_text.splitlines():
    ins = _parse_instruction(line, full=False)
    if ins is not None:
      out.setdefault(ins.name, ins.shape)
  return out


def _explicit_groups(text: str) -> list[list[int]]:
  return [[int(x) for x in re.findall(r"-?\d+", g)] for g in re.findall(r"\{([^{}]*)\}", text[1:-1])]


def iota_groups(text: str) -> list[list[int]]:
  """``[G,S]<=[d0,d1,...]T(p...)`` -> iota(prod d).reshape(d).transpose(p).reshape(G, S)."""
  m = re.fullmatch(r"\[([\d,\s]*)\]<=\[([\d,\s]*)\](?:T\(([\d,\s]*)\))?", text.strip())
  if m is None:
    raise ValueError(f"not an iota replica-group list: {text!r}")
  out_dims = [int(x) for x in m.group(1).split(",") if x.strip()]
  dims = [int(x) for x in m.group(2).split(",") if x.strip()]
  arr = np.arange(math.prod(dims)).reshape(dims)
  if m.group(3):
    arr = arr.transpose([int(x) for x in m.group(3).split(",")])
  return arr.reshape(out_dims).tolist()


def mesh_axes_groups(text: str) -> list[list[int]]:
  """``mesh['a'=2,'b'=4] {'b'}`` (also sub-axes ``b:(pre)size`` and ``device_ids=(...)``).

  Members vary over the listed (sub-)axes, major-to-minor in the listed order; one group per
  coordinate of the remaining (sub-)axes, in mesh order.
  """
  m = re.fullmatch(r"mesh\[([^\]]*)\](?:,\s*device_ids=\(((?:[^()]|\([^()]*\))*)\))?\s*\{([^}]*)\}",
                   text.strip())
  if m is None:
    raise ValueError(f"not a mesh-axes replica-group list: {text!r}")
  names, sizes = [], []
  for part in _split_top(m.group(1)):
    n, s = part.rsplit("=", 1)
    names.append(n.strip().strip("'\""))
    sizes.append(int(s))
  total = math.prod(sizes)
  if m.group(2) is None:
    devices = np.arange(total)
  elif "<=" in m.group(2) or m.group(2).lstrip().startswith("["):
    dm = re.fullmatch(r"\s*\[([\d,\s]*)\](?:<=\[[\d,\s]*\])?(?:T\(([\d,\s]*)\))?\s*", m.group(2))
    if dm is None:
      raise ValueError(f"cannot parse mesh device_ids in {text!r}")
    devices = np.arange(total).reshape([int(x) for x in dm.group(1).split(",")])
    if dm.group(2):
      devices = devices.transpose([int(x) for x in dm.group(2).split(",")])
  else:
    devices = np.array([int(x) for x in re.findall(r"\d+", m.group(2))])
  refs = []
  for item in filter(None, (x.strip() for x in m.group(3).split(","))):
    im = re.fullmatch(r"'?\"?([^:'\"]+)'?\"?(?::\((\d+)\)(\d+))?", item)
    if im is None:
      raise ValueError(f"cannot parse mesh axis {item!r} in {text!r}")
    axis = names.index(im.group(1))
    pre, size = (int(im.group(2)), int(im.group(3))) if im.group(2) else (1, sizes[axis])
    refs.append((axis, pre, size))
  # Split each axis into factors at every boundary a sub-axis reference needs.
  cuts = [{1, s} for s in sizes]
  for axis, pre, size in refs:
    cuts[axis] |= {pre, pre * size}
  fine_dims, fine_index = [], {}  # (axis, pre) -> fine dim index
  for axis, s in enumerate(sizes):
    bounds = sorted(cuts[axis])
    for lo, hi in zip(bounds, bounds[1:]):
      fine_index[(axis, lo)] = len(fine_dims)
      fine_dims.append((axis, lo, hi // lo))
  group_dims = []
  for axis, pre, size in refs:
    lo = pre
    while lo < pre * size:
      k = fine_index[(axis, lo)]
      group_dims.append(k)
      lo *= fine_dims[k][2]
  rest = [k for k in range(len(fine_dims)) if k not in group_dims]
  arr = devices.reshape([d for _, _, d in fine_dims]).transpose(rest + group_dims)
  group_size = math.prod(fine_dims[k][2] for k in group_dims)
  return arr.reshape(-1, group_size).tolist()


def parse_replica_groups(text: str, num_devices: int) -> list[list[int]]:
  """Any replica-group spelling -> ``[num_groups][group_size]`` positions."""
  text = text.strip()
  if text.startswith("mesh["):
    return mesh_axes_groups(text)
  if text.startswith("["):
    return iota_groups(text)
  groups = [g for g in _explicit_groups(text) if g]
  return groups or [list(range(num_devices))]


# ----------------------------------------------------------------------------------------------
# Collectives


def _op_name(attrs: str) -> str:
  m = re.search(r'op_name="((?:[^"\\]|\\.)*)"', attrs)
  return m.group(1) if m else ""


def _operand_bytes(instr: _Instr, op: str, n: int, symbols: Mapping[str, str]) -> int:
  total, missing = 0, False
  for tok in filter(None, _split_top(instr.operands)):
    name_m = re.search(r"%?([\w.\-]+)\s*$", tok)
    if re.match(r"\(?[a-z][a-z0-9]*\[", tok):  # operand printed with its shape
      total += shape_bytes(tok[: name_m.start()] if name_m else tok)
    elif name_m and name_m.group(1) in symbols:
      total += shape_bytes(symbols[name_m.group(1)])
    else:
      missing = True
  if not missing:
    return total
  # Operand shapes unknown: derive them from the result shape.
  result = _tuple_elements(instr.shape)
  if instr.opcode.endswith("-start") and op in ("all-gather", "collective-permute"):
    return shape_bytes(result[0])  # (operand, result[, contexts])
  b = shape_bytes(instr.shape)
  if op == "all-gather":
    return b // max(n, 1)
  if op == "reduce-scatter":
    return b * n
  return b


def _num_devices(hlo_text: str) -> int:
  header = next((ln for ln in hlo_text.splitlines() if ln.startswith("HloModule")), "")
  parts = re.search(r"num_partitions=(\d+)", header)
  reps = re.search(r"replica_count=(\d+)", header)
  return (int(parts.group(1)) if parts else 1) * (int(reps.group(1)) if reps else 1)


def collectives(hlo_text: str) -> list[Collective]:
  """Every collective instruction in ``hlo_text``, in program-text order."""
  num_devices = _num_devices(hlo_text)
  global_symbols: dict[str, str] = {}
  local: dict[str, str] = {}
  found = []  # (instr, symbols of its computation)
  for line in hlo_text.splitlines():
    if line.rstrip().endswith("{") and "=" not in line.split("(")[0]:
      local = {}  # a computation header: names resolve in their own computation first
      continue
    instr = _parse_instruction(line, full=_COLLECTIVE_CALL.search(line) is not None)
    if instr is None:
      continue
    global_symbols.setdefault(instr.name, instr.shape)
    local[instr.name] = instr.shape
    if instr.opcode:
      found.append((instr, local))

  out = []
  for instr, local in found:
    opcode = instr.opcode
    if opcode.endswith("-done"):
      continue
    is_async = opcode.endswith("-start")
    op = opcode[: -len("-start")] if is_async else opcode
    if op not in COLLECTIVE_OPS:
      continue
    if op == "collective-permute":
      pairs = _attr_value(instr.attrs, "source_target_pairs")
      groups = _explicit_groups(pairs) if pairs else []
    else:
      rg = _attr_value(instr.attrs, "replica_groups")
      groups = parse_replica_groups(rg if rg is not None else "{}", num_devices)
    n = max((len(g) for g in groups), default=1)
    symbols = collections.ChainMap(local, global_symbols)
    ch = _attr_value(instr.attrs, "channel_id")
    out.append(Collective(
        op=op, groups=groups, bytes=_operand_bytes(instr, op, n, symbols),
        op_name=_op_name(instr.attrs), shape=instr.shape, name=instr.name, is_async=is_async,
        channel_id=int(ch) if ch and ch.isdigit() else None,
        use_global_device_ids=_attr_value(instr.attrs, "use_global_device_ids") == "true"))
  return out


# ----------------------------------------------------------------------------------------------
# Classification


def scope_of(groups: Sequence[Sequence[int]], group_size: int) -> str:
  """``intra_tower`` when every group stays inside one tower group (positions // group_size)."""
  for g in groups:
    if len({p // group_size for p in g}) > 1:
      return CROSS_TOWER
  return INTRA_TOWER


def role_of(op: str, op_name: str, roles: Mapping[str, str] = DEFAULT_ROLES) -> str:
  """First role whose scope name appears in ``op_name`` as a whole identifier; else dense/other."""
  for scope_name, role in roles.items():
    if re.search(r"(?<![\w])" + re.escape(scope_name) + r"(?![\w])", op_name):
      return role
  return DENSE_SYNC if op in _DENSE_OPS else OTHER


def classify(colls: Iterable[Collective], group_size: int,
             roles: Mapping[str, str] = DEFAULT_ROLES) -> list[dict]:
  """Adds ``scope`` (intra_tower / cross_tower) and ``role`` to each collective, as dicts."""
  if group_size < 1:
    raise ValueError(f"group_size must be >= 1, got {group_size}")
  return [dict(op=c.op, groups=c.groups, bytes=c.bytes, scope=scope_of(c.groups, group_size),
               role=role_of(c.op, c.op_name, roles), op_name=c.op_name, shape=c.shape, name=c.name)
          for c in colls]


def summarize(classified: Sequence[Mapping]) -> dict:
  """Per-device byte totals of classified collectives (the comm-report contract, DESIGN.md §4).

  ``embedding_cross_tower_bytes`` = cross-tower bytes of every role but ``dense_sync``;
  ``dense_sync_bytes`` counts dense_sync in either scope.
  """
  cross = [c for c in classified if c["scope"] == CROSS_TOWER]
  by_role: dict[str, int] = {}
  for c in classified:
    by_role[c["role"]] = by_role.get(c["role"], 0) + int(c["bytes"])
  keys = ("op", "groups", "bytes", "scope", "role", "op_name")
  return {
      "cross_tower_bytes": sum(int(c["bytes"]) for c in cross),
      "intra_tower_bytes": sum(int(c["bytes"]) for c in classified if c["scope"] == INTRA_TOWER),
      "embedding_cross_tower_bytes": sum(int(c["bytes"]) for c in cross if c["role"] != DENSE_SYNC),
      "dense_sync_bytes": by_role.get(DENSE_SYNC, 0),
      "bytes_by_role": by_role,
      "num_collectives": len(classified),
      "collectives": [{k: c[k] for k in keys} for c in classified],
  }


def comm_report(hlo_text: str, group_size: int, roles: Mapping[str, str] = DEFAULT_ROLES) -> dict:
  """``summarize(classify(collectives(hlo_text), group_size, roles))``."""
  return summarize(classify(collectives(hlo_text), group_size, roles))
