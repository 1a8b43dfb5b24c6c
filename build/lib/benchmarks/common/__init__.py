"""Pieces several tasks share: the COCO-format reader (detection, the supervised object crops), the
synthetic COCO-format set (detection, pretraining offline) and the pixel normalisation."""
