"""k-NN classification on frozen features (DINO's weighted 20-NN), ImageNet or a transfer dataset."""
