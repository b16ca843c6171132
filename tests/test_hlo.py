"""dmt_jax.analysis.hlo: collectives of a real compiled 2x4 program, and literal HLO spellings."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from dmt_jax.analysis import hlo

B, F, D, H = 8, 6, 16, 8  # per-device batch, features, dense in, dense out
GROUP = 4  # devices per tower group (the "device" axis)
HOST_PAIRS = [[0, 4], [1, 5], [2, 6], [3, 7]]
DEVICE_GROUPS = [[0, 1, 2, 3], [4, 5, 6, 7]]
ALL = [list(range(8))]


def _mesh():
  return Mesh(np.array(jax.devices()).reshape(2, 4), ("host", "device"))


def _compiled_text():
  mesh = _mesh()

  def sparse(ids):  # ids: [B, F] int32 per device
    with jax.named_scope("ids_exchange"):
      ids = jax.lax.all_to_all(ids, "host", 0, 0, tiled=True)
    with jax.named_scope("intra_tower_lookup"):
      emb = jax.lax.psum(ids.astype(jnp.float32) * 2.0, "device")
    with jax.named_scope("tower_output_exchange"):
      out = jax.lax.all_to_all(emb, ("host", "device"), 0, 0, tiled=True)
    return out

  sm = jax.shard_map(sparse, mesh=mesh, in_specs=P(("host", "device")),
                     out_specs=P(("host", "device")))

  def step(w, x, ids):
    dense_grad = jax.grad(lambda w: jnp.sum(jnp.tanh(x @ w)))(w)  # GSPMD all-reduce over 8
    return dense_grad, sm(ids)

  batch = NamedSharding(mesh, P(("host", "device")))
  fn = jax.jit(step, in_shardings=(NamedSharding(mesh, P()), batch, batch),
               out_shardings=(NamedSharding(mesh, P()), batch))
  args = (jnp.ones((D, H), jnp.float32), jnp.ones((8 * B, D), jnp.float32),
          jnp.ones((8 * B, F), jnp.int32))
  return fn.lower(*args).compile().as_text()


@pytest.fixture(scope="module")
def real_text():
  return _compiled_text()


def _key(c):
  return (c["role"], c["op"])


def test_real_program_collectives(real_text):
  got = sorted(hlo.classify(hlo.collectives(real_text), GROUP), key=_key)
  expected = sorted([
      # all_to_all over "host": operand [B, F] int32 (XLA:CPU: 2 tuple operands of [B/2, F]).
      dict(op="all-to-all", groups=HOST_PAIRS, bytes=B * F * 4, scope="cross_tower", role="ids_exchange"),
      dict(op="all-reduce", groups=DEVICE_GROUPS, bytes=B * F * 4, scope="intra_tower",
           role="intra_tower_lookup"),
      dict(op="all-to-all", groups=ALL, bytes=B * F * 4, scope="cross_tower",
           role="tower_output_exchange"),
      dict(op="all-reduce", groups=ALL, bytes=D * H * 4, scope="cross_tower", role="dense_sync"),
  ], key=_key)
  assert len(got) == len(expected), [(c["op"], c["op_name"]) for c in got]
  for g, e in zip(got, expected):
    for k, v in e.items():
      assert g[k] == v, (k, g)
  assert "ids_exchange" in got[[c["role"] for c in got].index("ids_exchange")]["op_name"]


def test_real_program_summary(real_text):
  s = hlo.comm_report(real_text, GROUP)
  assert s["intra_tower_bytes"] == B * F * 4
  assert s["cross_tower_bytes"] == 2 * B * F * 4 + D * H * 4
  assert s["embedding_cross_tower_bytes"] == 2 * B * F * 4
  assert s["dense_sync_bytes"] == D * H * 4
  assert {c["role"] for c in s["collectives"]} == {
      "ids_exchange", "intra_tower_lookup", "tower_output_exchange", "dense_sync"}
  assert set(s["collectives"][0]) == {"op", "groups", "bytes", "scope", "role", "op_name"}


def test_transposed_exchange_keeps_its_role():
  mesh = _mesh()

  def f(x):
    with jax.named_scope("ids_exchange"):
      return jax.lax.all_to_all(x, "host", 0, 0, tiled=True)

  sm = jax.shard_map(f, mesh=mesh, in_specs=P(("host", "device")), out_specs=P(("host", "device")))
  batch = NamedSharding(mesh, P(("host", "device")))
  g = jax.jit(jax.grad(lambda x: jnp.sum(jnp.sin(sm(x)))), in_shardings=batch, out_shardings=batch)
  colls = hlo.classify(hlo.collectives(g.lower(jnp.ones((8 * 4, 3))).compile().as_text()), GROUP)
  assert [c["role"] for c in colls] == ["ids_exchange"] * 2
  assert sum("transpose" in c["op_name"] for c in colls) == 1
  assert all(c["bytes"] == 4 * 3 * 4 and c["groups"] == HOST_PAIRS for c in colls)


def test_custom_role_mapping():
  c = hlo.Collective("all-to-all", [[0, 4]], 8, "jit(s)/my_scope/all_to_all", "f32[2]")
  assert hlo.classify([c], 4, {"my_scope": "ids_exchange"})[0]["role"] == "ids_exchange"
  assert hlo.classify([c], 4)[0]["role"] == "other"
  # whole-identifier match: a longer scope name does not count
  c2 = hlo.Collective("all-reduce", [[0, 1]], 8, "jit(s)/ids_exchange_v2/psum", "f32[2]")
  assert hlo.classify([c2], 4)[0]["role"] == "dense_sync"


# ----------------------------------------------------------------------------------------------
# Literal HLO


def _module(body, num_partitions=8):
  return (f"HloModule m, entry_computation_layout={{(f32[8])->f32[8]}}, num_partitions={num_partitions}\n\n"
          "ENTRY %main (p: f32[8,16]) -> f32[8,16] {\n"
          "  %p = f32[8,16]{1,0} parameter(0)\n"
          "  %q = bf16[4,16]{1,0} parameter(1)\n"
          f"{body}\n}}\n")


def test_iota_replica_groups():
  assert hlo.iota_groups("[2,4]<=[8]") == DEVICE_GROUPS
  assert hlo.iota_groups("[4,2]<=[2,4]T(1,0)") == HOST_PAIRS
  assert hlo.iota_groups("[1,8]<=[8]") == ALL
  text = _module('  %ar = f32[8,16]{1,0} all-reduce(%p), channel_id=3, replica_groups=[4,2]<=[2,4]T(1,0), '
                 'use_global_device_ids=true, to_apply=%add, metadata={op_name="jit(f)/dense_sync/psum"}')
  (c,) = hlo.collectives(text)
  assert (c.op, c.groups, c.bytes, c.channel_id, c.use_global_device_ids) == (
      "all-reduce", HOST_PAIRS, 8 * 16 * 4, 3, True)
  assert hlo.classify([c], 4)[0]["scope"] == "cross_tower"


def test_mesh_axes_replica_groups():
  assert hlo.mesh_axes_groups("mesh['axis_0'=8,'axis_1'=1] {'axis_0'}") == ALL
  assert hlo.mesh_axes_groups("mesh[host=2,device=4] {host}") == HOST_PAIRS
  assert hlo.mesh_axes_groups("mesh[host=2,device=4] {device}") == DEVICE_GROUPS
  assert hlo.mesh_axes_groups("mesh[a=8] {a:(1)2}") == hlo.iota_groups("[4,2]<=[2,4]T(1,0)")
  assert hlo.mesh_axes_groups("mesh[a=8] {a:(2)2}") == hlo.iota_groups("[4,2]<=[2,2,2]T(0,2,1)")
  assert hlo.mesh_axes_groups("mesh[x=2,y=2], device_ids=(3,1,0,2) {x}") == [[3, 0], [1, 2]]


def test_tuple_all_to_all_sums_operands():
  text = _module(
      "  %s0 = f32[2,16]{1,0} slice(%p), slice={[0:2], [0:16]}\n"
      "  %s1 = f32[2,16]{1,0} slice(%p), slice={[2:4], [0:16]}\n"
      "  %s2 = f32[2,16]{1,0} slice(%p), slice={[4:6], [0:16]}\n"
      "  %s3 = f32[2,16]{1,0} slice(%p), slice={[6:8], [0:16]}\n"
      "  %a2a = (f32[2,16]{1,0}, f32[2,16]{1,0}, f32[2,16]{1,0}, /*index=3*/f32[2,16]{1,0}) "
      "all-to-all(%s0, %s1, %s2, /*index=3*/%s3), channel_id=1, replica_groups={{0,1,2,3},{4,5,6,7}}, "
      'metadata={op_name="jit(f)/shard_map/intra_tower_lookup/all_to_all" stack_frame_id=3}')
  (c,) = hlo.collectives(text)
  assert c.op == "all-to-all" and c.bytes == 4 * 2 * 16 * 4 and c.groups == DEVICE_GROUPS
  (cl,) = hlo.classify([c], 4)
  assert (cl["scope"], cl["role"]) == ("intra_tower", "intra_tower_lookup")


def test_async_start_counted_once_and_operand_shapes():
  text = _module(
      "  %ags = (bf16[4,16]{1,0}, bf16[16,16]{1,0}) all-gather-start(%q), channel_id=1, "
      "replica_groups={{0,1,2,3},{4,5,6,7}}, dimensions={0}, use_global_device_ids=true, "
      'metadata={op_name="jit(f)/embedding_grad_sync/all_gather"}\n'
      "  %agd = bf16[16,16]{1,0} all-gather-done(%ags)\n"
      "  %ars = f32[8,16]{1,0} all-reduce-start(f32[8,16]{1,0} %p), replica_groups={}, to_apply=%add\n"
      "  %ard = f32[8,16]{1,0} all-reduce-done(%ars)\n"
      "  %cps = (f32[8,16]{1,0}, f32[8,16]{1,0}, u32[], u32[]) collective-permute-start(%p), "
      "channel_id=2, source_target_pairs={{0,4},{4,0}}\n"
      "  %cpd = f32[8,16]{1,0} collective-permute-done(%cps)\n"
      "  %rs = s8[2,16]{1,0} reduce-scatter(s8[8,16]{1,0} %x), replica_groups=[2,4]<=[8], dimensions={0}")
  cs = hlo.collectives(text)
  assert [c.op for c in cs] == ["all-gather", "all-reduce", "collective-permute", "reduce-scatter"]
  assert all(c.is_async for c in cs[:3]) and not cs[3].is_async
  assert [c.bytes for c in cs] == [4 * 16 * 2, 8 * 16 * 4, 8 * 16 * 4, 8 * 16]
  assert cs[1].groups == ALL  # {} = every partition
  assert cs[2].groups == [[0, 4], [4, 0]]
  cl = hlo.classify(cs, 4)
  assert [c["role"] for c in cl] == ["embedding_grad_sync", "dense_sync", "other", "dense_sync"]
  assert [c["scope"] for c in cl] == ["intra_tower", "cross_tower", "cross_tower", "intra_tower"]
  s = hlo.summarize(cl)
  assert s["dense_sync_bytes"] == 8 * 16 * 4 + 8 * 16
  assert s["embedding_cross_tower_bytes"] == 8 * 16 * 4  # the permute (role other)


@pytest.mark.parametrize("shape,expected", [
    ("f32[2,3]{1,0}", 24), ("bf16[4]", 8), ("f16[4]", 8), ("s32[]", 4), ("u32[5]", 20),
    ("s8[7]", 7), ("u8[7]", 7), ("pred[3]", 3), ("f64[2]", 16), ("s64[2]", 16),
    ("(f32[2]{0}, bf16[2]{0}, s32[])", 16), ("f32[<=8,2]", 64), ("token[]", 0),
])
def test_shape_bytes(shape, expected):
  assert hlo.shape_bytes(shape) == expected
