"""Training data: labelled tiles, few-shot sampling, the synthetic store, the training set.

``load_labelled_tiles`` reads ``tiles.parquet`` (from ``spurge tile``) and checks it was made
with this config; ``sample_few_shot`` draws K train-split tiles per class, whole plots at a
time (the quarters of one plot stay together); ``read_synthetic_store`` checks a store from
``spurge augment`` was made from these tiles; ``FewShotDataset`` serves the draws with
DA-Fusion mixing and the eight nadir flips/rotations. Every image goes through the model's
:class:`~spurge.transform.TileTransform`, the one preprocessing path ``spurge map`` uses too.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image, UnidentifiedImageError
from torch import nn

from spurge.config import SpeciesConfig
from spurge.errors import ManifestError
from spurge.io.sources import check_tiles_config
from spurge.io.synthetic import SYNTHETIC_MANIFEST, read_synthetic_manifest
from spurge.io.table import table_path
from spurge.io.tiles import manifest_path, read_tile_manifest
from spurge.transform import TileTransform


def load_labelled_tiles(tiles_dir: str | Path, config: SpeciesConfig) -> pd.DataFrame:
    """Labelled tiles of the manifest with their class index; labels must be config classes."""
    check_tiles_config(tiles_dir, config)
    tiles = pd.DataFrame(read_tile_manifest(tiles_dir).drop(columns="geometry"))
    labelled = tiles[tiles["label"].notna() & (tiles["split"] != "unlabelled")].copy()
    unknown = sorted(set(labelled["label"]) - set(config.class_names))
    if unknown:
        raise ManifestError(
            f"tile labels {unknown} are not classes of the config ({config.class_names}); "
            "was the tiles folder made with another config?",
            manifest_path(tiles_dir),
        )
    labelled["target"] = [config.class_index(name) for name in labelled["label"]]
    # A plot is identified by its id, or by the tile itself when the manifest has none.
    labelled["group"] = labelled["plot_id"].fillna(labelled["tile_id"]).astype(str)
    return labelled.reset_index(drop=True)


def sample_few_shot(
    tiles: pd.DataFrame, config: SpeciesConfig, shots: int, seed: int, path: Path | None = None
) -> pd.DataFrame:
    """K train-split tiles per class, drawn plot by plot in an order fixed by ``seed``.

    Plots are shuffled (never single quarters) and their tiles taken until K are reached, so
    a few-shot set is made of whole plots except possibly the last one, which is cut to K.
    """
    train = tiles[tiles["split"] == "train"]
    rng = np.random.default_rng(seed)
    chosen = []
    for class_name in config.class_names:
        rows = train[train["label"] == class_name].sort_values("tile_id")
        if len(rows) < shots:
            raise ManifestError(
                f"class {class_name!r} has {len(rows)} train tiles, fewer than --shots {shots}",
                path,
            )
        groups = sorted(rows["group"].unique())
        order = rng.permutation(len(groups))
        taken: list[pd.DataFrame] = []
        count = 0
        for g in order:
            plot_tiles = rows[rows["group"] == groups[g]]
            taken.append(plot_tiles.head(shots - count))
            count += len(taken[-1])
            if count >= shots:
                break
        chosen.append(pd.concat(taken))
    return pd.concat(chosen).reset_index(drop=True)


def read_synthetic_store(
    synthetic_dir: str | Path, tiles: pd.DataFrame, config: SpeciesConfig
) -> pd.DataFrame:
    """Read ``synthetic.parquet`` and check it was built from these tiles with this config."""
    store = read_synthetic_manifest(synthetic_dir, config_fingerprint=config.fingerprint())
    path = table_path(synthetic_dir, SYNTHETIC_MANIFEST)
    unknown_labels = sorted(set(store["label"].dropna()) - set(config.class_names))
    if unknown_labels:
        raise ManifestError(
            f"synthetic labels {unknown_labels} are not classes of the config", path
        )
    by_id = tiles.set_index("tile_id")["label"]
    foreign = ~store["source_tile_id"].isin(by_id.index)
    if foreign.any():
        example = store.loc[foreign, "source_tile_id"].iloc[0]
        raise ManifestError(
            f"synthetic store was built from other tiles: {int(foreign.sum())} image(s) come "
            f"from tiles not in this tiles folder (e.g. {example!r})",
            path,
        )
    wrong = store["label"].to_numpy() != by_id.loc[store["source_tile_id"]].to_numpy()
    if wrong.any():
        raise ManifestError(
            f"{int(wrong.sum())} synthetic image(s) carry a label other than their source tile's",
            path,
        )
    store = store.copy()
    store.attrs["manifest"] = str(path)
    store["abs_path"] = [str(path.parent / rel) for rel in store["path"]]
    return store


def read_tile_png(path: str | Path) -> np.ndarray:
    """An 8-bit RGB tile image as (H, W, 3) uint8."""
    try:
        with Image.open(path) as image:
            return np.array(image.convert("RGB"), dtype=np.uint8)
    except (FileNotFoundError, UnidentifiedImageError, OSError) as exc:
        raise ManifestError(f"cannot read tile image ({type(exc).__name__})", path) from exc


def load_tile(path: str | Path, transform: TileTransform) -> torch.Tensor:
    """A tile PNG as uint8 (3, S, S), resized and rounded by ``transform``."""
    decoded = torch.from_numpy(read_tile_png(path)).permute(2, 0, 1).contiguous()
    return transform.resize(decoded)


class ImageCache:
    """Decoded tiles at the network's input size, kept in memory: few-shot sets are small and
    every tile is drawn many times, so each PNG is decoded and resized once.
    """

    def __init__(self, transform: TileTransform) -> None:
        self.transform = transform
        self._images: dict[str, torch.Tensor] = {}

    def get(self, path: str) -> torch.Tensor:
        image = self._images.get(path)
        if image is None:
            image = self._images[path] = load_tile(path, self.transform)
        return image


class FewShotDataset(torch.utils.data.Dataset):
    """Few-shot tiles with DA-Fusion mixing.

    Items are (uint8 (3, S, S) at input size, target, key). ``key`` names the exact image
    (source image x one of the eight flips/rotations) so a frozen backbone's features can be
    cached; it is -1 when RandAugment makes every draw unique. Randomness (synthetic draw,
    flips, RandAugment) uses torch's global generator, which ``train`` seeds and DataLoader
    workers derive from, so runs repeat exactly by seed. Batches are normalised with
    ``transform.normalise`` by the training loop.
    """

    def __init__(
        self,
        paths: Sequence[str],
        targets: Sequence[int],
        synthetic: Sequence[Sequence[str]],
        synthetic_prob: float,
        transform: TileTransform,
        randaugment: bool = False,
        augment: bool = True,
    ) -> None:
        self.paths = list(paths)
        self.targets = list(targets)
        self.synthetic = [list(s) for s in synthetic]
        self.synthetic_prob = synthetic_prob
        self.augment = augment
        self.cache = ImageCache(transform)
        all_paths = self.paths + [v for s in self.synthetic for v in s]
        self._ids = {path: k for k, path in enumerate(dict.fromkeys(all_paths))}
        self.randaugment = None
        if randaugment:
            from torchvision.transforms import v2

            self.randaugment = v2.RandAugment()

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        path = self.paths[index]
        variants = self.synthetic[index]
        if variants and torch.rand(()) < self.synthetic_prob:
            path = variants[int(torch.randint(len(variants), ()))]
        image = self.cache.get(path)
        flip = rotation = 0
        if self.augment:
            # Nadir drone tiles have no "up": all eight flips/rotations are equally real.
            flip = int(torch.rand(()) < 0.5)
            rotation = int(torch.randint(4, ()))
            image = torch.rot90(image.flip(-1) if flip else image, rotation, dims=(-2, -1))
        key = self._ids[path] * 8 + flip * 4 + rotation
        if self.randaugment is not None:
            image = self.randaugment(image)
            key = -1
        return image.contiguous(), self.targets[index], key


class FeatureCache:
    """Frozen-backbone features by dataset key: a linear probe then costs one backbone pass
    per distinct (image, flip, rotation) instead of one per draw.
    """

    def __init__(self, backbone: nn.Module) -> None:
        self.backbone = backbone
        self._features: dict[int, torch.Tensor] = {}

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, keys: Sequence[int]) -> torch.Tensor:
        keys = [int(k) for k in keys]
        fresh: dict[int, int] = {}  # key (or -row for uncacheable draws) -> first batch row
        for row, key in enumerate(keys):
            if key < 0:
                fresh[-row - 1] = row
            elif key not in self._features:
                fresh.setdefault(key, row)
        if fresh:
            out = self.backbone(x[list(fresh.values())])
            computed = dict(zip(fresh, out, strict=True))
            self._features.update({k: v for k, v in computed.items() if k >= 0})
        else:
            computed = {}
        return torch.stack(
            [computed[-row - 1] if key < 0 else self._features[key] for row, key in enumerate(keys)]
        )
