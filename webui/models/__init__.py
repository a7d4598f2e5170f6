"""The models folder: resolving names, the catalog of variants, per-model saved settings, the Model panel's core."""
