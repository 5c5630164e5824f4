"""abaw: multi-task facial affect analysis (VA, EXPR, AU) for the ABAW challenge.

Heavy frozen backbones run once over the frames and their features are cached in Zarr;
all modelling happens in cheap heads trained from that cache.

Public API (imported lazily: `import abaw` loads neither torch nor pandas):

    abaw.predict_video(path, system="fer", face="track", device="cpu") -> pandas.DataFrame
        per-frame affect of a video, image or folder (or a list of them); `system` is
        "fer" (zero-shot expressions), an exported system's folder, or its URL
    abaw.read_results(path) -> pandas.DataFrame
        a table written by `abaw predict --video` (CSV or Parquet; a folder: its predictions.*)
    abaw.open_system(ref, device="cpu")
        a crop system by name, folder or URL (file://, http(s)://, hf:REPO)
    abaw.export_system(runs_or_composed, out) -> ExportResult
        write a self-contained, shareable system folder (heads as safetensors, manifest)
    abaw.load_system(run_dirs, composed), abaw.predict_test_list(system, store, list, out)
        challenge submissions from run folders or a composed search
    abaw.extract(inputs, store, backbones, config), abaw.load_features(store, keys)
        the feature cache

The command line (`abaw --help`) covers the same ground.
"""

import os as _os

__version__ = "0.1.0"

# PyTorch's OpenMP threads spin while idle; on shared or small machines that costs up to
# 6x on small models (measured in bench/bench_train.py). Sleep instead, unless the user
# chose otherwise. This must happen before torch is imported, so it lives here.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

_API = {
    "predict_video": "abaw.pipeline.predict.anyinput",
    "read_results": "abaw.pipeline.predict.table",
    "open_system": "abaw.pipeline.predict.hub",
    "export_system": "abaw.pipeline.predict.export",
    "load_system": "abaw.pipeline.predict.system",
    "predict_test_list": "abaw.pipeline.predict.system",
    "extract": "abaw.extract.runner",
    "load_features": "abaw.cache.store",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        import importlib

        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'abaw' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_API))
