"""COCO detection and instance segmentation with Mask R-CNN (ViTDet and Li et al. protocols)."""
