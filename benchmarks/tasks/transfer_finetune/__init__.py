"""Classification transfer (MAE Table 6): fine-tuning on iNaturalist 2017 / 2018 / 2019 and Places205 / 365."""
