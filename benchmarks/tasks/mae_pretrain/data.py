"""MAE's pretraining views: RandomResizedCrop(scale 0.2–1, bicubic) and a horizontal flip, nothing else;
and the held-out view (resize and center crop). The images come from ``common/image_folder.py``: an
ImageNet-style folder (labels ignored), any folder of images, or the synthetic COCO-format images of the
``coco_det`` task (the offline default)."""

from __future__ import annotations

from torchvision.transforms import v2


def pretrain_transform(size: int, scale: tuple[float, float], hflip: bool) -> v2.Compose:
    crop = v2.RandomResizedCrop(size, scale=tuple(scale), interpolation=v2.InterpolationMode.BICUBIC, antialias=True)
    return v2.Compose([crop, v2.RandomHorizontalFlip(0.5 if hflip else 0.0)])


def eval_transform(size: int) -> v2.Compose:
    """Resize the short side to size / 0.875, then center crop: the usual ImageNet evaluation view."""
    return v2.Compose(
        [v2.Resize(int(size / 0.875), interpolation=v2.InterpolationMode.BICUBIC, antialias=True), v2.CenterCrop(size)]
    )
