"""Frozen backbones over videos and frame folders -> the Zarr feature cache."""
