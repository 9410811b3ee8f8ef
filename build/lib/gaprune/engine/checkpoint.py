"""Checkpoints as state_dict + metadata, loaded with weights_only=True.

A pruned model is stored as state_dict + plan and rebuilt (baseline architecture -> physical
pruning by the plan -> load weights), never unpickled as a module. A weight-masked (unstructured)
model is stored as its dense state_dict with the masked weights at zero plus the SparsePlan JSON
under "sparse_plan"; it is rebuilt dense, loaded, and its masks re-applied. Every checkpoint
carries a sha256 of its tensors and values (`gaprune.utils.io.with_digest`), checked at load: a
file whose bytes changed after it was written is refused in one line.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from gaprune.models import build_model
from gaprune.pruning.masking import apply_masks_permanently
from gaprune.pruning.physical import prune_model
from gaprune.pruning.plan import Plan, SparsePlan
from gaprune.pruning.units import discover_units
from gaprune.utils.errors import GapruneError
from gaprune.utils.io import atomic_torch_save, check_digest, read_torch_file, with_digest

BASELINE = "gaprune-baseline"
PRUNED = "gaprune-pruned"
SPARSE = "gaprune-sparse"


def model_from_meta(meta: dict[str, Any]) -> nn.Module:
    spec, data = meta["model"], meta["data"]
    return build_model(spec["name"], data["num_classes"], data["in_channels"], data["image_size"], **dict(spec.get("kwargs") or {}))


def example_input(meta: dict[str, Any]) -> torch.Tensor:
    data = meta["data"]
    return torch.zeros(1, data["in_channels"], data["image_size"], data["image_size"])


def save_checkpoint(path: str | Path, model: nn.Module, meta: dict[str, Any], plan: Any = None) -> None:
    """`plan`: None (baseline), a channel `Plan` (physically pruned model) or a `SparsePlan`
    (dense model whose masked weights are zero)."""
    sparse = isinstance(plan, SparsePlan)
    payload = {
        "format": SPARSE if sparse else PRUNED if plan is not None else BASELINE,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "meta": meta,
    }
    if plan is not None:
        payload["sparse_plan" if sparse else "plan"] = plan.to_json()
    atomic_torch_save(with_digest(payload), path)


def read_checkpoint(path: str | Path, hint: str = "") -> dict[str, Any]:
    """Load and validate a gaprune checkpoint file (`read_torch_file`: no code is ever unpickled)."""
    fix = hint or "re-create it with gaprune (train.py for a baseline; a new search / finetune.py run for a pruned model)"
    payload = read_torch_file(path, "checkpoint", fix)
    if not isinstance(payload, dict) or payload.get("format") not in (BASELINE, PRUNED, SPARSE) or "state_dict" not in payload:
        held = " (it holds a training state, not a model)" if isinstance(payload, dict) and "optimizer" in payload else ""
        raise GapruneError(f"'{path}' is not a gaprune checkpoint (no format/state_dict){held}; re-create it with train.py")
    check_digest(payload, path, "checkpoint", fix)
    return payload


def load_model(path: str | Path, expect_model: str | None = None, hint: str = "") -> tuple[nn.Module, dict[str, Any], Any]:
    """Rebuild a baseline, pruned or weight-masked model from its checkpoint; returns
    (model, meta, plan) with plan None, a `Plan` or a `SparsePlan`."""
    payload = read_checkpoint(path, hint)
    meta = payload["meta"]
    if expect_model is not None and meta["model"]["name"] != expect_model:
        raise GapruneError(
            f"checkpoint '{path}' holds a {meta['model']['name']} but model={expect_model} was asked for; "
            "point at the right checkpoint or change model="
        )
    model = model_from_meta(meta)
    plan = None
    if payload["format"] == PRUNED:
        plan = Plan.from_json(payload["plan"])
        units = discover_units(model, example_input(meta), include_linear=meta["model"].get("include_linear", False))
        model = prune_model(model, units, plan, example_input(meta))
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as err:
        raise GapruneError(f"checkpoint '{path}' does not fit model {meta['model']['name']}: {str(err).splitlines()[0]}") from None
    if payload["format"] == SPARSE:
        plan = SparsePlan.from_json(payload.get("sparse_plan") or {})
        for name, mask in plan.masks.items():
            try:
                weight = model.get_submodule(name).weight
            except AttributeError:
                raise GapruneError(f"checkpoint '{path}': its sparse plan names layer '{name}', which "
                                   f"{meta['model']['name']} does not have") from None
            if tuple(weight.shape) != tuple(mask.shape):
                raise GapruneError(f"checkpoint '{path}': mask of layer '{name}' has shape {tuple(mask.shape)} but "
                                   f"the weight has {tuple(weight.shape)}")
        apply_masks_permanently(model, plan.masks)
    return model.eval(), meta, plan
