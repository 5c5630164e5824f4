"""The README's real-data workflow runs as written, on a small synthetic s-Aff-Wild2.

The test takes the bash block under "The workflow on real Aff-Wild2 data" and its
`space.yaml` from README.md itself and runs them with bash, changing only what a CPU test
cannot have: the data folder, the ViT-B backbone (a tiny timm ViT with generated start
weights in the file the README names), the fine-tuning length, the heads' minimum number
of optimizer steps (1000 by default) and a search budget of one config. Each
change must still find its text in the README, so an edit there that the test no longer
covers fails here instead of going unnoticed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from abaw.data.synth import SynthConfig, generate

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
HEADING = "## The workflow on real Aff-Wild2 data"

# (as the README writes it, what the test runs instead)
CHANGES = [
    ("DATA=/data/s-aff-wild2", "DATA={data}"),
    ("--backbone timm:vit_base_patch16_224 --weights", "--backbone 'timm:test_vit?pretrained=0&size=64' --weights"),
    ("--epochs 10 --batch-size 64", "--epochs 1 --batch-size 16"),
    ("abaw train-heads --cache", "abaw train-heads --min-steps 60 --cache"),
    ("--folds 5 --compose best-per-task --jobs 1",
     "--folds 5 --compose best-per-task --jobs 1 --budget 1 --set min_steps=60"),
]


def workflow_blocks(readme: str) -> tuple[str, str]:
    """The bash block under the workflow heading and the `space.yaml` after it."""
    part = readme.split(HEADING, 1)[1]
    bash = re.search(r"```bash\n(.*?)```", part, re.S)
    yaml = re.search(r"this `space.yaml`:\s*```yaml\n(.*?)```", part, re.S)
    assert bash and yaml, "README: the workflow section lost its bash block or its space.yaml"
    return bash.group(1), yaml.group(1)


def test_real_data_workflow_runs_as_written(tmp_path):
    import timm
    import torch

    script, space = workflow_blocks((ROOT / "README.md").read_text())
    data = tmp_path / "s-aff-wild2"
    generate(data, SynthConfig(seed=3, train_videos=7, val_videos=4, test_videos=3, min_frames=20,
                               max_frames=60, videos=False), jobs=1, progress=False)
    for written, instead in CHANGES:
        assert written in script, f"README workflow no longer has {written!r}: update tests/test_readme.py"
        script = script.replace(written, instead.format(data=data))
    weights = re.search(r"--weights (\S+)", script).group(1)
    torch.save(timm.create_model("test_vit", pretrained=False).state_dict(), tmp_path / weights)
    (tmp_path / "space.yaml").write_text(space)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               OMP_NUM_THREADS="1", ABAW_THREADS="1")
    r = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, f"README workflow failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    sub = (tmp_path / "submission.txt").read_text().splitlines()
    test_rows = (data / "MTL.txt").read_text().splitlines()
    assert len(sub) == len(test_rows) and sub[0].startswith("image,valence,arousal,expression,aus")
    assert json.loads((tmp_path / "val_score.json").read_text())["total"] > 0
    assert (tmp_path / "report" / "report.html").exists() and (tmp_path / "search" / "composed.json").exists()
    for t in ("au", "expr", "va"):
        assert (tmp_path / "ft" / t).is_dir() and (tmp_path / "runs" / t / "result.json").exists()
