"""Pieces several tasks share, so that no task imports another: dataset roots and the synthetic-set lock
(``datasets``), the COCO-format reader and synthetic COCO set, image folders, the pixel normalisation,
the classifier head, the necks' parts, and the parity harnesses' comparisons."""
