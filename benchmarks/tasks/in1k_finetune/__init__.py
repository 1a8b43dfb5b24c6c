"""ImageNet-1K fine-tuning (MAE Table 3) and partial fine-tuning (MAE Fig. 9), with MAE's recipe."""
