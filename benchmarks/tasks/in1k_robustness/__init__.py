"""Robustness of an IN-1K fine-tuned model (MAE Table 13): ImageNet-A / -R / -Sketch / -C, no training."""
