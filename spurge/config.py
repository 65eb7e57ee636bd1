"""Species configuration: one YAML file per invasive species.

A config says what the classes are, how plots are cut into tiles and which prompts the
diffusion augmentation uses. Adding a species means adding a YAML file; no code changes.

``--config`` takes a path or a bare name. A path that is a file is read as it is. A bare name
(one path component, no suffix) that is not a file (it may be absent, or a folder of that name
in the working directory) is looked up as ``./configs/NAME.yaml`` first, so a species config
being written in the working directory wins (docs/new-species.md), then among the configs
shipped inside the package (``spurge/resources/configs``), so an installed wheel finds them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from spurge.errors import ConfigError
from spurge.resources import CONFIG_DIR

#: The config every command uses unless ``--config`` says otherwise.
DEFAULT_CONFIG = "leafy_spurge"

#: Where a bare config name is looked up before the shipped configs (relative to the cwd).
LOCAL_CONFIG_DIR = Path("configs")


class ClassSpec(BaseModel):
    """One label class and the word its textual-inversion token starts from."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_\-]+$")
    initializer: str = Field(min_length=1, description="Single word that seeds the TI token.")
    description: str = ""

    @field_validator("initializer")
    @classmethod
    def _single_word(cls, value: str) -> str:
        if len(value.split()) != 1:
            raise ValueError("must be a single word (the token is initialised from it)")
        return value


class SpeciesConfig(BaseModel):
    """Everything about one species that the stages need."""

    model_config = ConfigDict(extra="forbid")

    species: str = Field(min_length=1)
    scientific_name: str = ""
    classes: list[ClassSpec] = Field(min_length=2)
    positive_class: str = Field(description="Class mapped as presence.")
    label_column: str = "label"
    site_column: str | None = "site"
    plot_id_column: str | None = "plot_id"
    prompt_template: str = "a drone photo of {token}"
    context_template: str = "a drone photo of {token} in {context}"
    context_prompts: list[str] = Field(default_factory=list)
    plot_size_m: float = Field(gt=0, description="Side of the square cut around a plot centre.")
    tile_size_px: int = Field(ge=16, le=4096)
    quarters: bool = Field(description="Split each plot into 2 x 2 quarter tiles.")
    gsd_m: float = Field(gt=0, description="Target ground sampling distance of tiles (m/px).")
    bands: list[int] = Field(default=[1, 2, 3], min_length=3, max_length=3)
    alpha_band: int | None = Field(default=None, ge=1)
    scale_percentiles: tuple[float, float] = (0.5, 99.5)
    max_nodata_fraction: float = Field(default=0.25, ge=0, le=1)

    @field_validator("prompt_template", "context_template")
    @classmethod
    def _has_token_slot(cls, value: str) -> str:
        if "{token}" not in value:
            raise ValueError("must contain a {token} slot for the class token")
        return value

    @field_validator("context_template")
    @classmethod
    def _has_context_slot(cls, value: str) -> str:
        if "{context}" not in value:
            raise ValueError("must contain a {context} slot")
        return value

    @field_validator("bands")
    @classmethod
    def _bands_positive(cls, value: list[int]) -> list[int]:
        if any(b < 1 for b in value):
            raise ValueError("band numbers start at 1")
        return value

    @field_validator("scale_percentiles")
    @classmethod
    def _percentiles_ordered(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not 0 <= low < high <= 100:
            raise ValueError("must be two percentiles 0 <= low < high <= 100")
        return value

    @model_validator(mode="after")
    def _classes_consistent(self) -> SpeciesConfig:
        names = self.class_names
        if len(set(names)) != len(names):
            raise ValueError(f"classes: duplicate class names in {names}")
        if self.positive_class not in names:
            raise ValueError(f"positive_class: {self.positive_class!r} is not one of {names}")
        covered = self.tile_size_px * self.gsd_m * (2 if self.quarters else 1)
        if abs(covered - self.plot_size_m) > 0.05 * self.plot_size_m:
            layout = "2 x 2 quarters of " if self.quarters else "one tile of "
            raise ValueError(
                f"plot_size_m: {self.plot_size_m} m does not match {layout}"
                f"{self.tile_size_px} px at gsd_m {self.gsd_m} m/px ({covered:.3g} m)"
            )
        return self

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.classes]

    @property
    def plot_size_px(self) -> int:
        """Side of a plot in pixels at the target GSD."""
        return round(self.plot_size_m / self.gsd_m)

    def class_index(self, name: str) -> int:
        return self.class_names.index(name)

    def token(self, class_name: str) -> str:
        """The placeholder token a class's textual inversion learns, e.g. ``<present>``."""
        return f"<{class_name}>"

    def fingerprint(self) -> str:
        """Stable hash of the config's content, recorded in artefact manifests."""
        payload = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(payload).hexdigest()[:16]


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that refuses a mapping naming one key twice (YAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise ConfigError(
                    f"duplicate key {key!r} at line {line} (first at line {seen[key]}); "
                    "YAML would silently keep the last one"
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _location(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def shipped_config_names() -> list[str]:
    """Names of the configs that ship with spurge (``leafy_spurge``, ...), sorted."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def resolve_config_path(path: str | Path) -> Path:
    """The YAML file ``path`` means: itself if a file, else a named config (module docstring).

    Raises:
        ConfigError: Nothing matches; the message lists where a bare name was looked for.
    """
    path = Path(path)
    if path.is_file():
        return path
    bare = len(path.parts) == 1 and path.suffix == "" and path.name not in ("", ".", "..")
    if not bare:
        raise ConfigError("config file not found", path)
    for folder in (LOCAL_CONFIG_DIR, CONFIG_DIR):
        candidate = folder / f"{path.name}.yaml"
        if candidate.is_file():
            return candidate
    shipped = ", ".join(shipped_config_names()) or "none"
    raise ConfigError(
        f"config not found: not a file, no {LOCAL_CONFIG_DIR / path.name}.yaml, and not one "
        f"of the configs shipped with spurge ({shipped})",
        path,
    )


def load_config(path: str | Path) -> SpeciesConfig:
    """Load and validate a species config from a YAML file or a config name.

    Args:
        path: A YAML file, or a bare name such as ``leafy_spurge`` (module docstring).

    Raises:
        ConfigError: The file is missing, not YAML, or not a valid config; the message names
            the key at fault.
    """
    path = resolve_config_path(path)
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except ConfigError as exc:
        raise ConfigError(exc.problem, path) from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"not valid YAML{where}", path) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError("not a text file", path) from exc
    if not isinstance(data, dict):
        raise ConfigError("expected a mapping of keys to values at the top level", path)
    try:
        return SpeciesConfig.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = _location(err["loc"])
            message = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                message = "unknown key"
            problems.append(f"{key}: {message}")
        raise ConfigError("; ".join(problems), path) from exc
