"""CLIP as a backbone: `--backbone open_clip:ARCH[:PRETRAINED]` runs an open_clip model's vision
tower and writes its last layer's patch tokens as the regions (the field's "CLIP grid
features"), and beside them each image's pooled embedding, for the zero-shot ranker
(`clip_scores`).

The regions are the patch tokens after the tower's final norm (`ln_post`) and its projection
(`proj`), the class token dropped: `(B, g*g, E)` with g = image size / patch size (7 x 7 for
ViT-B/32 at 224) and E the embedding size, the size of the pooled embedding `encode_image`
returns. Images are prepared as open_clip's own evaluation transform prepares them (the
model's size, bicubic resize of the shorter side, centre crop, the model's mean and std), so
the pooled embedding equals `model.encode_image(preprocess(image))`.

open_clip (the `clip` extra) and torch are imported when a model is built, not when this module
is: the rest of the package loads without them. Weights named by PRETRAINED are fetched by
open_clip from its hub at run time; without PRETRAINED the weights are random, drawn from the
seed, so a later `clip-scores` rebuilds the same model.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, DownloadError, InputError, MissingDependencyError
from .sources import CenterCrop

if TYPE_CHECKING:
    import torch
    from torch import nn

PREFIX = "open_clip:"
CLIP_EXTRA = 'pip install "amc-data[clip]"'
DEFAULT_IMAGE_SIZE = 224  # FeatureConfig.image_size's default: left as is, the model decides


def is_open_clip(name: str) -> bool:
    """Whether a `--backbone` value names an open_clip model."""
    return name.startswith(PREFIX)


@dataclass(frozen=True)
class ClipSpec:
    """An open_clip model: its architecture and its pretrained weights' tag (None: random)."""

    arch: str
    pretrained: str | None

    @classmethod
    def parse(cls, name: str) -> ClipSpec:
        """`open_clip:ARCH` or `open_clip:ARCH:PRETRAINED`."""
        parts = name.removeprefix(PREFIX).split(":")
        if len(parts) not in (1, 2) or not all(part.strip() for part in parts):
            raise ConfigError(
                f"backbone {name!r} is not open_clip:ARCH or open_clip:ARCH:PRETRAINED, e.g. "
                "open_clip:ViT-B-32:openai (open_clip.list_pretrained() lists the pairs).",
                parameter="backbone",
            )
        return cls(parts[0], parts[1] if len(parts) == 2 else None)

    @classmethod
    def from_description(cls, description: dict[str, Any]) -> ClipSpec:
        """The model a features report's `backbone` entry describes."""
        pretrained = description.get("pretrained")
        return cls(str(description["arch"]), None if pretrained is None else str(pretrained))


def require_open_clip() -> ModuleType:
    """Import open_clip, or raise `MissingDependencyError` naming the extra that brings it."""
    try:
        return importlib.import_module("open_clip")
    # Not only ImportError: a torchvision built for another torch fails with a RuntimeError
    # ("operator torchvision::nms does not exist") when open_clip imports it.
    except Exception as exc:
        raise MissingDependencyError(
            f"An open_clip backbone needs open_clip, which cannot be imported ({exc}). Install "
            f"it with {CLIP_EXTRA} (it needs the torchvision built for your torch)."
        ) from exc


def create_clip(spec: ClipSpec, seed: int) -> nn.Module:
    """The open_clip model `spec` names, in eval mode on the CPU; random weights are drawn from
    `seed`, the same every call."""
    import torch

    open_clip = require_open_clip()
    if spec.arch not in open_clip.list_models():
        raise ConfigError(
            f"backbone: {spec.arch!r} is not an open_clip architecture. Choose one of "
            "open_clip.list_models(), e.g. ViT-B-32, ViT-B-16, ViT-L-14 (or register a config "
            "with open_clip.add_model_config).",
            parameter="backbone",
        )
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = open_clip.create_model(spec.arch, pretrained=spec.pretrained, device="cpu")
    except RuntimeError as exc:  # an unknown tag, or weights that could not be fetched
        raise DownloadError(
            f"open_clip could not load the {spec.pretrained!r} weights of {spec.arch} ({exc}). "
            "Check the pair in open_clip.list_pretrained() and the network, or leave the tag "
            "out for random weights."
        ) from exc
    return model.eval()


def describe(spec: ClipSpec, seed: int, model: nn.Module) -> dict[str, Any]:
    """The report's `backbone` entry: enough to build the same model again."""
    open_clip = require_open_clip()
    return {
        "kind": "open_clip",
        "name": PREFIX + spec.arch + (f":{spec.pretrained}" if spec.pretrained else ""),
        "arch": spec.arch,
        "pretrained": spec.pretrained,
        "weights": spec.pretrained or f"none (random, seed {seed})",
        "seed": seed,
        "preprocess": _preprocess(model, spec),
        "open_clip": getattr(open_clip, "__version__", "unknown"),
        "torch": sys.modules["torch"].__version__,
    }


def _preprocess(model: nn.Module, spec: ClipSpec) -> dict[str, Any]:
    """open_clip's evaluation transform of `model`, as numbers; refused where the pipeline's
    centre crop cannot reproduce it."""
    config = dict(require_open_clip().get_model_preprocess_cfg(model))
    size = config.get("size")
    side = size[0] if isinstance(size, list | tuple) and len(set(size)) == 1 else size
    interpolation = config.get("interpolation", "bicubic")
    resize_mode = config.get("resize_mode", "shortest")
    if (
        not isinstance(side, int)
        or interpolation not in ("bicubic", "bilinear")
        or resize_mode != "shortest"
        or config.get("mode", "RGB") != "RGB"
    ):
        raise ConfigError(
            f"backbone: {spec.arch} prepares images as {config}; only a square size, bicubic or "
            "bilinear resize of the shorter side, then a centre crop, of RGB images is supported.",
            parameter="backbone",
        )
    return {
        "size": side,
        "interpolation": interpolation,
        "mean": [float(v) for v in config["mean"]],
        "std": [float(v) for v in config["std"]],
    }


class ClipExtractor:
    """Turns a batch of uint8 pixels into CLIP patch tokens and pooled embeddings.

    `extractor.extract(images)`: images `(B, S, S, 3)` uint8 on the CPU -> regions
    `(B, G*G, E)` and pooled embeddings `(B, E)`, float32 on the CPU. G is the token grid
    (image size / patch size) unless `grid` asks for another, to which the token grid is
    average-pooled.
    """

    def __init__(
        self, model: nn.Module, description: dict[str, Any], setup: Any, grid: int
    ) -> None:
        import torch

        visual: Any = getattr(model, "visual", None)
        if type(visual).__name__ != "VisionTransformer" or visual.attn_pool is not None:
            raise ConfigError(
                f"backbone: the vision tower of {description['name']} is "
                f"{type(visual).__name__}; patch tokens are read from open_clip's own "
                "VisionTransformer (ViT-* models without attentional pooling) only.",
                parameter="backbone",
            )
        visual.output_tokens = True  # forward() returns (pooled, tokens); this model is ours
        self.visual = visual.to(setup.device)
        self.setup = setup
        self.grid = grid
        self.name = description["name"]
        preprocess = description["preprocess"]
        self.size = int(preprocess["size"])
        self.interpolation = preprocess["interpolation"]
        shape = (1, 3, 1, 1)
        self._mean = torch.tensor(preprocess["mean"], device=setup.device).view(shape)
        self._std = torch.tensor(preprocess["std"], device=setup.device).view(shape)
        self.token_grid = self.size // int(visual.patch_size[0])
        self.pooled_dim = int(visual.proj.shape[1]) if visual.proj is not None else 0

    def crop(self, image_size: int, resize: int | None) -> CenterCrop:
        """The model's own geometry; `image_size` (other than the default) and `resize` must
        agree with it."""
        if image_size not in (DEFAULT_IMAGE_SIZE, self.size) or resize not in (None, self.size):
            raise ConfigError(
                f"image_size: {self.name} sees {self.size} x {self.size} images, its shorter "
                f"side resized to {self.size}; leave --image-size and --resize out (found "
                f"{image_size} and {resize}).",
                parameter="image_size",
            )
        return CenterCrop(self.size, self.size, resample=self.interpolation, draft=False)

    def extract(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        import torch
        import torch.nn.functional as F

        setup = self.setup
        pixels = images.to(setup.device, non_blocking=True)  # (B, S, S, 3) uint8
        # As open_clip's ToTensor and Normalize: divide by 255, then subtract and divide.
        x = pixels.permute(0, 3, 1, 2).contiguous().float().div(255)
        x = (x - self._mean) / self._std
        with torch.inference_mode(), setup.autocast():
            pooled, tokens = self.visual(x)  # (B, E), (B, g*g, width) after ln_post
            regions = tokens @ self.visual.proj  # (B, g*g, E)
        regions, pooled = regions.float(), pooled.float()
        if regions.shape[1] != self.token_grid**2:
            raise InputError(
                f"{self.name} gave {regions.shape[1]} patch tokens for {self.size} x {self.size} "
                f"images; expected {self.token_grid}^2."
            )
        if self.grid != self.token_grid:
            g = self.token_grid
            square = regions.transpose(1, 2).reshape(len(regions), -1, g, g)  # (B, E, g, g)
            pooled_grid = F.adaptive_avg_pool2d(square, self.grid)
            regions = pooled_grid.flatten(2).transpose(1, 2)  # (B, G*G, E)
        return regions.cpu(), pooled.cpu()

    def feature_dim(self, size: int) -> int:
        """E, the size of a region (and of the pooled embedding)."""
        return self.pooled_dim


def load_clip_backbone(
    name: str, seed: int, setup: Any, grid: int
) -> tuple[ClipExtractor, dict[str, Any]]:
    """The extractor of `open_clip:ARCH[:PRETRAINED]` and its report entry; `setup` is a
    `backbone.DeviceSetup` (not imported here: backbone imports this module)."""
    spec = ClipSpec.parse(name)
    model = create_clip(spec, seed)
    description = describe(spec, seed, model)
    extractor = ClipExtractor(model, description, setup, grid)
    if not extractor.pooled_dim:
        raise ConfigError(
            f"backbone: {name} has no image projection; its tokens are not in the embedding "
            "space of the text tower.",
            parameter="backbone",
        )
    return extractor, description
