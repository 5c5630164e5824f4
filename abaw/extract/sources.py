"""The inputs of `abaw extract`: video files, folders of videos, `cropped_aligned/`-style
frame folders (`discover`), and the `--only` annotation files / test lists."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from abaw.errors import AbawError
from abaw.extract.frames import is_frame_folder
from abaw.extract.video import is_video


@dataclass(frozen=True)
class Source:
    """One input: a video file or a folder of aligned frame images."""

    kind: str  # "video" | "frames"
    path: str
    name: str  # video id (frames) or clip stem (video)
    size: int  # bytes (video file) or number of files (frames), for sharding

    def describe(self) -> dict[str, Any]:
        st = os.stat(self.path)
        d: dict[str, Any] = {"path": os.path.abspath(self.path), "kind": self.kind, "mtime": st.st_mtime}
        d["size" if self.kind == "video" else "n_files"] = self.size
        return d


def discover(inputs: Iterable[str | os.PathLike], kind: str = "auto") -> list[Source]:
    """Video files, folders of videos, `cropped_aligned/`-style folders, or one frame folder."""
    out: list[Source] = []
    for raw in inputs:
        p = Path(raw)
        if p.is_file():
            if not is_video(p):
                raise AbawError(f"{p}: not a video file (by its extension)")
            if kind == "frames":
                raise AbawError(f"{p}: a video file, but --kind frames was given")
            out.append(Source("video", str(p), p.stem, p.stat().st_size))
        elif p.is_dir():
            entries = sorted(p.iterdir())
            vids = [e for e in entries if e.is_file() and is_video(e)]
            subs = [e for e in entries if e.is_dir() and not e.name.startswith(".") and is_frame_folder(e)]
            use = kind
            if kind == "auto":
                if vids and subs:
                    raise AbawError(f"{p}: holds both video files and frame folders; choose with --kind")
                use = "videos" if vids else "frames"
            if use == "videos":
                if not vids:
                    raise AbawError(f"{p}: no video files found")
                out.extend(Source("video", str(v), v.stem, v.stat().st_size) for v in vids)
            elif subs:
                out.extend(Source("frames", str(s), s.name, sum(1 for _ in os.scandir(s))) for s in subs)
            elif is_frame_folder(p):
                out.append(Source("frames", str(p), p.name, sum(1 for _ in os.scandir(p))))
            else:
                raise AbawError(f"{p}: no videos or frame folders found")
        else:
            raise AbawError(f"{p}: no such file or directory")
    seen: dict[str, str] = {}
    for s in out:
        if s.name in seen:
            raise AbawError(f"two inputs give the video id {s.name!r}: {seen[s.name]} and {s.path}")
        seen[s.name] = s.path
    return out


def read_only_lists(paths: Sequence[str | os.PathLike]) -> dict[str, set[int]]:
    """Video id -> frame numbers listed in annotation files and/or test lists."""
    from abaw.data.annotations import read_annotations
    from abaw.data.testlist import read_test_list

    want: dict[str, set[int]] = {}
    for p in paths:
        try:
            with open(p, encoding="utf-8", errors="replace") as f:  # read_text reports bad bytes
                head = f.readline()
        except OSError as e:
            raise AbawError(f"{p}: cannot read ({e.strerror})") from None
        if "AU1" in head or head.count(",") >= 10:
            ann = read_annotations(p)
            for v in ann.videos:
                sl = ann.video_slice(v)
                want.setdefault(v, set()).update(ann.frame[sl].tolist())
        else:
            tl = read_test_list(p)
            for v, fr in zip(tl.video, tl.frame.tolist()):
                want.setdefault(v, set()).add(fr)
    return want
