"""`abaw train-heads`: joint training of fusion + temporal module + task heads from the cache.

    config.py       TrainConfig (recorded settings; the head architecture is a nested ModelSpec)
    dataset.py      labels aligned with cached features, segments, windows, batches
    outputs.py      per-frame outputs, ensembles, decisions and scoring
    postprocess.py  smoothing and per-AU thresholds fitted on validation
    run.py          run folders: checkpoints, loading a finished run, per-frame prediction
    init.py         initialisation from earlier runs, feature statistics
    loop.py         `train`: the training loop
"""

from abaw.pipeline.train.config import TrainConfig
from abaw.pipeline.train.loop import train
from abaw.pipeline.train.run import Run, load_run, read_config

__all__ = ["Run", "TrainConfig", "load_run", "read_config", "train"]
