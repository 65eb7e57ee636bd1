"""Data-set manifests (``data_manifest/*.yaml``): provenance, licence and checksums.

A manifest names a data set's source, licence, CRS and ground sampling distance and lists
its files with SHA-256 checksums, so a local copy can be verified with ``spurge verify``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from spurge.errors import ManifestError
from spurge.io.atomic import sha256_file, write_text_atomic


class DataFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    bytes: int | None = Field(default=None, ge=0)
    description: str = ""


class DatasetManifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    source: str
    licence: str
    citation: str = ""
    crs: str | None = None
    gsd_m: float | None = Field(default=None, gt=0)
    classes: list[str] = Field(default_factory=list)
    notes: str = ""
    files: list[DataFile] = Field(default_factory=list)


def load_dataset_manifest(path: str | Path) -> DatasetManifest:
    path = Path(path)
    if not path.is_file():
        raise ManifestError("data manifest not found", path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        return DatasetManifest.model_validate(data)
    except yaml.YAMLError as exc:
        raise ManifestError("not valid YAML", path) from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        raise ManifestError(f"{key}: {first['msg']}", path) from exc


def write_dataset_manifest(path: str | Path, *, files: Sequence[Path], **fields: object) -> Path:
    """Write a manifest listing ``files`` (relative to the manifest) with their checksums."""
    path = Path(path)
    entries = [
        DataFile(
            path=f.relative_to(path.parent).as_posix(),
            sha256=sha256_file(f),
            bytes=f.stat().st_size,
        )
        for f in files
    ]
    manifest = DatasetManifest(files=entries, **fields)  # type: ignore[arg-type]
    text = yaml.safe_dump(manifest.model_dump(mode="json"), sort_keys=False)
    write_text_atomic(path, text)
    return path


@dataclass
class VerifyReport:
    manifest: Path
    root: Path
    ok_files: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.mismatched

    def summary(self) -> str:
        lines = [
            f"{self.manifest.name}: {len(self.ok_files)} file(s) verified in {self.root}"
            f", {len(self.missing)} missing, {len(self.mismatched)} with a wrong checksum"
            f", {len(self.unchecked)} without a recorded checksum."
        ]
        lines += [f"  missing: {name}" for name in self.missing]
        lines += [f"  checksum mismatch: {name}" for name in self.mismatched]
        lines += [f"  present, no checksum recorded: {name}" for name in self.unchecked]
        return "\n".join(lines)


def record_checksums(manifest_path: str | Path, root: str | Path) -> int:
    """Pin the SHA-256 of every file under ``root`` into the manifest (first download).

    Files already listed with a checksum keep it (a mismatch is for ``verify`` to report);
    returns how many checksums were added.
    """
    manifest_path = Path(manifest_path)
    manifest = load_dataset_manifest(manifest_path)
    root = Path(root)
    if not root.is_dir():
        raise ManifestError("data folder not found", root)
    listed = {entry.path: entry for entry in manifest.files}
    added = 0
    own = manifest_path.resolve()
    for local in sorted(p for p in root.rglob("*") if p.is_file()):
        if local.resolve() == own:
            continue  # the manifest itself: checksumming it would change it
        relative = local.relative_to(root).as_posix()
        entry = listed.get(relative)
        if entry is None:
            entry = DataFile(path=relative)
            manifest.files.append(entry)
            listed[relative] = entry
        if entry.sha256 is None:
            entry.sha256 = sha256_file(local)
            entry.bytes = local.stat().st_size
            added += 1
    text = yaml.safe_dump(manifest.model_dump(mode="json"), sort_keys=False)
    write_text_atomic(manifest_path, text)
    return added


def verify_dataset(manifest_path: str | Path, root: str | Path | None = None) -> VerifyReport:
    """Compare files under ``root`` (default: the manifest's folder) with the manifest."""
    manifest_path = Path(manifest_path)
    manifest = load_dataset_manifest(manifest_path)
    root = Path(root) if root is not None else manifest_path.parent
    if not root.is_dir():
        raise ManifestError("data folder not found", root)
    report = VerifyReport(manifest=manifest_path, root=root)
    own = manifest_path.resolve()
    for entry in manifest.files:
        local = root / entry.path
        if local.resolve() == own:
            continue  # listed by an older --record: a manifest cannot hold its own checksum
        if not local.is_file():
            report.missing.append(entry.path)
        elif entry.sha256 is None:
            report.unchecked.append(entry.path)
        elif sha256_file(local) != entry.sha256:
            report.mismatched.append(entry.path)
        else:
            report.ok_files.append(entry.path)
    return report
