"""The Zarr feature cache: layout, atomic writing, loading into RAM."""

from abaw.cache.store import FeatureStore, FeatureTable, VideoIndex, load_features

__all__ = ["FeatureStore", "FeatureTable", "VideoIndex", "load_features"]
