"""Supervised classification pretraining of a ViT (the "supervised" row of the CPU miniature)."""
