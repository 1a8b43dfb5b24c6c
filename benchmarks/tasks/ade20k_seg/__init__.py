"""ADE20K semantic segmentation with UperNet (the BEiT / MAE recipe of mmsegmentation)."""
