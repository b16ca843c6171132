"""Topology levels -> ``jax.sharding.Mesh``; tower level, peer axes and local axes.

A topology is an ordered list of levels, outermost first, e.g. ``(("host", 2), ("device", 4))`` or
``(("rack", 2), ("host", 2), ("device", 2))``. The mesh has one axis per level. The *tower level*
names the level whose members are tower groups: a group is the sub-mesh spanned by the levels below it
(the **local axes**, fast links); the tower level and the levels above it are the **peer axes** (the
slow links that SPTT crosses only with ids and compressed tower outputs).

Device order: devices are sorted by ``(process_index, id)`` before being reshaped into the mesh, so the
innermost levels are filled by one process's devices first. On a multi-host cluster a level whose
members must live on one host (the local axes of a tower group) is then really intra-host; we check it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh


@dataclasses.dataclass(frozen=True)
class Topology:
  """Mesh levels (name, size), outermost first, plus the tower level (``None`` = flat only)."""
  levels: tuple[tuple[str, int], ...]
  tower_level: str | None = None

  def __post_init__(self):
    levels = tuple((str(n), int(s)) for n, s in self.levels)
    object.__setattr__(self, "levels", levels)
    if not levels:
      raise ValueError("a topology needs at least one level")
    names = [n for n, _ in levels]
    if len(set(names)) != len(names):
      raise ValueError(f"topology level names must be unique, got {names}")
    for n, s in levels:
      if s <= 0:
        raise ValueError(f"topology level {n!r} must have size >= 1, got {s}")
    if self.tower_level is not None and self.tower_level not in names:
      raise ValueError(f"tower_level {self.tower_level!r} is not a topology level; levels are {names}")

  @classmethod
  def from_string(cls, spec: str, tower_level: str | None = None) -> "Topology":
    """Parses ``"host=2,device=4"``."""
    levels = []
    for part in spec.split(","):
      if "=" not in part:
        raise ValueError(f"topology level {part!r} must look like name=size (in {spec!r})")
      n, s = part.split("=")
      levels.append((n.strip(), int(s)))
    return cls(tuple(levels), tower_level)

  @property
  def axis_names(self) -> tuple[str, ...]:
    return tuple(n for n, _ in self.levels)

  @property
  def shape(self) -> tuple[int, ...]:
    return tuple(s for _, s in self.levels)

  @property
  def num_devices(self) -> int:
    return math.prod(self.shape)

  def _tower_index(self) -> int:
    if self.tower_level is None:
      raise ValueError("this topology has no tower_level; set one to use towers")
    return self.axis_names.index(self.tower_level)

  @property
  def peer_axes(self) -> tuple[str, ...]:
    """The tower level and the levels above it: groups talk over these (slow) axes."""
    return self.axis_names[: self._tower_index() + 1]

  @property
  def local_axes(self) -> tuple[str, ...]:
    """The levels below the tower level: the devices of one tower group (fast axes)."""
    return self.axis_names[self._tower_index() + 1:]

  @property
  def num_groups(self) -> int:
    return math.prod(self.shape[: self._tower_index() + 1])

  @property
  def group_size(self) -> int:
    return math.prod(self.shape[self._tower_index() + 1:])

  def group_of_position(self, flat_position: int) -> int:
    """Tower group of the device at ``mesh.devices.flat[flat_position]``."""
    return flat_position // self.group_size


def sorted_devices(devices: Sequence[jax.Device] | None = None) -> list[jax.Device]:
  """Devices in (process_index, id) order — never assume ``device.id`` is a mesh position."""
  devices = list(jax.devices() if devices is None else devices)
  return sorted(devices, key=lambda d: (d.process_index, d.id))


def make_mesh(topology: Topology, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds the mesh with one Auto axis per level, outermost first.

  Raises a clear error when the device count does not match, or when on a multi-process run a
  tower group (the local axes) would span processes.
  """
  devs = sorted_devices(devices)
  if len(devs) != topology.num_devices:
    raise ValueError(
        f"topology {dict(topology.levels)} needs {topology.num_devices} devices but "
        f"{len(devs)} are available; change the level sizes (their product must equal the device count)")
  arr = np.array(devs, dtype=object).reshape(topology.shape)
  mesh = Mesh(arr, topology.axis_names, axis_types=(AxisType.Auto,) * len(topology.levels))
  check_groups_within_processes(topology, mesh)
  return mesh


def check_groups_within_processes(topology: Topology, mesh: Mesh) -> None:
  """A tower group must live inside one process (one host) — its lookups use the fast links.

  Checked on the devices' ``process_index``, not on level names: a tower level above ``host`` (e.g.
  ``rack``) is fine while its group (the levels below it) is the devices of one process.
  """
  if topology.tower_level is None:
    return
  flat = np.vectorize(lambda d: d.process_index)(mesh.devices)
  procs = flat.reshape(-1, topology.group_size)
  for g, row in enumerate(procs):
    if len(set(row.tolist())) > 1:
      per = int(np.sum(flat == flat.flat[0]))
      nproc = len(set(flat.ravel().tolist()))
      raise ValueError(
          f"tower group {g} (level {topology.tower_level!r}) spans processes {sorted(set(row.tolist()))}: "
          f"its local axes {topology.local_axes} ({topology.group_size} devices) must be devices of one "
          f"process (host), but processes have {per} devices each. Make the levels below the tower level "
          f"fit in one process, e.g. topology 'host={nproc},device={per}' with tower_level 'host' "
          f"(host_level_topology), or pick a lower tower level")


def host_level_topology(num_processes: int, devices_per_process: int,
                        racks: int = 1) -> Topology:
  """The topology implied by a real process layout: (rack,) host = processes, device = local devices."""
  if racks > 1:
    if num_processes % racks:
      raise ValueError(f"{num_processes} processes cannot be split into {racks} racks")
    return Topology((("rack", racks), ("host", num_processes // racks),
                     ("device", devices_per_process)), "host")
  return Topology((("host", num_processes), ("device", devices_per_process)), "host")
