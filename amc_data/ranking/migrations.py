"""Checkpoint formats, and the chain that brings an older checkpoint up to today's.

Every checkpoint records its `format_version`. `migrate` applies one step per version, in order,
so the model code and the resume rules only ever see today's format; a new format is one
`_STEPS` entry and one more `FORMAT_VERSION`.

- Format 1 (every amc-data before format 2): checkpoints differ by the options and weights
  they lack, as written before each existed. Step 1 -> 2 fills the model options with what
  such runs built (dot-product attention, its scale learned at the pace of the other weights,
  an unscaled gate that reads the attended vectors; the other options with the values a missing
  one always meant), the training option `loss` with the per-pair loss they trained with, and
  folds the affine region norm of amc-data 0.1 into the projections that read it.
- Format 2: every model option recorded; no region norm weights. Step 2 -> 3 records that its
  region attention shares the keyword attention's scale.
- Format 3: the region attention's own scale (`region_attention_scale_rate`).

Torch-free: the step's tensor arithmetic is the tensors' own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..errors import CheckpointError

FORMAT_VERSION = 3  # what this amc-data writes, and the newest it reads

# Training options added after runs were first recorded, with the value those older runs behaved
# as where it is not today's default: runs written before the pool loss trained with per-pair
# negatives. Format 1 -> 2 fills them in; a resume reads a record that lacks one the same way.
# The options added since whose default is what older runs did are not listed: `attention`,
# `gate_content` and `gate_scale` (None: the model the checkpoint records, which is how runs
# recorded before they were training options were built), `init_from` (None: from scratch),
# `tensorboard` (None: no events) and `gain` (exp).
# Runs recorded before the attention entropy term existed trained without it, and those recorded
# with it before its floor existed pulled every row toward 0; runs recorded before modality
# dropout existed scored every query with both modalities, those recorded with it before
# modality_dropout_keep existed kept the modality the gate favours, those recorded before
# pool_reduction existed averaged the pool loss over every negative, and those recorded before
# gate_routing existed taught the gate by the ranking loss alone, and those recorded before the
# region terms (and the keyword target) existed trained the attention by the ranking loss alone,
# and those recorded before region_mean_hinge_end existed kept the mean value's hinge at one
# weight throughout.
ADDED_LATER: dict[str, Any] = {
    "loss": "pairs",
    "attention_entropy": 0.0,
    "attention_entropy_floor": 0.0,
    "modality_dropout": 0.0,
    "modality_dropout_keep": "favoured",
    "pool_reduction": "all",
    "gate_routing": 0.0,
    "region_target": 0.0,
    "region_mean_hinge": 0.0,
    "keyword_target": 0.0,
    "region_terms_warmup": 0.0,
    "gate_warmup": 0.0,
    "region_mean_hinge_end": 1.0,
}


# The model options a format 1 checkpoint may lack, with the value the model it was written
# for had. The first four were added after runs were recorded, with defaults that differ from
# what those runs did; the others have always meant these values when missing.
_FORMAT_1_MODEL_OPTIONS: dict[str, Any] = {
    "attention": "dot",
    "attention_scale_rate": 1.0,
    "gate_scale": 0.0,
    "gate_content": True,
    "kind": "amc",
    "dim": 64,
    "word_dim": None,
    "intra": True,
    "inter": True,
    "dropout": 0.1,
    "attention_scale": 1.0,
    "cca_reg": 0.1,
}


def _format_1_to_2(checkpoint: dict[str, Any]) -> dict[str, Any]:
    model_config = checkpoint.get("model_config")
    if isinstance(model_config, Mapping):
        checkpoint["model_config"] = {**_FORMAT_1_MODEL_OPTIONS, **model_config}
    train_config = checkpoint.get("train_config")
    if isinstance(train_config, Mapping):
        checkpoint["train_config"] = {**ADDED_LATER, **train_config}
    state = checkpoint.get("model")
    if isinstance(state, Mapping):
        checkpoint["model"] = _fold_region_norm(dict(state))
    return checkpoint


def _fold_region_norm(state: dict[str, Any]) -> dict[str, Any]:
    """amc-data 0.1's region norm was affine: fold its scale g and shift b into the projections
    that read it, W (g x + b) + c = (W g) x + (W b + c), exactly; today's norm has no weights."""
    scale = state.pop("region_norm.weight", None)
    shift = state.pop("region_norm.bias", None)
    if scale is not None and shift is not None:
        for name in ("region_value", "region_key"):
            weight, bias = f"{name}.weight", f"{name}.bias"
            if weight in state and bias in state:
                w = state[weight]
                state[bias] = state[bias] + w @ shift
                state[weight] = w * scale
    return state


def _format_2_to_3(checkpoint: dict[str, Any]) -> dict[str, Any]:
    model_config = checkpoint.get("model_config")
    if isinstance(model_config, Mapping):
        checkpoint["model_config"] = {"region_attention_scale_rate": 0.0, **model_config}
    return checkpoint


# _STEPS[v] turns a format v checkpoint into a format v + 1 one.
_STEPS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {
    1: _format_1_to_2,
    2: _format_2_to_3,
}


def migrate(checkpoint: Mapping[str, Any], where: str = "The checkpoint") -> dict[str, Any]:
    """`checkpoint` brought up to `FORMAT_VERSION`, step by step (a new dict; the one given is
    left as it is). A version newer than this amc-data reads, or one no amc-data wrote, is a
    `CheckpointError`; `where` names the checkpoint in it."""
    version = checkpoint.get("format_version")
    if type(version) is not int or version < 1:
        raise CheckpointError(
            f"{where} has checkpoint format {version!r}, which no amc-data writes; it was not "
            "loaded. Use a checkpoint written by amc-data train."
        )
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{where} was written by a newer amc-data; upgrade amc-data to read it (it has "
            f"checkpoint format {version}, this amc-data reads formats up to {FORMAT_VERSION})."
        )
    migrated = dict(checkpoint)
    while version < FORMAT_VERSION:
        migrated = _STEPS[version](migrated)
        version += 1
        migrated["format_version"] = version
    return migrated
