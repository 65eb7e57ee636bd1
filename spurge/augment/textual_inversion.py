"""Textual inversion: learn one new token per class on the labelled training tiles.

DA-Fusion (Trabucco et al.) learns a pseudo-word ``<class>`` per class with Stable Diffusion's
text encoder and UNet frozen; only the new embedding rows train. Tokens are saved one file per
class as safetensors in the diffusers ``learned_embeds`` format (``{token: [vectors, dim]}``),
loadable by ``pipe.load_textual_inversion``; the file's metadata records what it was trained
from, so an identical request re-uses it and a token trained for another model is refused.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from spurge.augment.models import LazyModel, LoadedModel
from spurge.errors import ManifestError, ModelError
from spurge.io.atomic import atomic_path, ensure_writable_dir, sha256_file

if TYPE_CHECKING:  # pydantic/geopandas stay out of a GPU check that only trains steps
    from spurge.config import SpeciesConfig

TOKENS_DIR = "tokens"

#: Extra caption templates next to the config's own (DA-Fusion trains on varied captions).
CAPTION_TEMPLATES = (
    "a photo of {token}",
    "an aerial photo of {token}",
    "a close-up photo of {token}",
)


@dataclass(frozen=True)
class TokenSettings:
    """Textual-inversion hyper-parameters (DA-Fusion's defaults)."""

    num_vectors: int = 4
    steps: int = 1000
    learning_rate: float = 5e-4
    scale_lr: bool = True  # lr x batch size, as the diffusers script and DA-Fusion do
    batch_size: int = 8
    seed: int = 0
    #: Recompute UNet activations in the backward pass: less GPU memory, same tokens. Not part
    #: of a token's fingerprint, so switching it re-uses trained tokens.
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        if self.num_vectors < 1:
            raise ModelError(f"num_vectors must be >= 1, got {self.num_vectors}")
        if self.steps < 1:
            raise ModelError(f"token training steps must be >= 1, got {self.steps}")
        if self.batch_size < 1:
            raise ModelError(f"token batch size must be >= 1, got {self.batch_size}")
        if not self.learning_rate > 0:
            raise ModelError(f"learning rate must be > 0, got {self.learning_rate}")

    @property
    def effective_lr(self) -> float:
        return self.learning_rate * (self.batch_size if self.scale_lr else 1)


@dataclass
class TokenFile:
    """One class's learned token on disk."""

    class_name: str
    token: str
    path: Path
    sha256: str
    trained: bool  # False when an up-to-date file was re-used


@dataclass
class TokenResult:
    tokens: dict[str, TokenFile] = field(default_factory=dict)
    tokens_dir: Path | None = None
    settings: TokenSettings | None = None
    model_id: str = ""
    is_tiny_random: bool = False

    def summary(self) -> str:
        trained = [t.class_name for t in self.tokens.values() if t.trained]
        reused = [t.class_name for t in self.tokens.values() if not t.trained]
        parts = [f"Textual inversion: {len(self.tokens)} class token(s) in {self.tokens_dir}"]
        if trained and self.settings is not None:
            s = self.settings
            parts.append(
                f"trained {', '.join(trained)} ({s.num_vectors} vectors, {s.steps} steps, "
                f"batch {s.batch_size}, lr {s.effective_lr:g})"
            )
        if reused:
            parts.append(f"re-used up-to-date {', '.join(reused)}")
        parts.append(f"model {self.model_id}")
        if self.is_tiny_random:
            parts.append(
                "NOTE: tiny-random is a miniature random-weight model; tokens are for tests"
            )
        return "; ".join(parts) + "."


def token_path(tokens_dir: str | Path, class_name: str) -> Path:
    return Path(tokens_dir) / f"{class_name}.safetensors"


def labelled_train_tiles(tiles_dir: str | Path, config: SpeciesConfig):
    """Labelled ``train``-split rows of the tile manifest, checked for every class."""
    from spurge.io.sources import check_tiles_config
    from spurge.io.tiles import read_tile_manifest

    check_tiles_config(tiles_dir, config)
    tiles = read_tile_manifest(tiles_dir)
    manifest = Path(tiles_dir)
    if len(tiles) == 0:
        raise ManifestError("tile manifest is empty", manifest)
    train = tiles[(tiles["split"] == "train") & tiles["label"].notna()]
    if len(train) == 0:
        raise ManifestError("no labelled tiles in the train split", manifest)
    unknown = sorted(set(train["label"]) - set(config.class_names))
    if unknown:
        raise ManifestError(
            f"labels {unknown} are not classes of config {config.species!r} ({config.class_names})",
            manifest,
        )
    for name in config.class_names:
        if not (train["label"] == name).any():
            raise ManifestError(f"class {name!r} has zero labelled training tiles", manifest)
    return train.reset_index(drop=True)


def _tile_hashes(tiles_dir: str | Path, rows) -> list[str]:
    from spurge.io.tiles import tile_image_path

    return [sha256_file(tile_image_path(tiles_dir, p)) for p in rows["path"]]


def token_fingerprint(
    class_name: str,
    token: str,
    initializer: str,
    tile_hashes: list[str],
    settings: TokenSettings,
    model_hash: str,
    templates: list[str],
) -> str:
    """Hash of everything a class token depends on; a file with the same one is re-used."""
    payload = {
        "class": class_name,
        "token": token,
        "initializer": initializer,
        "tiles": sorted(tile_hashes),
        "settings": {k: v for k, v in settings.__dict__.items() if k != "gradient_checkpointing"},
        "model_hash": model_hash,
        "templates": templates,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _read_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except Exception:  # a corrupt or foreign file: treated as absent by the caller
        return {}


def _load_images(tiles_dir: str | Path, rows, resolution: int) -> torch.Tensor:
    """Tiles as a [-1, 1] float tensor at the model's resolution, plus horizontal flips."""
    from spurge.io.tiles import tile_image_path

    arrays = []
    for rel in rows["path"]:
        path = tile_image_path(tiles_dir, rel)
        try:
            with Image.open(path) as img:
                rgb = img.convert("RGB").resize((resolution, resolution), Image.Resampling.BICUBIC)
        except (OSError, ValueError) as exc:
            raise ManifestError(f"cannot read tile image ({exc})", path) from exc
        arr = np.asarray(rgb, dtype=np.float32) / 127.5 - 1.0
        arrays += [arr, arr[:, ::-1]]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def _add_placeholder_tokens(tokenizer, text_encoder, token: str, initializer: str, n: int):
    """Add ``token, token_1, ...`` initialised from the initializer word; returns their ids."""
    names = [token] + [f"{token}_{i}" for i in range(1, n)]
    added = tokenizer.add_tokens(names)
    if added != n:
        raise ModelError(f"token {token} already exists in the tokenizer; pick another class name")
    init_ids = tokenizer(initializer, add_special_tokens=False).input_ids
    if not init_ids:
        raise ModelError(f"initializer word {initializer!r} has no tokens")
    text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    ids = tokenizer.convert_tokens_to_ids(names)
    weight = text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        weight[ids] = weight[init_ids].mean(dim=0, keepdim=True).expand(n, -1).clone()
    return ids


class TokenTrainer:
    """Learns ``settings.num_vectors`` embedding rows for one token, one step at a time.

    Only the new rows learn (text encoder, UNet and VAE frozen). ``state()`` /
    ``load_state()`` capture everything the next step depends on (the rows, their AdamW
    moments, both random generators, the step), so training interrupted and resumed from a
    checkpoint ends with exactly the rows an uninterrupted run learns. ``gradient_checkpointing``
    trades UNet recomputation for activation memory (real-size SD on a 12 GB card).
    """

    def __init__(
        self,
        loaded: LoadedModel,
        images: torch.Tensor,
        token: str,
        initializer: str,
        captions: list[str],
        settings: TokenSettings,
        gradient_checkpointing: bool = False,
    ) -> None:
        pipe, device = loaded.pipe, loaded.device
        self.loaded, self.settings, self.step_index = loaded, settings, 0
        # Train on copies so the pipeline stays pristine for loading token files afterwards.
        tokenizer = copy.deepcopy(pipe.tokenizer)
        self.text_encoder = copy.deepcopy(pipe.text_encoder).to(device, torch.float32)
        n = settings.num_vectors
        self.ids = _add_placeholder_tokens(tokenizer, self.text_encoder, token, initializer, n)
        self.text_encoder.requires_grad_(False)
        self.embeddings = self.text_encoder.get_input_embeddings()
        self.embeddings.weight.requires_grad_(True)
        self.original = self.embeddings.weight.detach().clone()
        self.keep = torch.ones(len(tokenizer), dtype=torch.bool, device=device)
        self.keep[self.ids] = False
        self.unet = pipe.unet
        self.unet.requires_grad_(False)
        pipe.vae.requires_grad_(False)
        if gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
        self.gradient_checkpointing = gradient_checkpointing
        self._setup_noise(pipe)
        self.generator = torch.Generator().manual_seed(settings.seed)
        self.rng = np.random.default_rng(settings.seed)
        expanded = " ".join([token] + [f"{token}_{i}" for i in range(1, n)])
        self.caption_ids = tokenizer(
            [c.replace(token, expanded) for c in captions],
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(device)
        self._encode(images)
        self.optimizer = torch.optim.AdamW(
            [self.embeddings.weight], lr=settings.effective_lr, weight_decay=1e-2
        )

    def _setup_noise(self, pipe) -> None:
        from diffusers import DDPMScheduler

        keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule")
        self.noise_scheduler: Any = DDPMScheduler(**{k: pipe.scheduler.config[k] for k in keys})
        self.prediction_type = pipe.scheduler.config.get("prediction_type", "epsilon")

    @torch.no_grad()
    def _encode(self, images: torch.Tensor) -> None:
        """Each tile goes through the VAE once; steps sample its posterior."""
        vae, moments = self.loaded.pipe.vae, []
        for chunk in images.split(8):
            dist = vae.encode(chunk.to(self.loaded.device, self.loaded.dtype)).latent_dist
            moments.append((dist.mean.float(), dist.std.float()))
        self.means = torch.cat([m for m, _ in moments])
        self.stds = torch.cat([s for _, s in moments])
        self.scaling = float(vae.config.scaling_factor)

    def step(self) -> float:
        """One optimisation step; returns its loss."""
        device, dtype, gen = self.loaded.device, self.loaded.dtype, self.generator
        pick = torch.from_numpy(self.rng.integers(0, len(self.means), self.settings.batch_size))
        eps = torch.randn(self.means[pick].shape, generator=gen)
        latents = ((self.means[pick] + self.stds[pick] * eps.to(device)) * self.scaling).to(dtype)
        noise = torch.randn(latents.shape, generator=gen).to(device, dtype)
        timesteps = torch.randint(
            0, self.noise_scheduler.config.num_train_timesteps, (len(pick),), generator=gen
        ).to(device)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        rows = torch.from_numpy(self.rng.integers(0, len(self.caption_ids), len(pick)))
        hidden = self.text_encoder(self.caption_ids[rows])[0].to(dtype)
        if self.gradient_checkpointing:
            self.unet.train()  # diffusers checkpoints only in training mode
        pred = self.unet(noisy, timesteps, encoder_hidden_states=hidden).sample
        target = (
            noise
            if self.prediction_type == "epsilon"
            else self.noise_scheduler.get_velocity(latents, noise, timesteps)
        )
        loss = torch.nn.functional.mse_loss(pred.float(), target.float())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        with torch.no_grad():  # only the new rows learn; undo weight decay elsewhere
            self.embeddings.weight[self.keep] = self.original[self.keep]
        self.step_index += 1
        return float(loss.item())

    def finish(self) -> torch.Tensor:
        """The learned rows (float32, CPU); leaves the shared UNet as it found it."""
        if self.gradient_checkpointing:
            self.unet.disable_gradient_checkpointing()
        self.unet.eval()
        return self.embeddings.weight[self.ids].detach().float().cpu().clone()

    def state(self) -> dict:
        """What the next step depends on. Only the new rows' AdamW moments are kept: other
        rows are reset after every step, and Adam is element-wise.
        """
        opt = self.optimizer.state[self.embeddings.weight]
        return {
            "step": self.step_index,
            "rows": self.embeddings.weight[self.ids].detach().cpu().clone(),
            "adam_step": opt["step"].detach().cpu().clone(),
            "exp_avg": opt["exp_avg"][self.ids].detach().cpu().clone(),
            "exp_avg_sq": opt["exp_avg_sq"][self.ids].detach().cpu().clone(),
            "generator": self.generator.get_state(),
            "rng": json.dumps(self.rng.bit_generator.state),
        }

    def load_state(self, state: dict) -> None:
        weight, device = self.embeddings.weight, self.loaded.device
        with torch.no_grad():
            weight[self.ids] = state["rows"].to(device)
        exp_avg, exp_avg_sq = torch.zeros_like(weight), torch.zeros_like(weight)
        exp_avg[self.ids] = state["exp_avg"].to(device)
        exp_avg_sq[self.ids] = state["exp_avg_sq"].to(device)
        self.optimizer.state[weight] = {
            "step": state["adam_step"].clone(),
            "exp_avg": exp_avg,
            "exp_avg_sq": exp_avg_sq,
        }
        self.generator.set_state(state["generator"])
        self.rng.bit_generator.state = json.loads(state["rng"])
        self.step_index = int(state["step"])


def checkpoint_path(token_file: Path) -> Path:
    """Where an interrupted class token's training state waits (next to its token file)."""
    return token_file.with_name(f".{token_file.stem}.partial.pt")


def _train_one(
    trainer: TokenTrainer,
    token_file: Path,
    fingerprint: str,
    checkpoint_every: int,
    progress: bool,
) -> torch.Tensor:
    """Run a trainer to ``settings.steps``, resuming from and saving to its checkpoint."""
    partial = checkpoint_path(token_file)
    if partial.is_file():
        try:
            saved = torch.load(str(partial), map_location="cpu", weights_only=True)
        except Exception:  # a torn or foreign checkpoint: start afresh
            saved = None
        if saved is not None and saved.get("fingerprint") == fingerprint:
            trainer.load_state(saved["state"])
    total = trainer.settings.steps
    bar = tqdm(
        total=total,
        initial=trainer.step_index,
        desc=f"token {token_file.stem}",
        leave=False,
        disable=not progress,
    )
    while trainer.step_index < total:
        loss = trainer.step()
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        due = checkpoint_every and trainer.step_index % checkpoint_every == 0
        if due and trainer.step_index < total:
            with atomic_path(partial) as tmp:
                torch.save({"fingerprint": fingerprint, "state": trainer.state()}, str(tmp))
    bar.close()
    return trainer.finish()


def train_tokens(
    tiles_dir: str | Path,
    config: SpeciesConfig,
    out_dir: str | Path,
    model: str | LoadedModel | LazyModel = "tiny-random",
    settings: TokenSettings | None = None,
    device: str | None = "auto",
    progress: bool = True,
    force: bool = False,
    gradient_checkpointing: bool = False,
    checkpoint_every: int = 100,
) -> TokenResult:
    """Learn ``<class>`` tokens on the labelled train tiles; write ``out_dir/tokens/*.safetensors``.

    A token file whose recorded fingerprint (tiles, settings, model, initializer) matches is
    re-used without loading the model; ``force`` retrains anyway. Training saves its state
    every ``checkpoint_every`` steps; an interrupted run resumes from it (same fingerprint
    only) and ends with the rows an uninterrupted run learns.
    """
    from safetensors.torch import save_file

    settings = settings or TokenSettings()
    train = labelled_train_tiles(tiles_dir, config)
    if isinstance(model, str):
        model = LazyModel(model, device=device)
    model_id, model_hash = model.model_id, model.model_hash
    tokens_dir = ensure_writable_dir(Path(out_dir) / TOKENS_DIR)
    templates = [config.prompt_template, *CAPTION_TEMPLATES]
    result = TokenResult(
        tokens_dir=tokens_dir,
        settings=settings,
        model_id=model_id,
        is_tiny_random=model_id == "tiny-random",
    )
    for spec in config.classes:
        token = config.token(spec.name)
        rows = train[train["label"] == spec.name]
        fingerprint = token_fingerprint(
            spec.name,
            token,
            spec.initializer,
            _tile_hashes(tiles_dir, rows),
            settings,
            model_hash,
            templates,
        )
        path = token_path(tokens_dir, spec.name)
        if not force and path.is_file() and _read_metadata(path).get("fingerprint") == fingerprint:
            result.tokens[spec.name] = TokenFile(spec.name, token, path, sha256_file(path), False)
            continue
        if force:
            checkpoint_path(path).unlink(missing_ok=True)
        loaded = model if isinstance(model, LoadedModel) else model.get()
        images = _load_images(tiles_dir, rows, loaded.resolution)
        captions = [t.format(token=token) for t in templates]
        trainer = TokenTrainer(
            loaded, images, token, spec.initializer, captions, settings, gradient_checkpointing
        )
        vectors = _train_one(trainer, path, fingerprint, checkpoint_every, progress)
        metadata = {
            "fingerprint": fingerprint,
            "class": spec.name,
            "token": token,
            "initializer": spec.initializer,
            "model_id": model_id,
            "model_hash": model_hash,
            "num_tiles": str(len(rows)),
            "settings": json.dumps(settings.__dict__, sort_keys=True),
        }
        with atomic_path(path) as tmp:
            save_file({token: vectors.contiguous()}, str(tmp), metadata=metadata)
        checkpoint_path(path).unlink(missing_ok=True)
        result.tokens[spec.name] = TokenFile(spec.name, token, path, sha256_file(path), True)
    return result


def load_tokens(
    loaded: LoadedModel, tokens_dir: str | Path, config: SpeciesConfig
) -> dict[str, str]:
    """Load every class token file into the pipeline; returns ``{class: sha256}``.

    A missing file, a file holding another token, a width that does not match the text
    encoder, or a token trained for another model is a :class:`ModelError` naming the file.
    """
    from safetensors.torch import load_file

    pipe = loaded.pipe
    width = pipe.text_encoder.get_input_embeddings().weight.shape[1]
    hashes: dict[str, str] = {}
    state_dicts, names = [], []
    for name in config.class_names:
        token = config.token(name)
        path = token_path(tokens_dir, name)
        if not path.is_file():
            raise ModelError(
                f"token file for class {name!r} is missing; run `spurge augment "
                "--train-tokens-only` or drop --tokens",
                path,
            )
        try:
            state = load_file(str(path))
        except Exception as exc:
            raise ModelError(f"not a safetensors token file ({type(exc).__name__})", path) from exc
        if list(state) != [token]:
            raise ModelError(f"holds tokens {list(state)}, expected exactly {token!r}", path)
        vectors = state[token]
        if vectors.ndim != 2 or vectors.shape[1] != width:
            raise ModelError(
                f"token shape {tuple(vectors.shape)} does not fit this model's text encoder "
                f"(width {width})",
                path,
            )
        trained_for = _read_metadata(path).get("model_hash")
        if trained_for and trained_for != loaded.model_hash:
            raise ModelError(
                f"token was trained for model {_read_metadata(path).get('model_id')!r} "
                f"(hash {trained_for[:12]}), not {loaded.model_id!r}",
                path,
            )
        state_dicts.append({token: vectors.to(loaded.dtype)})
        names.append(token)
        hashes[name] = sha256_file(path)
    if any(t in pipe.tokenizer.get_vocab() for t in names):
        pipe.unload_textual_inversion()  # a previous load in this process: replace it
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the embedding-resize notice is noise for users here
    try:
        for token, state in zip(names, state_dicts, strict=True):
            pipe.load_textual_inversion(state, token=token)
    finally:
        hf_logging.set_verbosity(verbosity)
    return hashes
