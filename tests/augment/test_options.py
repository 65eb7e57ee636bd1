"""`augment` options wired at merge: `--batch-size auto`, `--gradient-checkpointing`, and the
model loader's notes (random weights, fp16 upcast) printed in the summary.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import click
import pytest

from spurge.augment.run import AugmentResult
from spurge.augment.textual_inversion import TokenSettings, token_fingerprint
from spurge.cli import _batch_size, cli


@pytest.mark.parametrize(("text", "value"), [("auto", None), ("AUTO", None), ("3", 3)])
def test_batch_size_accepts_auto_or_a_whole_number(text, value):
    assert _batch_size(None, None, text) == value  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ["0", "-2", "two", "1.5"])
def test_batch_size_refuses_anything_else(text):
    with pytest.raises(click.BadParameter, match="neither auto nor a whole number"):
        _batch_size(None, None, text)  # type: ignore[arg-type]


def test_batch_size_defaults_to_auto_in_the_cli():
    option = next(p for p in cli.commands["augment"].params if p.name == "batch_size")
    assert option.default == "auto"


def test_gradient_checkpointing_reuses_trained_tokens():
    """Checkpointing changes memory, not the tokens: the fingerprint must not change."""
    args = ("present", "<present>", "flowers", ["a" * 64], "m" * 64, ["a photo of {}"])
    plain = TokenSettings(steps=5)
    checkpointed = replace(plain, gradient_checkpointing=True)
    assert token_fingerprint(*args[:4], plain, *args[4:]) == token_fingerprint(
        *args[:4], checkpointed, *args[4:]
    )
    assert token_fingerprint(*args[:4], plain, *args[4:]) != token_fingerprint(
        *args[:4], replace(plain, steps=6), *args[4:]
    )


def test_summary_says_plainly_when_a_random_model_is_in_use():
    note = "RANDOM WEIGHTS: this model was built with random weights; its images are noise"
    result = AugmentResult(
        out_dir=Path("syn"), method="da-fusion", model_id="/models/sd15-random",
        is_tiny_random=False, planned=4, generated=4, reused=0, pruned=0, rejected=0,
        rejected_now=0, tiles=1, seconds=1.0, model_loaded=True, manifest=Path("syn/m"),
        model_notes=[note],
    )  # fmt: skip
    assert f"NOTE: {note}" in result.summary()
