"""abaw: multi-task facial affect analysis (VA, EXPR, AU) for the ABAW challenge.

Heavy frozen backbones run once over the frames and their features are cached in Zarr;
all modelling happens in cheap heads trained from that cache.
"""

__version__ = "0.1.0"
