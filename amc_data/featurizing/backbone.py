"""The backbone: a torchvision trunk, a TorchScript file or an exported program (torch.export),
run on a device and pooled to a grid; or an open_clip vision tower (`clip`).

Imported only once torch is known to be installed (`deps.require_torch`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..archive.folder import read_regular_file
from ..errors import ConfigError, DownloadError, InputError
from .clip import ClipExtractor, is_open_clip, load_clip_backbone
from .deps import require_torchvision
from .sources import CenterCrop

log = logging.getLogger(__name__)

# ImageNet statistics: what every torchvision classifier (and most backbones) was trained with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MAX_MODEL_BYTES = 16 << 30  # a backbone file; the largest torchvision trunks are under 2 GB


@dataclass(frozen=True)
class DeviceSetup:
    """Where and how the backbone runs."""

    device: torch.device
    precision: str  # "bf16" (autocast) or "fp32"
    channels_last: bool

    @classmethod
    def resolve(cls, device: str, precision: str) -> DeviceSetup:
        """`auto` picks CUDA when present; on CUDA, `auto` precision is bf16 autocast where the
        GPU supports it, and inputs and weights are channels-last (faster convolutions)."""
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            chosen = torch.device(device)
        except RuntimeError as exc:
            raise ConfigError(f"--device {device!r} is not a device torch knows ({exc}).") from None
        if chosen.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(
                f"--device {device} was asked for, but this torch ({torch.__version__}) sees no "
                "CUDA GPU. Use --device cpu, or install a CUDA build of torch."
            )
        cuda = chosen.type == "cuda"
        if precision == "auto":
            precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
        return cls(device=chosen, precision=precision, channels_last=cuda)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


class GridExtractor:
    """Turns a batch of uint8 pixels into pooled grid features.

    `extractor(images)`: images `(B, H, W, 3)` uint8 on the CPU -> `(B, G*G, D)` float32 on the
    CPU, row-major over the grid (cell `i * G + j` is row i, column j).
    """

    def __init__(self, module: nn.Module, setup: DeviceSetup, grid: int, name: str) -> None:
        memory_format = torch.channels_last if setup.channels_last else torch.preserve_format
        # nn.Module.to takes memory_format (its type stubs do not say so).
        self.module = module.to(setup.device, memory_format=memory_format)  # type: ignore[call-overload]
        self.setup = setup
        self.grid = grid
        self.name = name
        shape = (1, 3, 1, 1)
        self._mean = torch.tensor(IMAGENET_MEAN, device=setup.device).view(shape) * 255
        self._std = torch.tensor(IMAGENET_STD, device=setup.device).view(shape) * 255

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        setup = self.setup
        pixels = images.to(setup.device, non_blocking=True)  # (B, H, W, 3) uint8
        x = pixels.permute(0, 3, 1, 2).float()  # (B, 3, H, W), channels-last strides
        x = (x - self._mean) / self._std  # ImageNet normalisation of 0..255 values
        if not setup.channels_last:
            x = x.contiguous()
        with torch.inference_mode(), setup.autocast():
            feature_map = self.module(x)  # (B, D, h, w)
        self._check(feature_map, len(images))
        grid = F.adaptive_avg_pool2d(feature_map.float(), self.grid)  # (B, D, G, G)
        return grid.flatten(2).transpose(1, 2).cpu()  # (B, G*G, D)

    def extract(self, images: torch.Tensor) -> tuple[torch.Tensor, None]:
        """The regions of `images`; a CNN trunk has no pooled embedding to write beside them."""
        return self(images), None

    def crop(self, image_size: int, resize: int | None) -> CenterCrop:
        """ImageNet's evaluation transform: the shorter side to `resize` (default image size /
        0.875), bilinear, then the centre `image_size` square."""
        return CenterCrop(image_size, resize if resize is not None else round(image_size / 0.875))

    pooled_dim = 0  # no pooled embedding

    def feature_dim(self, size: int) -> int:
        """D, found by running one blank image of `size` x `size` through the backbone."""
        probe = torch.zeros((1, size, size, 3), dtype=torch.uint8)
        return int(self(probe).shape[-1])

    def _check(self, output: object, batch: int) -> None:
        if not isinstance(output, torch.Tensor) or output.dim() != 4 or output.shape[0] != batch:
            found = (
                tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
            )
            raise InputError(
                f"The backbone {self.name} returned {found} for a batch of {batch} images; "
                f"expected a feature map (B, D, h, w) = ({batch}, D, h, w). A model file "
                "must hold the convolutional trunk only (no pooling, no classifier)."
            )


def load_backbone(
    *, name: str, model_file: Path | None, weights: str, seed: int, setup: DeviceSetup, grid: int
) -> tuple[GridExtractor | ClipExtractor, dict[str, Any]]:
    """The extractor and a description of what it is (recorded in the report and fingerprinted:
    a resumed run must use the same network)."""
    if model_file is None and is_open_clip(name):
        if weights != "default":
            raise ConfigError(
                f"weights: {name} takes its weights from the name (open_clip:ARCH:PRETRAINED; "
                "open_clip:ARCH alone is random weights); leave --weights out.",
                parameter="weights",
            )
        return load_clip_backbone(name, seed, setup, grid)
    if model_file is not None:
        module, description = _model_file(model_file)
    else:
        module, description = _torchvision(name, weights, seed)
    return GridExtractor(module, setup, grid, description["name"]), description


def _model_file(path: Path) -> tuple[nn.Module, dict[str, str]]:
    """A TorchScript file (torch.jit.save), or an exported program (torch.export.save, `.pt2`)
    whose batch and image dimensions were exported as dynamic."""
    # A regular file only: a FIFO given as --model-file would block the read forever.
    content = read_regular_file(path, MAX_MODEL_BYTES, InputError, "model file")
    sha256 = hashlib.sha256(content).hexdigest()
    if path.suffix == ".pt2":
        try:
            # An exported program is traced in the mode it was exported in; it has no eval().
            module = torch.export.load(str(path)).module()
        except Exception as exc:  # torch.export raises RuntimeError, KeyError, and more
            first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise InputError(
                f"{path} is not a program saved with torch.export.save ({first_line})."
            ) from exc
        return module, {"kind": "exported", "name": str(path), "sha256": sha256}
    try:
        with warnings.catch_warnings():
            # torch 2.13 deprecates TorchScript in favour of torch.export; both are accepted.
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError) as exc:
        raise InputError(
            f"{path} is not a TorchScript file ({str(exc).splitlines()[0]}). Save the backbone "
            "with torch.jit.save(torch.jit.script(model), path), or with torch.export.save as a "
            ".pt2 file; a state dict saved with torch.save is not enough."
        ) from exc
    return module.eval(), {"kind": "torchscript", "name": str(path), "sha256": sha256}


def _torchvision(name: str, weights: str, seed: int) -> tuple[nn.Module, dict[str, str]]:
    models = require_torchvision()
    if name not in models.list_models(module=models):
        raise ConfigError(
            f"--backbone {name!r} is not a torchvision classification model. Choose one of "
            f"torchvision.models.list_models(), e.g. resnet50, resnet152, resnext101_32x8d, "
            "efficientnet_b3, convnext_base, or an open_clip model (open_clip:ARCH[:PRETRAINED],"
            " e.g. open_clip:ViT-B-32:openai), or pass --model-file."
        )
    chosen = models.get_model_weights(name).DEFAULT if weights == "default" else None
    try:
        # Random weights (--weights none) are drawn from `seed`, so they are the same every run.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = models.get_model(name, weights=chosen)
    except (OSError, RuntimeError) as exc:
        raise DownloadError(
            f"The {chosen} weights of {name} are not in torch's cache "
            f"({torch.hub.get_dir()}/checkpoints) and could not be downloaded ({exc}). Put "
            f"{getattr(chosen, 'url', 'the weights file').rsplit('/', 1)[-1]} there, or pass "
            "--weights none for random weights."
        ) from exc
    description = {
        "kind": "torchvision",
        "name": name,
        "weights": str(chosen) if chosen is not None else f"none (random, seed {seed})",
        "torchvision": getattr(sys.modules.get("torchvision"), "__version__", "unknown"),
    }
    return _trunk(model, name).eval(), description


def _trunk(model: nn.Module, name: str) -> nn.Module:
    """The convolutional part of a torchvision classifier: everything before global pooling."""
    children = dict(model.named_children())
    if "avgpool" in children and "fc" in children:  # ResNet, ResNeXt, Wide ResNet, RegNet
        return nn.Sequential(*(m for n, m in children.items() if n not in ("avgpool", "fc")))
    features = children.get("features")  # VGG, DenseNet, MobileNet, EfficientNet, ConvNeXt
    if isinstance(features, nn.Module):
        # DenseNet applies its last ReLU in forward(), outside `features`.
        return nn.Sequential(features, nn.ReLU()) if name.startswith("densenet") else features
    raise ConfigError(
        f"--backbone {name}: cannot find its convolutional trunk (no `features`, nor `avgpool` "
        "and `fc`). Use a ResNet, ResNeXt, RegNet, VGG, DenseNet, MobileNet, EfficientNet or "
        "ConvNeXt, or save the trunk you want (TorchScript or torch.export) and pass --model-file."
    )
