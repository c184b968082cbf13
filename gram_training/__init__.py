"""Companion code of the GRAM Hub package: pretraining (scene pipeline, data sources, HF Trainer entry point),
offline spatial data simulation and the end-to-end demo. Not needed to *use* a GRAM checkpoint."""
