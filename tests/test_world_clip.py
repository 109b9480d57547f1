"""The bundled synthetic-world CLIP: loads offline, works, and its shipped ground truth is reproducible."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

import clipviz
from clipviz.world.groundtruth import CONCEPTS, bundled_selectivity, selectivity, zero_shot_accuracy


@pytest.fixture(scope="module")
def model():
    return clipviz.load("world-clip")


def test_loads_offline_through_the_public_path(model):
    assert clipviz.resolve_spec("world-clip")[0] == "open_clip"
    assert model.is_clip and model.n_blocks == 4 and model.d_mlp == 512 and model.prefix_tokens == ("cls",)
    weights = Path(clipviz.bundled_models()["world-clip"]) / "open_clip_model.safetensors"
    assert weights.stat().st_size <= 20 * 2**20
    images = torch.rand(4, 3, 64, 64)
    with torch.no_grad():
        img = model.encode_image(images)
        txt = model.encode_text(["two large red striped triangles on the left", "a small blue ring at the top"])
    assert img.shape == (4, 128) and txt.shape == (2, 128)
    assert torch.isfinite(img).all() and torch.isfinite(txt).all()


def test_zero_shot_colour_accuracy_stays_above_the_bar(model):
    acc = zero_shot_accuracy(model, n=200, seed=123)
    assert acc["colour"] >= 0.95


def test_shipped_ground_truth_matches_a_recomputation(model):
    shipped = bundled_selectivity()
    fresh = selectivity(model, n=600, seed=shipped.seed + 1)
    for hook, table in shipped.auroc.items():
        assert table.shape == fresh.auroc[hook].shape == (512, len(CONCEPTS))
        corr = torch.corrcoef(torch.stack([table.flatten(), fresh.auroc[hook].flatten()]))[0, 1]
        assert corr > 0.9, hook
        for neuron, family, value, _ in shipped.clear(hook):
            concept = CONCEPTS.index((family, value))
            assert fresh.auroc[hook][neuron, concept] > 0.85


def test_demo_writes_a_page_with_visualizations_examples_and_words(tmp_path, capsys):
    from clipviz.apps import demo
    from clipviz.apps.cli import main

    page = demo.run_demo(tmp_path / "demo", per_block=1, steps=4, examples=120, top_k=3, progress=False)
    text = page.read_text()
    sources = re.findall(r"src='([^']+)'", text)
    assert len(sources) == 4 * (1 + 3)  # per block: one visualization and three examples
    for src in sources:
        assert (page.parent / src).is_file()
    assert text.count("Direct-lens words") == 4 and text.count("Ground truth") == 4
    atlas = json.loads((page.parent / "atlas" / "atlas.json").read_text())  # the demo's results, browsable
    assert sorted(atlas["hooks"]) == [f"blocks.{b}.mlp.hook_post" for b in range(4)]
    for entry in atlas["hooks"].values():
        (neuron,) = entry["neurons"]
        assert neuron["visualizations"] and len(neuron["examples"]) == 3 and len(neuron["words"]["direct"]) == 3
    assert "href='atlas/index.html'" in text
    code = main(["demo", "--out", str(tmp_path / "bad"), "--steps", "0"])
    assert code == 2 and "--steps: must be between 1 and 100000" in capsys.readouterr().err
