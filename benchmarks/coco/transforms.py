"""Large-scale jitter (LSJ) for training, as ViTDet's ``coco_loader_lsj``.

Flip, scale the image so it fits a random fraction (0.1-2.0) of the square canvas, crop a random
canvas-sized window (no padding here: the model pads the batch to the canvas after
normalisation), then recompute each box from its cropped mask and drop instances the crop
emptied. Test images need no transform here: the model resizes the longest side to the canvas.
"""

from __future__ import annotations

import torch
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
