"""Large-scale jitter (LSJ) for training, as ViTDet's ``coco_loader_lsj``.

Flip, scale the image so it fits a random fraction (0.1-2.0) of the square canvas, crop a random
canvas-sized window (no padding here: the model pads the batch to the canvas after
normalisation), then recompute each box from its cropped mask and drop instances the crop
emptied. Test images are resized so they fit the canvas (``resize_shortest_edge``), here rather than
in the model, as detectron2's test mapper does.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import tv_tensors
from torchvision.ops import masks_to_boxes
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF


class RandomCropNoPad(v2.Transform):
    """Crop a random window of at most ``size`` × ``size`` (detectron2's FixedSizeCrop with pad=False)."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def make_params(self, flat_inputs):
        height, width = v2.query_size(flat_inputs)
        h, w = min(self.size, height), min(self.size, width)
        top = int(torch.randint(0, height - h + 1, ()).item())
        left = int(torch.randint(0, width - w + 1, ()).item())
        return {"top": top, "left": left, "height": h, "width": w}

    def transform(self, inpt, params):
        return self._call_kernel(TF.crop, inpt, **params)


class BoxesFromMasks(v2.Transform):
    """Tight boxes around the (cropped) masks; instances whose mask is empty are removed."""

    def forward(self, image, target):
        masks = target["masks"]
        keep = masks.flatten(1).amax(dim=1) > 0
        masks = masks[keep]
        boxes = masks_to_boxes(masks) if len(masks) else torch.zeros(0, 4)
        # masks_to_boxes gives inclusive pixel indices; COCO boxes cover whole pixels.
        boxes[:, 2:] += 1
        target = dict(target)
        target["masks"] = tv_tensors.Mask(masks)
        target["boxes"] = tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=tuple(masks.shape[-2:]))
        target["labels"] = target["labels"][keep]
        return image, target


def lsj(canvas: int, scale_range: tuple[float, float]) -> v2.Compose:
    """The LSJ training pipeline: uint8 image + target dict in, same out."""
    return v2.Compose(
        [
            v2.RandomHorizontalFlip(0.5),
            v2.ScaleJitter((canvas, canvas), scale_range=tuple(scale_range), antialias=True),
            RandomCropNoPad(canvas),
            BoxesFromMasks(),
        ]
    )


def shortest_edge_size(height: int, width: int, size: int, max_size: int) -> tuple[int, int]:
    """detectron2's ResizeShortestEdge output size: short side to ``size``, long side at most ``max_size``, rounded."""
    scale = size / min(height, width)
    new_h, new_w = (size, scale * width) if height < width else (scale * height, size)
    if max(new_h, new_w) > max_size:
        scale = max_size / max(new_h, new_w)
        new_h, new_w = new_h * scale, new_w * scale
    return int(new_h + 0.5), int(new_w + 0.5)


def resize_like_detectron2(image: torch.Tensor, size: int, max_size: int) -> torch.Tensor:
    """The test-time resize of ViTDet's test mapper: the uint8 image [3, H, W] through PIL's bilinear resize
    (antialiased when shrinking) at the rounded size -> uint8 [3, h, w]."""
    height, width = image.shape[-2:]
    h, w = shortest_edge_size(height, width, size, max_size)
    if (h, w) == (height, width):
        return image
    pil = Image.fromarray(image.permute(1, 2, 0).numpy()).resize((w, h), Image.BILINEAR)
    return torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1)


def resize_like_torchvision(image: torch.Tensor, size: int, max_size: int) -> torch.Tensor:
    """What torchvision's ``GeneralizedRCNNTransform`` does: float bilinear interpolation at the floored size
    -> float [3, h, w] in 0-255 (``test.resize: torchvision``, kept for comparison)."""
    height, width = image.shape[-2:]
    scale = min(size / min(height, width), max_size / max(height, width))
    return F.interpolate(
        image[None].float(), scale_factor=scale, mode="bilinear", recompute_scale_factor=True, align_corners=False
    )[0]


TEST_RESIZE = {"detectron2": resize_like_detectron2, "torchvision": resize_like_torchvision}
