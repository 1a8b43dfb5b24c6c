"""MAE pretraining (He et al. 2111.06377): masking, the masked autoencoder, data, export, pictures."""
