"""FasterNet detectors on torchvision (needs the ``detection`` extra: torchvision, pycocotools).

Importing this package imports torchvision; the rest of fasternet never does.
"""

from fasternet.detection.io import load_detector, save_detector
from fasternet.detection.models import create_detector, load_mmdet

__all__ = ["create_detector", "load_detector", "load_mmdet", "save_detector"]
