"""ImageNet-1K linear probing (MAE Table 12), with MAE's recipe (LARS, BN head, frozen encoder)."""
