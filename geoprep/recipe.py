"""Recipes: YAML files validated into frozen models, with `--set KEY.PATH=VALUE` overrides."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from geoprep.clusters import ClusterConfig, SplitConfig
from geoprep.errors import UserError
from geoprep.samplers import SAMPLERS, AnySampler


class Recipe(BaseModel):
    """What to build and how; every random choice flows from `seed`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_-]+$", description="dataset name")
    description: str = ""
    seed: int = Field(0, ge=0, description="seed of every random choice")
    sampler: Annotated[AnySampler, Field(discriminator="kind")]
    clusters: ClusterConfig = ClusterConfig()
    splits: SplitConfig = SplitConfig()

    def digest(self) -> str:
        """A short hash of the validated recipe: two recipes with equal digests build equal data."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read, override and validate a recipe; every problem raises one `UserError` line per fault."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UserError(f"{path}: recipe file not found") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read recipe ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise UserError(f"{path}: not valid YAML{where}: {problem}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of recipe keys, got {type(data).__name__}")
    for item in overrides:
        apply_override(data, item)
    return validate_recipe(data, source=str(path))


def validate_recipe(data: dict[str, Any], source: str = "<recipe>") -> Recipe:
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        lines = [f"{source}: {describe_error(err, data)}" for err in exc.errors()]
        raise UserError("\n".join(lines)) from None


def apply_override(data: dict[str, Any], item: str) -> None:
    """Set `a.b.c=value` in nested dicts; the value is parsed as YAML (numbers, bools, lists)."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set {item!r}: expected KEY.PATH=VALUE, for example sampler.n=500")
    parts = key.strip().split(".")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    node = data
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            where = ".".join(parts[: depth + 1])
            raise UserError(f"--set {item!r}: {where} is a value, not a section")
        node = child
    node[parts[-1]] = value


def describe_error(err: dict[str, Any], data: dict[str, Any]) -> str:
    """One line: the key path, the offending value and what was expected."""
    loc = list(err["loc"])
    # Discriminated unions put the tag in the location: ('sampler', 'urban', 'n') → sampler.n
    if len(loc) > 1 and loc[0] == "sampler" and loc[1] in SAMPLERS:
        del loc[1]
    path = ".".join(str(p) for p in loc) or "(top level)"
    kind = err["type"]
    if kind == "extra_forbidden":
        allowed = ", ".join(_allowed_keys(loc[:-1], data))
        return f"{path}: unknown key; expected one of: {allowed}"
    if kind == "missing":
        return f"{path}: required key is missing"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        got = _lookup(data, loc + ["kind"]) if kind == "union_tag_invalid" else None
        return f"{path}.kind: got {got!r}; expected one of: {', '.join(SAMPLERS)}"
    message = err["msg"].replace("Input should be", "expected").replace("Value error, ", "")
    return f"{path}: got {err.get('input')!r}; {message}"


def _allowed_keys(loc: list[Any], data: dict[str, Any]) -> list[str]:
    model: type[BaseModel] | None = Recipe
    for part in loc:
        if model is None:
            return []
        if part == "sampler" and model is Recipe:
            kind = _lookup(data, ["sampler", "kind"])
            model = SAMPLERS.get(kind)
            continue
        annotation = (
            model.model_fields[str(part)].annotation if part in model.model_fields else None
        )
        model = (
            annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel)
            else None
        )
    return list(model.model_fields) if model is not None else []


def _lookup(data: Any, path: list[Any]) -> Any:
    for part in path:
        if not isinstance(data, dict):
            return None
        data = data.get(part)
    return data
