"""The CLIP filter keeps exactly the images whose score reaches the threshold.

Images are solid colours built to score high and low under the miniature CLIP; the test
recomputes every score on its own (its own preprocessing, the model's joint forward) and
checks which images the store kept and which ``rejected.parquet`` lists, at thresholds
inside the observed score range.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from spurge.augment import GenerationSettings, augment
from spurge.augment.filters import FilterSettings, build_tiny_clip
from spurge.augment.generate import BatchSampler
from spurge.io.synthetic import read_rejected, read_synthetic_manifest, synthetic_image_path
from tests.builders import make_small_tiles, tiny_config

#: Under the seed-0 tiny CLIP: DARK scores high against both classes' prompts, BRIGHT low,
#: YELLOW high against "absent" and low against "present" (so the right text matters).
DARK, BRIGHT, YELLOW = (19, 4, 44), (148, 184, 216), (208, 171, 0)
COLOURS = (DARK, BRIGHT, YELLOW)
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("clip")
    return root, make_small_tiles(root / "tiles"), tiny_config(), build_tiny_clip(root / "clip")


def independent_scores(clip_dir, texts: dict[str, str]) -> dict[tuple, float]:
    """Cosine similarity of each solid colour with each class's text, computed here."""
    from transformers import CLIPModel, CLIPTokenizer

    model = CLIPModel.from_pretrained(clip_dir).eval()
    tokenizer = CLIPTokenizer.from_pretrained(clip_dir)
    # A solid colour stays solid through resize and crop: pixels are ((c/255) - mean) / std.
    pixels = torch.tensor(
        np.stack(
            [np.broadcast_to(((np.array(c) / 255 - CLIP_MEAN) / CLIP_STD), (32, 32, 3)) for c in
             COLOURS]
        ).transpose(0, 3, 1, 2),
        dtype=torch.float32,
    )  # fmt: skip
    labels = list(texts)
    ids = tokenizer([texts[label] for label in labels], padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=ids.input_ids, attention_mask=ids.attention_mask, pixel_values=pixels)
    sims = (out.image_embeds @ out.text_embeds.T).numpy()  # both unit-normalised by CLIPModel
    return {(c, label): float(sims[i, j]) for i, c in enumerate(COLOURS) for j, label in
            enumerate(labels)}  # fmt: skip


def colour_of(item) -> tuple[int, int, int]:
    return COLOURS[item.seed % 3]


def run_with_threshold(world, out, threshold, monkeypatch) -> dict[str, tuple]:
    """augment with generation replaced by solid colours; returns image_id -> (label, colour)."""
    _, tiles, config, clip = world
    made: dict[str, tuple] = {}

    def solid_colours(self, items):
        for item in items:
            made[item.image_id] = (item.label, colour_of(item))
        return [np.full((64, 64, 3), colour_of(i), np.uint8) for i in items]

    monkeypatch.setattr(BatchSampler, "generate", solid_colours)
    settings = GenerationSettings(method="real-guidance", per_tile=6, steps=2, strengths=(1.0,))
    result = augment(
        tiles,
        config,
        out,
        settings,
        model="tiny-random",
        filter_settings=FilterSettings("clip", str(clip), threshold),
        progress=False,
    )
    assert result.generated + result.rejected_now == len(made) == 6 * 4
    return made


@pytest.mark.parametrize("threshold", [-0.3, -0.15])
def test_clip_filter_keeps_exactly_the_images_at_or_above_threshold(
    world, tmp_path, monkeypatch, threshold
):
    _, _, _, clip = world
    texts = {
        "absent": "a drone photo of leafy spurge absent",
        "present": "a drone photo of leafy spurge with yellow bracts",
    }
    scores = independent_scores(clip, texts)
    values = sorted(scores.values())
    assert values[0] < threshold < values[-1]  # inside the observed range
    # The images were built for this: check the design holds before relying on it.
    assert min(scores[DARK, "absent"], scores[DARK, "present"]) > -0.15 + 0.02
    assert max(scores[BRIGHT, "absent"], scores[BRIGHT, "present"]) < -0.3 - 0.1
    assert scores[YELLOW, "absent"] > -0.3 + 0.05 and scores[YELLOW, "present"] < -0.3 - 0.1
    assert scores[YELLOW, "absent"] < -0.15 - 0.02

    made = run_with_threshold(world, tmp_path / "syn", threshold, monkeypatch)
    assert set(made.values()) == {
        (label, c) for label in texts for c in COLOURS
    }  # every (class, colour) pair was generated at least once
    expected_kept = {i for i, (label, c) in made.items() if scores[c, label] >= threshold}
    expected_rejected = set(made) - expected_kept
    assert expected_kept and expected_rejected

    rows = read_synthetic_manifest(tmp_path / "syn")
    assert set(rows["image_id"]) == expected_kept
    on_disk = {p.stem for p in (tmp_path / "syn" / "images").glob("*/*.png")}
    assert on_disk == expected_kept
    for row in rows.itertuples():
        pixels = np.asarray(Image.open(synthetic_image_path(tmp_path / "syn", row.path)))
        assert (pixels == np.array(made[row.image_id][1], np.uint8)).all()
    rejected = read_rejected(tmp_path / "syn").set_index("image_id")
    assert set(rejected.index) == expected_rejected
    expected_scores = pd.Series({i: scores[made[i][1], made[i][0]] for i in expected_rejected})
    np.testing.assert_allclose(
        rejected.loc[expected_scores.index, "score"], expected_scores, atol=1e-5
    )
    assert all(f.endswith(f":{threshold:g}") for f in rejected["filter"])
