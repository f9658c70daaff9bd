"""Stage 5, features: grid features of images for the prepared datasets (`amc-data features`).

`extract_features` reads a folder of images (COCO) or a TSV of base64 images (Clickture), runs a
torchvision trunk or a TorchScript backbone over them and writes `(N, G*G, D)` features with their
img_ids, resumably. Importing this package does not import torch; calling it does.
"""

from __future__ import annotations

from .core import FeatureConfig, FeatureResult, extract_features
from .sources import SkippedImage

__all__ = ["FeatureConfig", "FeatureResult", "SkippedImage", "extract_features"]
