"""The published recipes shipped with abaw (`abaw/recipes/*.yaml`, package data).

Each file is a search space for `abaw search --space` and, through its `base` section and
the first value of each grid entry, a config for `abaw train-heads --config`. Both options
take a recipe by name (`abaw7-winner`) or any file path (`find_recipe`). A recipe's first
comment paragraph says what it reproduces and the source's scores (`abaw recipes`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from abaw.errors import AbawError
from abaw.io import read_text
from abaw.results import Result

RECIPES_DIR = Path(__file__).resolve().parent
SCORE = re.compile(r"\b\d\.\d{3,4}\b")


@dataclass(frozen=True)
class Recipe:
    name: str
    path: str
    description: str  # the file's first comment paragraph, on one line
    scores: tuple[str, ...]  # the source's published scores named in it

    @classmethod
    def read(cls, path: Path) -> Recipe:
        para: list[str] = []
        for line in read_text(path).splitlines():
            if not line.startswith("#") or (para and not line.strip("# ")):
                break
            if line.strip("# "):
                para.append(line.lstrip("#").strip())
        text = " ".join(para)
        return cls(path.stem, str(path), text, tuple(SCORE.findall(text)))


def recipes() -> list[Recipe]:
    """Every shipped recipe, by name."""
    return [Recipe.read(p) for p in sorted(RECIPES_DIR.glob("*.yaml"))]


def find_recipe(ref: str | os.PathLike) -> Path:
    """A settings / search-space file: an existing path, else a shipped recipe's name."""
    p = Path(ref)
    if p.is_file():
        return p
    name = p.name.removesuffix(".yaml") if p.parent == Path(".") else None
    if name and (RECIPES_DIR / f"{name}.yaml").is_file():
        return RECIPES_DIR / f"{name}.yaml"
    known = ", ".join(r.stem for r in sorted(RECIPES_DIR.glob("*.yaml")))
    raise AbawError(f"{ref}: no such file, nor a recipe name (recipes: {known})")


@dataclass(frozen=True)
class RecipeList(Result):
    recipes: tuple[Recipe, ...]

    def format(self) -> str:
        width = max((len(r.name) for r in self.recipes), default=4)
        scores = [", ".join(r.scores) or "-" for r in self.recipes]
        sw = max([len("source scores"), *map(len, scores)])
        lines = [f"{'name':<{width}}  {'source scores':<{sw}}  description"]
        lines += [f"{r.name:<{width}}  {s:<{sw}}  {r.description}" for r, s in zip(self.recipes, scores)]
        lines.append(f"({RECIPES_DIR}; `abaw recipes show NAME` prints one; --config NAME / --space NAME use it)")
        return "\n".join(lines)


__all__ = ["RECIPES_DIR", "Recipe", "RecipeList", "find_recipe", "recipes"]
