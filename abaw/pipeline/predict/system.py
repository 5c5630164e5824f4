"""`abaw predict`: submissions from runs (single, ensembles, composed best-per-task).

(Per-frame affect of videos and images, `--video`, goes through abaw.pipeline.predict.anyinput
with the runs as a crop system: heads_system.RunsSystem.)

A *system* says which runs supply each task: every given run for the tasks it trained
(`--run A --run B` averages A and B), or the runs `abaw search --compose best-per-task`
chose per task. For each task the runs' outputs are averaged (VA values, EXPR and AU
probabilities) after post-processing:

- `each` (default): each run's own fitted smoothing, then the mean; AU thresholds are
  the mean of the runs' thresholds (with one run: exactly that run's post-processing);
- `refit`: the raw mean, with smoothing windows and AU thresholds refitted on validation
  annotations (do not use with k-fold runs, whose validation frames trained other folds);
- `none`: the raw mean, argmax and 0.5 thresholds.

Every test-list entry gets a row. Frames without a cached feature or without a face
take the outputs of the nearest predicted frame of the same video; a video with no
predicted frame at all takes the mean outputs over all predicted frames (reported, and
refused unless `allow_missing_videos`). The file is validated before it is reported done.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from abaw.data.labels import N_AU, TASKS, VA_DIMS, image_name
from abaw.errors import AbawError
from abaw.pipeline.predict.fill import fill_rows
from abaw.results import Result

POSTPROCESS_MODES = ("each", "refit", "none")


@dataclass
class System:
    """Which runs supply each task; a blend (`abaw blend`) adds the weights of each task's
    runs, the space they are averaged in and the post-processing fitted on the blend."""

    runs: dict[str, list[Any]]  # task -> [Run]
    va_dims: dict[str, list[Any]] = field(default_factory=dict)  # valence / arousal -> the VA runs supplying
    # it (a composition that chose them apart); empty: every VA run supplies the dimensions it trained
    weights: dict[str, tuple[float, ...]] = field(default_factory=dict)  # task -> one per run (blend)
    space: str = "prob"  # prob | logit: how a blend averages EXPR/AU (abaw.pipeline.train.outputs.combine)
    postprocess: Any = None  # the blend's own PostProcess (None: each run's)

    @property
    def blended(self) -> bool:
        return self.postprocess is not None

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(t for t in TASKS if self.runs.get(t))

    def va_sources(self) -> dict[str, list[Any]]:
        """Each VA dimension -> the runs whose outputs make it (a dimension no run trained: [])."""
        if self.va_dims:
            return {d: list(self.va_dims.get(d, [])) for d in VA_DIMS}
        return {d: [r for r in self.runs.get("va", []) if d in r.spec.va_dims] for d in VA_DIMS}

    def missing_va_dims(self) -> list[str]:
        """VA dimensions no run of the system predicts (when it has VA at all): predicted as NaN."""
        return [d for d, rs in self.va_sources().items() if not rs] if self.runs.get("va") else []

    def all_runs(self) -> list[Any]:
        seen: dict[str, Any] = {}
        for rs in self.runs.values():
            for r in rs:
                seen.setdefault(str(r.path), r)
        return list(seen.values())

    def keys(self) -> tuple[str, ...]:
        """Every backbone key the runs need."""
        return tuple(sorted({k for r in self.all_runs() for k in r.keys}))

    def fingerprints(self) -> dict[str, dict[str, Any]]:
        prints: dict[str, dict[str, Any]] = {}
        for r in self.all_runs():
            for k in r.keys:
                if r.fingerprints.get(k):
                    prints.setdefault(k, r.fingerprints[k])
        return prints

    def au_thresholds(self) -> np.ndarray:
        """The AU thresholds of the system's own post-processing: the blend's, else the mean of the runs'."""
        if self.blended:
            pp = self.postprocess.au_thresholds
            return np.full(N_AU, 0.5) if pp is None else np.asarray(pp, float)
        return _thresholds([r.postprocess for r in self.runs["au"]]) if self.runs.get("au") else np.full(N_AU, 0.5)

    def describe(self) -> str:
        from abaw.pipeline.train.outputs import format_weight

        def runs(t: str) -> str:
            w = self.weights.get(t)
            groups: list[list] = []  # adjacent fold runs of one k-fold config with equal weights: one entry
            for i, r in enumerate(self.runs[t]):
                key = (fold_config(Path(r.path)), w[i] if w else None)
                if groups and key[0] is not None and groups[-1][0] == key:
                    groups[-1][1].append(r)
                else:
                    groups.append([key, [r]])
            x = lambda wt: "" if wt is None else f"x{format_weight(wt)}"  # noqa: E731
            return ", ".join(f"{rs[0].path} {x(wt)}".rstrip() if len(rs) == 1 else
                             f"{cfg} ({len(rs)} fold runs" + (f", {x(wt)} each)" if wt is not None else ")")
                             for (cfg, wt), rs in groups)

        def va() -> str:
            src = self.va_sources()
            if not self.va_dims and all(tuple(r.spec.va_dims) == VA_DIMS for r in self.runs["va"]):
                return runs("va")
            return ", ".join(f"{d} " + (", ".join(str(r.path) for r in src[d]) or "none (NaN)") for d in VA_DIMS)

        return "; ".join(f"{t.upper()}: {va() if t == 'va' else runs(t)}" for t in self.tasks) + (
            f" (blend, {self.space} space)" if self.blended else "")


def fold_config(path: Path) -> Path | None:
    """The config folder of a k-fold run (`<config>/fold<k>`, `<config>/repeat<r>/fold<k>`); None otherwise."""
    if not path.name.startswith("fold"):
        return None
    return path.parent.parent if path.parent.name.startswith("repeat") else path.parent


@dataclass(frozen=True)
class SubmissionResult(Result):
    """A written and validated submission: `report` holds the row and fill counts."""

    out: str
    test_list: str
    system: str
    report: dict[str, Any]

    def __getitem__(self, key: str) -> Any:
        return self.report[key] if key in self.report else super().__getitem__(key)

    def format(self) -> str:
        r = self.report
        return (f"system: {self.system}\n"
                f"wrote {self.out}: {r['entries']} rows ({r['unique_frames']} frames: {r['predicted']} predicted, "
                f"{r['filled_from_neighbours']} without a face filled from temporal neighbours, "
                f"{r['filled_from_mean']} from the mean); validated against {self.test_list}"
                + "".join(f"\n{line}" for line in time_scale_lines(r.get("time_scale"))))

    @property
    def warnings(self) -> tuple[str, ...]:
        missing = self.report.get("missing_tasks") or []
        dims = self.report.get("missing_va_dims") or []
        out = []
        if missing:
            out.append(f"warning: no run predicts {', '.join(t.upper() for t in missing)}; "
                       "those columns are placeholders")
        if dims:
            out.append(f"warning: no run trained {', '.join(dims)} (VA runs trained on one dimension); "
                       "that column is a placeholder 0")
        return tuple(out)


def time_scale_lines(scales: dict[str, dict[str, Any]] | None) -> list[str]:
    """One line per run predicted at another spacing than consecutive frames (`Run.time_scale`)."""
    from abaw.pipeline.train.timescale import TimeScale

    return [f"{path}: {TimeScale(**d).describe()}" for path, d in (scales or {}).items()
            if d["mode"] in ("subsampled", "sparser")]


def load_system(run_dirs: list[str] | tuple[str, ...] = (), composed: str | os.PathLike | None = None,
                device: str = "cpu") -> System:
    """A system from run folders (every run serves the tasks it trained) or a composed.json."""
    from abaw.pipeline.train.run import load_run

    if bool(run_dirs) == bool(composed):
        raise AbawError("give run folders (--run) or a composed system (--compose), not both or neither")
    cache: dict[str, Any] = {}

    def get(d: str):
        key = str(Path(d).resolve())
        if key not in cache:
            cache[key] = load_run(d, device)
        return cache[key]

    runs: dict[str, list[Any]] = {t: [] for t in TASKS}
    dims: dict[str, list[Any]] = {}
    extra: dict[str, Any] = {}
    if composed:
        from abaw.pipeline.blend import read_blend
        from abaw.pipeline.composed import read_composed

        extra = read_blend(composed)
        for t, dirs in read_composed(composed).items():
            for d in dirs:
                r = get(str(d))
                if t in VA_DIMS:  # VA chosen per dimension
                    if "va" not in r.tasks or t not in r.spec.va_dims:
                        raise AbawError(f"{d}: composed for {t} but the run did not train it")
                    dims.setdefault(t, []).append(r)
                    if r not in runs["va"]:
                        runs["va"].append(r)
                    continue
                if t not in r.tasks:
                    raise AbawError(f"{d}: composed for {t.upper()} but the run did not train it")
                runs[t].append(r)
    else:
        for d in run_dirs:
            r = get(d)
            for t in r.tasks:
                runs[t].append(r)
    system = System({t: rs for t, rs in runs.items() if rs}, va_dims=dims, **extra)
    if not system.tasks:
        raise AbawError("the runs predict no task")
    return system


def _thresholds(pps: list[Any]) -> np.ndarray:
    thr = [np.full(N_AU, 0.5) if p.au_thresholds is None else np.asarray(p.au_thresholds, float) for p in pps]
    return np.mean(thr, axis=0)


def system_outputs(system: System, table, postprocess: str = "each", val_table=None, val_ann=None,
                   rows: np.ndarray | None = None) -> tuple[Any, np.ndarray, dict[str, Any]]:
    """Per-frame outputs of the system for the face frames of `table` (or `rows`).

    Returns (FrameOutputs with every task the system has, AU thresholds, info).
    """
    from abaw.pipeline.train.outputs import FrameOutputs, combine
    from abaw.pipeline.train.postprocess import (
        apply_postprocess,
        fit_postprocess_annotations,
    )

    if postprocess not in POSTPROCESS_MODES:
        raise AbawError(f"postprocess must be one of {', '.join(POSTPROCESS_MODES)}")
    raw_cache: dict[str, Any] = {}

    def raw(r, tbl, key: str):
        k = f"{key}:{r.path}"
        if k not in raw_cache:
            raw_cache[k] = r.predict(tbl, rows=rows if key == "test" else None)
        return raw_cache[k]

    def task_mean(t: str, tbl, key: str, smooth: bool) -> np.ndarray:
        arrs = []
        for r in system.runs[t]:
            o = raw(r, tbl, key)
            if smooth and not system.blended:
                o = apply_postprocess(o, r.postprocess)
            arrs.append(getattr(o, t))
        if t in system.weights:  # a blend: its weights, in its space, before its own post-processing
            return combine(t, arrs, system.weights[t], system.space)
        if t == "va":  # each dimension: the mean of the runs supplying it (none: NaN)
            src = system.va_sources()
            cols = [[a[:, i] for r, a in zip(system.runs[t], arrs) if r in src[d]] for i, d in enumerate(VA_DIMS)]
            return np.stack([np.mean(c, axis=0) if c else np.full(len(arrs[0]), np.nan, np.float32)
                             for c in cols], 1).astype(np.float32)
        return np.mean(arrs, axis=0)

    first = raw(system.runs[system.tasks[0]][0], table, "test")
    for r in system.all_runs():  # every run predicts exactly the same frames
        o = raw(r, table, "test")
        if len(o) != len(first) or not np.array_equal(o.frame, first.frame):
            raise AbawError(f"run {r.path} predicts different frames than {system.runs[system.tasks[0]][0].path}")
    info: dict[str, Any] = {"postprocess": postprocess, "runs": {t: [str(r.path) for r in system.runs[t]]
                                                                  for t in system.tasks},
                            "time_scale": {str(r.path): r.time_scale(table, rows).to_dict() for r in system.all_runs()}}
    smooth = postprocess == "each"
    arrays = {t: task_mean(t, table, "test", smooth) for t in system.tasks}
    out = replace(first, **{t: arrays.get(t) for t in TASKS})
    thr = np.full(N_AU, 0.5)
    if postprocess == "each":
        if system.blended:
            out = apply_postprocess(out, system.postprocess)
        thr = system.au_thresholds()
    elif postprocess == "refit":
        if val_table is None or val_ann is None:
            raise AbawError("postprocess refit needs validation annotations and their cached features")
        v_first = raw(system.runs[system.tasks[0]][0], val_table, "val")
        val_out = FrameOutputs(v_first.videos, v_first.video_idx, v_first.frame,
                               **{t: (task_mean(t, val_table, "val", False) if t in system.tasks else None)
                                  for t in TASKS})
        pp, steps = fit_postprocess_annotations(val_out, val_ann)
        out = apply_postprocess(out, pp)
        if pp.au_thresholds is not None:
            thr = np.asarray(pp.au_thresholds, float)
        info["refit"] = {"postprocess": pp.__dict__, "steps": steps}
    info["au_thresholds"] = thr.tolist()
    return out, thr, info


def expand_to_entries(outputs, thresholds: np.ndarray, entries_video: list[str] | tuple[str, ...],
                      entries_frame: np.ndarray, allow_missing_videos: bool = False
                      ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Decisions for every (video, frame) entry, filling frames without outputs.

    Returns ({'va': [M,2], 'expr': [M], 'au': [M,12]}, report).
    """
    out_video = np.asarray(outputs.videos, dtype=object)[outputs.video_idx]
    index = {(v, int(f)): i for i, (v, f) in enumerate(zip(out_video.tolist(), outputs.frame.tolist()))}
    ent_v = list(entries_video)
    ent_f = np.asarray(entries_frame, dtype=np.int64)
    uniq = list(dict.fromkeys(zip(ent_v, ent_f.tolist())))
    have = np.array([k in index for k in uniq], dtype=bool)
    missing_keys = [k for k, h in zip(uniq, have) if not h]
    n_out = len(outputs)
    predicted_videos = set(out_video.tolist())
    no_video = sorted({v for v, _ in missing_keys if v not in predicted_videos})
    if no_video and not allow_missing_videos:
        raise AbawError(f"{len(no_video)} videos of the list have no predicted frame at all (not extracted, or no "
                        f"face anywhere), e.g. {no_video[:5]}; extract them, or allow filling them with the mean "
                        "prediction (--allow-missing-videos)")
    m = len(ent_v)
    result: dict[str, np.ndarray] = {}
    n_neighbour = n_mean = 0
    if outputs.tasks:
        if n_out == 0:
            raise AbawError("no frame of the list could be predicted")
        # rows: the predicted frames, then the missing ones, filled from their nearest predicted
        # neighbour in the same video (or the mean prediction when the video has none)
        all_video = np.concatenate([out_video, np.asarray([v for v, _ in missing_keys], dtype=object)])
        all_frame = np.concatenate([outputs.frame.astype(np.int64),
                                    np.asarray([f for _, f in missing_keys], np.int64)])
        avail = np.r_[np.ones(n_out, bool), np.zeros(len(missing_keys), bool)]
        arrays = {t: getattr(outputs, t).astype(np.float64) for t in outputs.tasks}
        values = {t: np.concatenate([a, np.zeros((len(missing_keys),) + a.shape[1:])]) for t, a in arrays.items()}
        filled, n_neighbour, n_mean = fill_rows(values, all_video, all_frame, avail,
                                                {t: a.mean(0) for t, a in arrays.items()})
        row_of = dict(index)
        row_of.update({k: n_out + j for j, k in enumerate(missing_keys)})
        rows = np.array([row_of[(v, int(f))] for v, f in zip(ent_v, ent_f.tolist())], dtype=np.int64)
        result = {t: filled[t][rows] for t in outputs.tasks}
    va = np.nan_to_num(np.clip(result["va"], -1, 1)) if "va" in result else np.zeros((m, 2))  # NaN: an untrained
    # VA dimension, a placeholder 0 in the submission (reported as missing_va_dims)
    expr = result["expr"].argmax(1) if "expr" in result else np.zeros(m, np.int64)
    au = (result["au"] >= thresholds[None]).astype(np.int8) if "au" in result else np.zeros((m, N_AU), np.int8)
    report = {"entries": m, "unique_frames": len(uniq), "predicted": int(have.sum()),
              "filled_from_neighbours": n_neighbour, "filled_from_mean": n_mean,
              "videos_without_prediction": no_video,
              "examples_filled": [image_name(v, f) for v, f in missing_keys[:5]]}
    return {"va": va, "expr": expr, "au": au}, report


def predict_test_list(system: System, store: str | os.PathLike, test_list_path: str | os.PathLike,
                      out_file: str | os.PathLike, postprocess: str = "each", val_ann=None,
                      allow_missing_videos: bool = False) -> SubmissionResult:
    """Write and validate the submission for a test list; return what was written."""
    from abaw.cache.store import load_features
    from abaw.data.submission import validate_submission, write_submission
    from abaw.data.testlist import read_entries

    tl = read_entries(test_list_path)  # a test list, or an annotation file (e.g. validation)
    keys = system.keys()
    table = load_features(store, keys, videos=tl.videos, missing="skip")
    if not table.videos:
        raise AbawError(f"{store}: none of the {len(tl.videos)} test videos has features for {list(keys)}")
    val_table = None
    if postprocess == "refit":
        if val_ann is None:
            raise AbawError("--postprocess refit needs --val-ann")
        val_table = load_features(store, keys, videos=val_ann.videos)
    outputs, thr, info = system_outputs(system, table, postprocess, val_table, val_ann)
    dec, report = expand_to_entries(outputs, thr, tl.video, tl.frame, allow_missing_videos)
    write_submission(out_file, tl.images, dec["va"], dec["expr"], dec["au"])
    problems = validate_submission(out_file, tl)
    if problems:  # pragma: no cover - the writer guarantees the format
        raise AbawError(f"{out_file}: the written submission is invalid: {problems[0]}")
    report.update(info)
    report["tasks"] = list(system.tasks)
    report["missing_tasks"] = [t for t in TASKS if t not in system.tasks]
    report["missing_va_dims"] = system.missing_va_dims()
    return SubmissionResult(out=str(out_file), test_list=str(test_list_path), system=system.describe(), report=report)
