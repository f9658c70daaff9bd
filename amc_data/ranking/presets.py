"""Named sets of training options (`amc-data train --preset NAME`), as data.

A preset sits below the options typed and the `--config` file, above the defaults (see
`config.train_config`). Its options that a run does not use are left out: the paper preset on a
baseline gives the paper's objective, and its attention and gate settings only to a model that
has those parts.

Torch-free, like `config`: the CLI reads the presets before torch loads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..checks import one_of


@dataclass(frozen=True)
class Preset:
    """A named set of `TrainConfig` options, and what it stands for (for `--help`)."""

    summary: str
    options: dict[str, Any] = field(default_factory=dict)


PRESETS: dict[str, Preset] = {
    # The AMC paper's setup: each (query, positive) pair is trained against t sampled negatives
    # with a hinge loss and its margin (t = 8 and margin 0.2, the values this project's reference
    # reproduction uses); the intra-attention's logits are the scaled dot product of guide and
    # key; the inter-attention reads the attended vectors as well as the query, with no learned
    # scale on its logits; no term on the attention's entropy, every query scored with both
    # modalities, no term on the regions beside the ranking loss. Today's defaults differ on
    # each of these (docs/model.md's table says why, with the measurements).
    "paper": Preset(
        "the paper's setup: per-pair hinge loss with t = 8 sampled negatives, margin 0.2, "
        "dot-product attention, a gate that reads the attended vectors",
        {
            "loss": "pairs",
            "negatives": 8,
            "in_batch": False,
            "margin": 0.2,
            "attention": "dot",
            "gate_content": True,
            "gate_scale": 0.0,
            "attention_entropy": 0.0,
            "modality_dropout": 0.0,
            "gate_routing": 0.0,
            "gate_warmup": 0.0,
            "region_target": 0.0,
            "region_mean_hinge": 0.0,
            "keyword_target": 0.0,
        },
    ),
}


def preset_options(name: str) -> dict[str, Any]:
    """The options of the preset `name` (a `ConfigError` naming `preset` lists the presets)."""
    one_of("preset", name, PRESETS)
    return dict(PRESETS[name].options)


def preset_help() -> str:
    """The `--preset` help: every preset with its summary."""
    listed = "; ".join(f"{name}: {preset.summary}" for name, preset in PRESETS.items())
    return f"Start from a named set of options (typed options and --config win): {listed}."
