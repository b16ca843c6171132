"""The slow-link helper: command construction (pure) and, as root, one real namespace pair."""

import os
import socket
import subprocess
import sys
import time

import pytest

from dmt_jax.analysis import netem


def _spec(**kw):
  return netem.LinkSpec("nsA", "nsB", "vA", "vB", hostname="myhost", **kw)


def test_setup_commands_create_both_ends_and_loopbacks():
  cmds = netem.setup_commands(_spec())
  assert cmds[:3] == [["ip", "netns", "add", "nsA"], ["ip", "netns", "add", "nsB"],
                      ["ip", "link", "add", "vA", "type", "veth", "peer", "name", "vB"]]
  assert ["ip", "link", "set", "vA", "netns", "nsA"] in cmds
  assert ["ip", "link", "set", "vB", "netns", "nsB"] in cmds
  assert ["ip", "-n", "nsA", "addr", "add", "10.213.0.1/24", "dev", "vA"] in cmds
  assert ["ip", "-n", "nsB", "addr", "add", "10.213.0.2/24", "dev", "vB"] in cmds
  for ns in ("nsA", "nsB"):
    assert ["ip", "-n", ns, "link", "set", "lo", "up"] in cmds
  # An interface is moved before it is configured inside its namespace.
  assert cmds.index(["ip", "link", "set", "vA", "netns", "nsA"]) < cmds.index(
      ["ip", "-n", "nsA", "link", "set", "vA", "up"])


def test_rate_commands_tbf_on_both_ends():
  cmds = netem.rate_commands(_spec(), 500)
  adds = [c for c in cmds if "add" in c]
  assert len(adds) == 2
  for ns, veth in (("nsA", "vA"), ("nsB", "vB")):
    assert ["ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", veth, "root"] in cmds
    add = next(c for c in adds if c[3] == ns)
    assert add[:10] == ["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", veth, "root"]
    assert add[10:14] == ["tbf", "rate", "500mbit", "burst"]
    assert int(add[14]) == netem.tbf_burst_bytes(500)
    assert add[15:] == ["latency", "100ms"]


def test_rate_commands_with_netem_delay_nests_tbf():
  cmds = netem.rate_commands(_spec(), 250, delay_ms=2, use_netem=True)
  a = [c for c in cmds if c[3] == "nsA" and "add" in c]
  assert a[0][-5:] == ["handle", "1:", "netem", "delay", "2ms"]
  assert a[1][8:14] == ["vA", "parent", "1:1", "handle", "10:", "tbf"]


def test_rate_none_removes_cap_only():
  cmds = netem.rate_commands(_spec(), None)
  assert all(c[6] == "del" for c in cmds) and len(cmds) == 2


def test_rate_must_be_positive():
  with pytest.raises(ValueError, match="rate_mbit"):
    netem.rate_commands(_spec(), 0)


def test_local_rate_commands_cap_loopback_in_both_namespaces():
  cmds = netem.local_rate_commands(_spec(), 1000)
  for ns in ("nsA", "nsB"):
    assert ["ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", "lo", "root"] in cmds
    add = next(c for c in cmds if c[3] == ns and c[6] == "add")
    assert add[7:13] == ["dev", "lo", "root", "tbf", "rate", "1000mbit"]
    assert int(add[14]) >= 256 * 1024      # one 64 KiB GSO packet on lo must always fit the bucket
  assert all(c[6] == "del" for c in netem.local_rate_commands(_spec(), None))
  with pytest.raises(ValueError, match="rate_mbit"):
    netem.local_rate_commands(_spec(), -1)


def test_set_local_rate_needs_create():
  link = netem.SlowLink(_spec(), runner=lambda cmd, check=True: None)
  with pytest.raises(RuntimeError, match="before create"):
    link.set_local_rate(100)


@pytest.mark.parametrize("mbit,expect", [(50, 64 * 1024), (1000, 125_000), (10_000, 1_250_000)])
def test_tbf_burst(mbit, expect):
  assert netem.tbf_burst_bytes(mbit) == expect


def test_teardown_deletes_namespaces():
  assert netem.teardown_commands(_spec())[:2] == [["ip", "netns", "del", "nsA"], ["ip", "netns", "del", "nsB"]]


def test_hosts_text_maps_hostname_to_namespace_address():
  text = netem.hosts_text("box.example.org", "10.213.0.2")
  assert "127.0.0.1 localhost" in text
  assert "10.213.0.2 box.example.org box" in text.splitlines()
  assert "10.213.0.1" not in netem.hosts_text("localhost", "10.213.0.1")


@pytest.mark.parametrize("kw,match", [
    (dict(veth_a="x" * 16), "interface name"),
    (dict(addr_b="10.214.0.2"), "not in"),
    (dict(addr_a="8.8.8.8", addr_b="8.8.8.9"), "private"),
    (dict(ns_b="nsA"), "distinct"),
])
def test_spec_validation(kw, match):
  args = dict(ns_a="nsA", ns_b="nsB", veth_a="vA", veth_b="vB")
  args.update(kw)
  with pytest.raises(ValueError, match=match):
    netem.LinkSpec(**args)


def test_unique_names_fit_interface_limit():
  spec = netem.LinkSpec.unique(4194304, hostname="h")
  assert len(spec.veth_a) <= 15 and spec.ns_a != spec.ns_b


def test_slow_link_runs_setup_and_always_tears_down(tmp_path):
  """A failing setup command still removes what was created (fake runner, no root needed)."""
  calls = []

  def runner(cmd, check=True):
    calls.append(cmd)
    if cmd[:3] == ["ip", "link", "add"]:
      raise RuntimeError("boom")
    return subprocess.CompletedProcess(cmd, 0, "", "")

  link = netem.SlowLink(_spec(), runner=runner, netns_dir=str(tmp_path))
  with pytest.raises(RuntimeError, match="boom"):
    link.create()
  assert ["ip", "netns", "del", "nsA"] in calls and ["ip", "netns", "del", "nsB"] in calls
  assert not (tmp_path / "nsA").exists() and not (tmp_path / "nsB").exists()
  n = len(calls)
  link.close()                      # idempotent
  assert len(calls) == n


def test_slow_link_writes_hosts_files(tmp_path):
  runner = lambda cmd, check=True: subprocess.CompletedProcess(cmd, 0, "", "")
  with netem.SlowLink(_spec(), runner=runner, netns_dir=str(tmp_path)) as link:
    assert (tmp_path / "nsA" / "hosts").read_text() == netem.hosts_text("myhost", "10.213.0.1")
    assert (tmp_path / "nsB" / "hosts").read_text() == netem.hosts_text("myhost", "10.213.0.2")
    assert link.exec_prefix("b") == ["ip", "netns", "exec", "nsB"]
  assert not (tmp_path / "nsA").exists()


# --- real namespaces (root only) ------------------------------------------------------------------

_OK, _WHY = netem.netns_supported()

_RECV = r"""
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 5901)); s.listen(1); s.settimeout(20)
c, _ = s.accept(); n = 0; t0 = time.perf_counter()
while n < int(sys.argv[2]):
  b = c.recv(1 << 16)
  if not b: break
  n += len(b)
print(n, time.perf_counter() - t0)
"""

_SEND = r"""
import socket, sys, time
for _ in range(200):
  try:
    c = socket.create_connection((sys.argv[1], 5901), timeout=5); break
  except OSError: time.sleep(0.05)
c.sendall(b"\0" * int(sys.argv[2])); c.close()
"""


def _send_and_measure_mbit(link, sender: str, receiver: str, nbytes: int = 2_000_000) -> float:
  """Sends ``nbytes`` over TCP from end ``sender`` to the address of end ``receiver``; Mbit/s achieved."""
  addr = link.address(receiver)
  recv = subprocess.Popen(link.exec_prefix(receiver) + [sys.executable, "-c", _RECV, addr, str(nbytes)],
                          stdout=subprocess.PIPE, text=True)
  time.sleep(0.3)
  subprocess.run(link.exec_prefix(sender) + [sys.executable, "-c", _SEND, addr, str(nbytes)],
                 check=True, timeout=30)
  got, secs = recv.communicate(timeout=30)[0].split()
  assert int(got) == nbytes
  return nbytes * 8 / float(secs) / 1e6


@pytest.mark.skipif(not _OK, reason=f"real network namespaces unavailable: {_WHY}")
def test_real_link_is_capped_and_removed():
  """2 MB over a 40 Mbit/s cap takes >= ~0.4 s (uncapped: milliseconds); nothing is left after."""
  spec = netem.LinkSpec.unique(f"t{os.getpid() % 100000}", hostname=socket.gethostname())
  with netem.SlowLink(spec) as link:
    link.set_rate(40)
    rate_mbit = _send_and_measure_mbit(link, "a", "b")
    assert rate_mbit < 40 * 1.3, rate_mbit
  names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
  assert spec.ns_a not in names and spec.ns_b not in names
  assert not os.path.exists(os.path.join(netem.NETNS_DIR, spec.ns_a))


@pytest.mark.skipif(not _OK, reason=f"real network namespaces unavailable: {_WHY}")
def test_real_loopback_cap_throttles_traffic_inside_a_namespace():
  """The intra-host tier: 2 MB to the namespace's own address under a 40 Mbit/s lo cap is capped,
  while the veth (uncapped) still carries it fast."""
  spec = netem.LinkSpec.unique(f"u{os.getpid() % 100000}", hostname=socket.gethostname())
  with netem.SlowLink(spec) as link:
    link.set_local_rate(40)
    rate_mbit = _send_and_measure_mbit(link, "a", "a")
    assert rate_mbit < 40 * 1.3, rate_mbit
    assert "tbf" in link.qdisc_text()
    assert _send_and_measure_mbit(link, "a", "b") > 40 * 2      # across the veth: not the lo cap
