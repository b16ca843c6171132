"""An emulated slow link between two emulated hosts: network namespaces, a veth pair and ``tc``.

Benchmarks only (needs root and ``ip netns``). Two namespaces ``A`` and ``B`` are joined by one veth
pair (``A`` holds ``addr_a``, ``B`` holds ``addr_b``, one /24 or /30 of private addresses that exist
only inside the two namespaces). Each end gets a root ``tbf`` (token bucket) qdisc capping its egress
rate, so each direction of the link is capped; a constant delay is added with ``netem`` when the kernel
has it (``netem_available``), otherwise the link has no added delay. Processes started with
``exec_prefix(ns)`` live in that namespace: traffic between them crosses the capped veth, traffic
inside one namespace (its own address or loopback) stays at memory speed unless ``set_local_rate`` caps
the namespace's ``lo`` too (a two-tier link with a chosen fast/slow ratio).

gloo (JAX's CPU cross-process collectives) binds to whatever the machine's hostname resolves to, so
each namespace gets ``/etc/netns/<ns>/hosts`` mapping the hostname to its own address (``ip netns
exec`` mounts it over ``/etc/hosts``).

Everything is plain command construction (``*_commands`` functions, testable without root) plus one
``SlowLink`` object that runs them and always tears down what it created (``close`` is idempotent, is
registered with ``atexit`` and runs from ``with``). Nothing here reads flags or the environment.
"""

from __future__ import annotations

import atexit
import dataclasses
import ipaddress
import os
import shutil
import socket
import subprocess
from typing import Callable, Sequence

NETNS_DIR = "/etc/netns"
_IFNAME_MAX = 15     # Linux IFNAMSIZ - 1


@dataclasses.dataclass(frozen=True)
class LinkSpec:
  """Names and addresses of one emulated two-host link (all created by ``SlowLink``)."""
  ns_a: str
  ns_b: str
  veth_a: str
  veth_b: str
  addr_a: str = "10.213.0.1"
  addr_b: str = "10.213.0.2"
  prefix_len: int = 24
  hostname: str = "localhost"

  def __post_init__(self):
    for name in (self.veth_a, self.veth_b):
      if not name or len(name) > _IFNAME_MAX or "/" in name or " " in name:
        raise ValueError(f"interface name {name!r} must be 1..{_IFNAME_MAX} characters without '/' or ' '")
    for name in (self.ns_a, self.ns_b):
      if not name or "/" in name or " " in name or name in (".", ".."):
        raise ValueError(f"namespace name {name!r} must be non-empty without '/' or ' '")
    if self.ns_a == self.ns_b or self.veth_a == self.veth_b:
      raise ValueError("the two ends need distinct namespace and interface names")
    a, b = ipaddress.ip_address(self.addr_a), ipaddress.ip_address(self.addr_b)
    if not (a.is_private and b.is_private) or a == b:
      raise ValueError(f"addresses must be two distinct private addresses, got {self.addr_a}, {self.addr_b}")
    net = ipaddress.ip_network(f"{self.addr_a}/{self.prefix_len}", strict=False)
    if b not in net:
      raise ValueError(f"{self.addr_b} is not in {net} (the subnet of {self.addr_a}/{self.prefix_len})")

  @classmethod
  def unique(cls, tag: str, hostname: str | None = None, **kw) -> "LinkSpec":
    """Names made unique by ``tag`` (e.g. the pid), so concurrent runs do not collide."""
    tag = str(tag)
    return cls(ns_a=f"dmtA{tag}", ns_b=f"dmtB{tag}", veth_a=f"dmva{tag}"[:_IFNAME_MAX],
               veth_b=f"dmvb{tag}"[:_IFNAME_MAX], hostname=hostname or socket.gethostname(), **kw)

  def ends(self) -> tuple[tuple[str, str, str], tuple[str, str, str]]:
    """``((ns, veth, addr) of A, (ns, veth, addr) of B)``."""
    return (self.ns_a, self.veth_a, self.addr_a), (self.ns_b, self.veth_b, self.addr_b)


def exec_prefix(ns: str) -> list[str]:
  """Command prefix that runs a program inside namespace ``ns``."""
  return ["ip", "netns", "exec", ns]


def setup_commands(spec: LinkSpec) -> list[list[str]]:
  """Creates both namespaces, the veth pair, addresses, and brings up the ends and loopbacks."""
  cmds = [["ip", "netns", "add", spec.ns_a], ["ip", "netns", "add", spec.ns_b],
          ["ip", "link", "add", spec.veth_a, "type", "veth", "peer", "name", spec.veth_b]]
  for ns, veth, addr in spec.ends():
    cmds.append(["ip", "link", "set", veth, "netns", ns])
  for ns, veth, addr in spec.ends():
    cmds += [["ip", "-n", ns, "addr", "add", f"{addr}/{spec.prefix_len}", "dev", veth],
             ["ip", "-n", ns, "link", "set", veth, "up"],
             ["ip", "-n", ns, "link", "set", "lo", "up"]]
  return cmds


def tbf_burst_bytes(rate_mbit: float, min_bytes: int = 64 * 1024, window_s: float = 0.001) -> int:
  """Token-bucket depth: at least ``min_bytes``, at least ``window_s`` of traffic at the rate.

  Too small a bucket cannot sustain the rate (the kernel refills it once per timer tick); too large a
  bucket lets bursts run above the rate. One millisecond of traffic (64 KiB at least) keeps the
  measured rate within a few percent of the cap from 50 Mbit/s to 10 Gbit/s.
  """
  return int(max(min_bytes, rate_mbit * 1e6 / 8 * window_s))


def tbf_args(rate_mbit: float, queue_latency_ms: float, min_burst_bytes: int = 64 * 1024) -> list[str]:
  """``tc`` arguments of one token-bucket cap at ``rate_mbit`` (> 0) Mbit/s."""
  if rate_mbit <= 0:
    raise ValueError(f"rate_mbit must be > 0 (or None for no cap), got {rate_mbit}")
  return ["tbf", "rate", f"{rate_mbit:g}mbit", "burst", str(tbf_burst_bytes(rate_mbit, min_bytes=min_burst_bytes)),
          "latency", f"{queue_latency_ms:g}ms"]


def rate_commands(spec: LinkSpec, rate_mbit: float | None, delay_ms: float = 0.0,
                  use_netem: bool = False, queue_latency_ms: float = 100.0) -> list[list[str]]:
  """Sets (replaces) the egress cap of both ends; ``rate_mbit=None`` removes it (unthrottled veth).

  With ``use_netem`` and ``delay_ms > 0`` the root is ``netem delay`` with the ``tbf`` as its child;
  otherwise the ``tbf`` alone is the root qdisc (``delay_ms`` is then ignored: check
  ``netem_available`` first).
  """
  cmds = []
  for ns, veth, _ in spec.ends():
    tc = ["ip", "netns", "exec", ns, "tc", "qdisc"]
    cmds.append(tc + ["del", "dev", veth, "root"])   # may fail when nothing is set: run with check=False
    if rate_mbit is None:
      if use_netem and delay_ms > 0:
        cmds.append(tc + ["add", "dev", veth, "root", "netem", "delay", f"{delay_ms:g}ms"])
      continue
    tbf = tbf_args(rate_mbit, queue_latency_ms)
    if use_netem and delay_ms > 0:
      cmds.append(tc + ["add", "dev", veth, "root", "handle", "1:", "netem", "delay", f"{delay_ms:g}ms"])
      cmds.append(tc + ["add", "dev", veth, "parent", "1:1", "handle", "10:"] + tbf)
    else:
      cmds.append(tc + ["add", "dev", veth, "root"] + tbf)
  return cmds


def local_rate_commands(spec: LinkSpec, rate_mbit: float | None,
                        queue_latency_ms: float = 100.0) -> list[list[str]]:
  """Caps (or, with ``None``, uncaps) the *intra-host* tier: ``lo`` egress in both namespaces.

  Traffic a process sends to its own namespace's addresses (its own veth address included) is routed
  through ``lo``; XLA:CPU's multi-process collectives among one process's devices use gloo over exactly
  that path, so this throttles the fast tier while the veth cap throttles the slow one. ``lo`` carries
  GSO super-packets of up to 64 KiB, so the bucket holds at least 256 KiB (a bucket smaller than one
  packet would stall the device).
  """
  cmds = []
  for ns in (spec.ns_a, spec.ns_b):
    tc = ["ip", "netns", "exec", ns, "tc", "qdisc"]
    cmds.append(tc + ["del", "dev", "lo", "root"])    # may fail when nothing is set: run with check=False
    if rate_mbit is None:
      continue
    cmds.append(tc + ["add", "dev", "lo", "root"] + tbf_args(rate_mbit, queue_latency_ms, 256 * 1024))
  return cmds


def teardown_commands(spec: LinkSpec) -> list[list[str]]:
  """Deleting a namespace deletes the veth end inside it, and with it the peer."""
  return [["ip", "netns", "del", spec.ns_a], ["ip", "netns", "del", spec.ns_b],
          ["ip", "link", "del", spec.veth_a]]   # only if it never moved into A (setup failed half-way)


def hosts_text(hostname: str, addr: str) -> str:
  """``/etc/hosts`` for one namespace: loopback names, and the machine's hostname -> ``addr``."""
  names = " ".join(dict.fromkeys(n for n in (hostname, hostname.split(".")[0]) if n and n != "localhost"))
  lines = ["127.0.0.1 localhost", "::1 localhost"]
  if names:
    lines.append(f"{addr} {names}")
  return "\n".join(lines) + "\n"


def netns_supported() -> tuple[bool, str]:
  """``(ok, reason)``: root and an ``ip`` with ``netns`` and a ``tc`` binary."""
  if os.geteuid() != 0:
    return False, "needs root (network namespaces, veth and tc)"
  for tool in ("ip", "tc"):
    if shutil.which(tool) is None:
      return False, f"'{tool}' not found (install iproute2)"
  r = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
  if r.returncode != 0:
    return False, f"'ip netns list' failed: {r.stderr.strip()}"
  return True, ""


def _run(cmd: Sequence[str], check: bool = True) -> subprocess.CompletedProcess:
  r = subprocess.run(list(cmd), capture_output=True, text=True)
  if check and r.returncode != 0:
    raise RuntimeError(f"command failed ({r.returncode}): {' '.join(cmd)}: {r.stderr.strip()}")
  return r


class SlowLink:
  """Creates the namespaces, veth pair, hosts files and rate caps of ``spec``; tears them down.

    with SlowLink(LinkSpec.unique(os.getpid())) as link:
      link.set_rate(500)                     # Mbit/s, each direction
      subprocess.Popen(link.exec_prefix("a") + [sys.executable, ...])

  ``close()`` is idempotent and also runs at interpreter exit (``atexit``) and after a failed
  ``create()``, so nothing is left behind unless the process is SIGKILLed (then run ``close`` of a
  ``SlowLink`` with the same spec, or ``ip netns del`` by hand).
  """

  def __init__(self, spec: LinkSpec, runner: Callable[..., subprocess.CompletedProcess] = _run,
               netns_dir: str = NETNS_DIR):
    self.spec = spec
    self._run = runner
    self._netns_dir = netns_dir
    self._created = False
    self._netem: bool | None = None
    self.rate_mbit: float | None = None
    self.local_rate_mbit: float | None = None
    self.delay_ms: float = 0.0

  def __enter__(self) -> "SlowLink":
    self.create()
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def exec_prefix(self, end: str) -> list[str]:
    """Prefix for running a program on end ``"a"`` or ``"b"``."""
    return exec_prefix({"a": self.spec.ns_a, "b": self.spec.ns_b}[end])

  def address(self, end: str) -> str:
    return {"a": self.spec.addr_a, "b": self.spec.addr_b}[end]

  def create(self) -> None:
    if self._created:
      return
    self._created = True            # from here on close() undoes whatever part exists
    atexit.register(self.close)
    try:
      for ns, _, addr in self.spec.ends():
        d = os.path.join(self._netns_dir, ns)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "hosts"), "w") as f:
          f.write(hosts_text(self.spec.hostname, addr))
      for cmd in setup_commands(self.spec):
        self._run(cmd)
    except BaseException:
      self.close()
      raise

  def netem_available(self) -> bool:
    """Whether the kernel has ``sch_netem`` (probed once on end A's veth, then removed)."""
    if self._netem is None:
      tc = ["ip", "netns", "exec", self.spec.ns_a, "tc", "qdisc"]
      dev = ["dev", self.spec.veth_a, "root"]
      self._run(tc + ["del"] + dev, check=False)
      r = self._run(tc + ["add"] + dev + ["netem", "delay", "1ms"], check=False)
      self._netem = r.returncode == 0
      self._run(tc + ["del"] + dev, check=False)
      if self.rate_mbit is not None:   # the probe replaced the root qdisc: restore the cap
        self.set_rate(self.rate_mbit, self.delay_ms)
    return self._netem

  def set_rate(self, rate_mbit: float | None, delay_ms: float = 0.0) -> None:
    """Caps each direction at ``rate_mbit`` Mbit/s (``None`` = no cap) plus ``delay_ms`` (netem)."""
    if not self._created:
      raise RuntimeError("SlowLink.set_rate before create()")
    use_netem = delay_ms > 0 and self.netem_available()
    if delay_ms > 0 and not use_netem:
      raise RuntimeError(f"delay_ms={delay_ms} needs the kernel's netem qdisc, which is not available")
    for cmd in rate_commands(self.spec, rate_mbit, delay_ms, use_netem):
      self._run(cmd, check=cmd[6] != "del")   # deleting a missing root qdisc fails harmlessly
    self.rate_mbit, self.delay_ms = rate_mbit, delay_ms

  def set_local_rate(self, rate_mbit: float | None) -> None:
    """Caps each namespace's intra-host tier (``lo``) at ``rate_mbit`` Mbit/s; ``None`` = no cap."""
    if not self._created:
      raise RuntimeError("SlowLink.set_local_rate before create()")
    for cmd in local_rate_commands(self.spec, rate_mbit):
      self._run(cmd, check=cmd[6] != "del")
    self.local_rate_mbit = rate_mbit

  def qdisc_text(self) -> str:
    """``tc qdisc show`` of both ends and both loopbacks (for the record)."""
    out = []
    for ns, veth, _ in self.spec.ends():
      for dev in (veth, "lo"):
        r = self._run(["ip", "netns", "exec", ns, "tc", "qdisc", "show", "dev", dev], check=False)
        out.append(f"{ns}/{dev}: {r.stdout.strip()}")
    return "\n".join(out)

  def close(self) -> None:
    if not self._created:
      return
    self._created = False
    for cmd in teardown_commands(self.spec):
      self._run(cmd, check=False)
    for ns in (self.spec.ns_a, self.spec.ns_b):
      shutil.rmtree(os.path.join(self._netns_dir, ns), ignore_errors=True)
    try:
      atexit.unregister(self.close)
    except Exception:  # pylint: disable=broad-except
      pass
