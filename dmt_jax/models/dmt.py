"""Over-arch and tower-module construction for flat and DMT variants of DLRM and DCN-v2.

The over-arch is the unchanged base model: it receives pooled embeddings ``[B, F', D]``. For the flat
model (and DMT with identity towers) F' = F in the flat feature order. For DMT with compressing tower
modules F' = T*K: each tower contributes K vectors of width D (DLRM: they join the global dot
interaction with the bottom-MLP output; DCN-v2: they are flattened into the cross network's input).
"""

from __future__ import annotations

import flax.linen as nn

from dmt_jax import tower_modules
from dmt_jax.models.dcn import DCNv2
from dmt_jax.models.dlrm import DLRM

MODELS = ("dlrm", "dcn")


def over_arch(model_cfg, dim: int) -> nn.Module:
  """The data-parallel part of the model (bottom MLP / interaction / top MLP, or cross + deep)."""
  name = model_cfg.name
  if name == "dlrm":
    bottom = tuple(model_cfg.bottom_mlp)
    if bottom[-1] != dim:
      raise ValueError(f"config.model.bottom_mlp must end in the embedding dim {dim}, got {bottom}")
    return DLRM(bottom_mlp=bottom, top_mlp=tuple(model_cfg.top_mlp))
  if name == "dcn":
    low_rank = model_cfg.low_rank if model_cfg.low_rank and model_cfg.low_rank > 0 else None
    return DCNv2(num_cross_layers=int(model_cfg.num_cross_layers), low_rank=low_rank,
                 deep_mlp=tuple(model_cfg.deep_mlp))
  raise ValueError(f"config.model.name must be one of {MODELS}, got {name!r}")


def tower_module(tower_cfg, features_per_tower: int, dim: int):
  """(module or None for identity, K output vectors per tower)."""
  kind = tower_cfg.module
  k = tower_modules.tower_output_vectors(kind, features_per_tower, float(tower_cfg.compression))
  if kind == "identity":
    return None, k
  mod = tower_modules.make_tower_module(kind, features_per_tower, dim, float(tower_cfg.compression),
                                        hidden=tuple(tower_cfg.hidden),
                                        num_cross_layers=int(tower_cfg.num_cross_layers))
  return mod, k
