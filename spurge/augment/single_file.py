"""Single-file Stable Diffusion checkpoints: the original (CompVis/LDM) key layout, checked.

Users download SD 1.x models as one ``.safetensors`` / ``.ckpt`` in the key layout of the
original LDM code (``model.diffusion_model.*``, ``first_stage_model.*``,
``cond_stage_model.transformer.*``). This module

- writes that layout from diffusers modules (:func:`ldm_state_dict`), so tests and benchmarks
  can make files like the downloaded ones;
- checks a file before diffusers sees it (:func:`check_single_file`): what architecture it
  holds (SD 1.x, 2.x, or something else), and whether any SD 1.x weight is missing or has the
  wrong shape, each a one-line :class:`~spurge.errors.ModelError` naming the file;
- names the architecture configs shipped with spurge (``spurge/resources/sd15``) that
  ``from_single_file(config=...)`` needs, so loading never reaches the network.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

from spurge.errors import ModelError

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer.text_model."
#: One key that identifies each family (the same ones diffusers' own detection uses).
SD1_TEXT_KEY = CLIP_PREFIX + "embeddings.position_embedding.weight"
SD2_TEXT_KEY = "cond_stage_model.model.token_embedding.weight"
SDXL_KEY = "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias"
UNET_IN_KEY = UNET_PREFIX + "input_blocks.0.0.weight"


def sd15_config_dir() -> Path:
    """Folder of SD 1.x's diffusers configs (model_index.json, unet/, vae/, ...), no weights."""
    return Path(str(resources.files("spurge.resources") / "sd15"))


def sd15_component_config(name: str) -> dict:
    """``unet``, ``vae``, ``text_encoder`` or ``scheduler`` config of SD 1.x as a dict."""
    folder = sd15_config_dir() / name
    file = "scheduler_config.json" if name == "scheduler" else "config.json"
    return json.loads((folder / file).read_text())


# ------------------------------------------------------------------------------------------
# diffusers -> LDM key names
# ------------------------------------------------------------------------------------------

_RESNET_PARTS = (
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("time_emb_proj", "emb_layers.1"),
    ("conv_shortcut", "skip_connection"),
)
_UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}


def _rename_resnet(rest: str) -> str:
    for new, old in _RESNET_PARTS:
        if rest.startswith(new + "."):
            return old + rest[len(new) :]
    return rest


def _unet_key(key: str, per_block: int, up_has_attn: list[bool]) -> str:
    """One diffusers UNet key in the LDM layout (``per_block`` = layers_per_block)."""
    parts = key.split(".")
    for new, old in _UNET_TOP.items():
        if key.startswith(new + "."):
            return old + key[len(new) :]
    if parts[0] == "down_blocks":
        i = int(parts[1])
        if parts[2] == "downsamplers":
            return f"input_blocks.{(i + 1) * (per_block + 1)}.0.op." + ".".join(parts[5:])
        j, rest = int(parts[3]), ".".join(parts[4:])
        slot = 0 if parts[2] == "resnets" else 1
        rest = _rename_resnet(rest) if slot == 0 else rest
        return f"input_blocks.{1 + i * (per_block + 1) + j}.{slot}.{rest}"
    if parts[0] == "up_blocks":
        i = int(parts[1])
        if parts[2] == "upsamplers":
            index = i * (per_block + 1) + per_block
            return f"output_blocks.{index}.{2 if up_has_attn[i] else 1}." + ".".join(parts[4:])
        j, rest = int(parts[3]), ".".join(parts[4:])
        slot = 0 if parts[2] == "resnets" else 1
        rest = _rename_resnet(rest) if slot == 0 else rest
        return f"output_blocks.{i * (per_block + 1) + j}.{slot}.{rest}"
    if parts[0] == "mid_block":
        j, rest = int(parts[2]), ".".join(parts[3:])
        if parts[1] == "attentions":
            return f"middle_block.1.{rest}"
        return f"middle_block.{2 * j}.{_rename_resnet(rest)}"
    raise ModelError(f"unexpected UNet weight {key!r}; not an SD 1.x/2.x UNet")


_VAE_ATTN = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
}


def _vae_key(key: str, n_blocks: int) -> str:
    """One diffusers VAE key in the LDM layout."""
    side, rest = key.split(".", 1)
    if side not in {"encoder", "decoder"}:
        return key  # quant_conv, post_quant_conv keep their names
    rest = rest.replace("conv_norm_out.", "norm_out.").replace("conv_shortcut.", "nin_shortcut.")
    parts = rest.split(".")
    if parts[0] in {"down_blocks", "up_blocks"}:
        i = int(parts[1])
        level = i if parts[0] == "down_blocks" else n_blocks - 1 - i
        name = "down" if parts[0] == "down_blocks" else "up"
        if parts[2] in {"downsamplers", "upsamplers"}:
            sampler = "downsample" if name == "down" else "upsample"
            return f"{side}.{name}.{level}.{sampler}." + ".".join(parts[4:])
        return f"{side}.{name}.{level}.block.{parts[3]}." + ".".join(parts[4:])
    if parts[0] == "mid_block" and parts[1] == "resnets":
        return f"{side}.mid.block_{int(parts[2]) + 1}." + ".".join(parts[3:])
    if parts[0] == "mid_block" and parts[1] == "attentions":
        inner = ".".join(parts[3:])
        for new, old in _VAE_ATTN.items():
            if inner.startswith(new + "."):
                inner = old + inner[len(new) :]
        return f"{side}.mid.attn_1.{inner}"
    return f"{side}.{rest}"


def ldm_state_dict(unet, vae, text_encoder) -> dict[str, torch.Tensor]:
    """Weights of SD 1.x-style diffusers modules under the original LDM key names."""
    per_block = int(unet.config.layers_per_block)
    up_has_attn = [t.startswith("CrossAttn") for t in unet.config.up_block_types]
    out: dict[str, torch.Tensor] = {}
    for key, value in unet.state_dict().items():
        out[UNET_PREFIX + _unet_key(key, per_block, up_has_attn)] = value
    n_blocks = len(vae.config.block_out_channels)
    for key, value in vae.state_dict().items():
        new = _vae_key(key, n_blocks)
        if ".mid.attn_1." in new and new.endswith(".weight") and value.ndim == 2:
            value = value[:, :, None, None]  # LDM's VAE attention uses 1x1 convolutions
        out[VAE_PREFIX + new] = value
    for key, value in text_encoder.state_dict().items():
        # transformers >= 5.6 flattened CLIPTextModel (no "text_model." prefix).
        out[CLIP_PREFIX + key.removeprefix("text_model.")] = value
    return out


# ------------------------------------------------------------------------------------------
# Checking a file
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SingleFileInfo:
    family: str  # "sd1" or "sd2"
    dtypes: frozenset[str]  # e.g. {"float16"}

    @property
    def half_only(self) -> bool:
        return self.dtypes <= {"float16", "bfloat16"}


def read_shapes(path: Path) -> tuple[dict[str, tuple[int, ...]], set[str]]:
    """``({key: shape}, {dtype names})`` of a checkpoint; safetensors reads only the header."""
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            shapes, dtypes = {}, set()
            with safe_open(str(path), framework="pt") as handle:
                for key in handle.keys():  # noqa: SIM118 (safe_open is not iterable)
                    piece = handle.get_slice(key)
                    shapes[key] = tuple(piece.get_shape())
                    dtypes.add(_dtype_name(piece.get_dtype()))
            return shapes, dtypes
        state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # truncated file, not a checkpoint, pickle refused...
        message = " ".join(str(exc).split())[:160]
        raise ModelError(f"cannot read checkpoint ({type(exc).__name__}: {message})", path) from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    dtypes = {str(v.dtype).removeprefix("torch.") for v in tensors.values()}
    return {k: tuple(v.shape) for k, v in tensors.items()}, dtypes


def _dtype_name(safetensors_dtype: str) -> str:
    names = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64"}
    return names.get(safetensors_dtype, safetensors_dtype.lower())


def expected_sd1_shapes() -> dict[str, tuple[int, ...]]:
    """Every SD 1.x weight (LDM names) with its shape, from modules built on the meta device."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(sd15_component_config("unet"))
        vae = AutoencoderKL.from_config(sd15_component_config("vae"))
        text = CLIPTextModel(CLIPTextConfig(**sd15_component_config("text_encoder")))
    return {k: tuple(v.shape) for k, v in ldm_state_dict(unet, vae, text).items()}


def _family(shapes: dict[str, tuple[int, ...]], path: Path) -> str:
    if SDXL_KEY in shapes or any(k.startswith("conditioner.embedders.") for k in shapes):
        raise ModelError(
            "this is an SDXL checkpoint; spurge augment supports Stable Diffusion 1.x/2.x only",
            path,
        )
    if UNET_IN_KEY not in shapes:
        raise ModelError(
            "not a Stable Diffusion 1.x/2.x checkpoint (no model.diffusion_model UNet weights)",
            path,
        )
    if SD1_TEXT_KEY in shapes or any(k.startswith(CLIP_PREFIX) for k in shapes):
        return "sd1"
    if SD2_TEXT_KEY in shapes or any(k.startswith("cond_stage_model.model.") for k in shapes):
        return "sd2"
    raise ModelError(
        "not a Stable Diffusion 1.x/2.x checkpoint (no CLIP or OpenCLIP text encoder weights)",
        path,
    )


def check_single_file(path: str | Path) -> SingleFileInfo:
    """Architecture and dtypes of a single-file checkpoint; a foreign or incomplete one raises."""
    path = Path(path)
    shapes, dtypes = read_shapes(path)
    family = _family(shapes, path)
    if family == "sd1":
        expected = expected_sd1_shapes()
        missing = sorted(k for k in expected if k not in shapes)
        if missing:
            raise ModelError(
                f"checkpoint is missing {len(missing)} of {len(expected)} SD 1.x weights "
                f"(e.g. {missing[0]}); the file is incomplete or not SD 1.x",
                path,
            )
        wrong = sorted(k for k, s in expected.items() if shapes[k] != s)
        if wrong:
            raise ModelError(
                f"{len(wrong)} weights have shapes of another architecture (e.g. {wrong[0]} "
                f"{shapes[wrong[0]]}, SD 1.x has {expected[wrong[0]]}); not SD 1.x/2.x",
                path,
            )
    else:
        raise ModelError(
            "SD 2.x single-file checkpoints cannot be loaded offline yet; convert it to a "
            "diffusers folder and pass that folder",
            path,
        )
    return SingleFileInfo(family=family, dtypes=frozenset(dtypes))
