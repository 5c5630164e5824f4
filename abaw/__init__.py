"""abaw: multi-task facial affect analysis (VA, EXPR, AU) for the ABAW challenge.

Heavy frozen backbones run once over the frames and their features are cached in Zarr;
all modelling happens in cheap heads trained from that cache.
"""

import os as _os

__version__ = "0.1.0"

# PyTorch's OpenMP threads spin while idle; on shared or small machines that costs up to
# 6x on small models (measured in bench/bench_train.py). Sleep instead, unless the user
# chose otherwise. This must happen before torch is imported, so it lives here.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
