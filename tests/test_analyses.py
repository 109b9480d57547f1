"""The analyses of "What do Vision Transformers Learn?": known answers on constructed models, and every study on
world-clip at small sizes (CPU, offline)."""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import pytest
import torch

import clipviz
from clipviz.analysis.studies import STUDIES, background, cls, load_probe, pooling, semantic, spatial
from clipviz.errors import ClipvizError

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def world_clip():
    return clipviz.load("world-clip")


@pytest.fixture(scope="module")
def local_spec(tmp_path_factory):
    from analysis_models import build_local_vit

    return build_local_vit(tmp_path_factory.mktemp("analysis") / "local-vit")


@pytest.fixture(scope="module")
def probe32():
    return load_probe("world", (32, 32), 32)


# ------------------------------------------------------------------------------------------------ world masks
def test_world_foreground_masks_are_exact():
    from clipviz import world
    from clipviz.world.probe import foreground_masks

    n, seed = 40, 3
    batch = world.generate(n, seed=seed)
    masks = foreground_masks(n, seed=seed)
    # Re-rendered from the same random state with every object green: outside the masks nothing changes.
    rng = np.random.default_rng(seed)
    factors = world.sample_factors(n, rng)
    green = world.render({**factors, "colour": np.full(n, world.FACTORS["colour"].index("green"))}, rng)
    assert (green[~masks] == batch.images[~masks]).all()
    # Inside the masks solid objects have their palette colour (plus the generator's small colour noise).
    palette = np.array(list(world.COLOURS.values())) * 255
    for i in np.flatnonzero(batch.factors["texture"] == 0):
        pixels = batch.images[i][masks[i]].astype(float)
        assert np.abs(pixels - palette[batch.factors["colour"][i]]).max() < 40
    assert masks.any((1, 2)).all()


# ------------------------------------------------------------------------------------------------ known answers
def test_local_attention_keeps_position_and_isolates_cls(local_spec, probe32):
    from analysis_models import load_local_vit

    model = load_local_vit(local_spec)
    sp = spatial(model, probe32, objective_targets=2, objective_neurons=2, objective_steps=8, progress_bar=False)
    assert sp.blocks == [-1, 0, 1, 2]
    assert min(sp.position_accuracy) >= 0.99  # decodable in every block
    assert sp.objective_hit == [1.0, 1.0, 1.0]  # the pattern lands at its patch in every block
    pl = pooling(model, probe32, gradient_images=4, queries=2, progress_bar=False)
    assert max(pl.attention_ratio) < 1e-6 and min(pl.gradient_self_share) > 0.999
    c = cls(model, probe32, progress_bar=False)
    assert min(c.cls_isolation) > 1 - 1e-6  # zero attention to patches: the extreme value, 1
    assert c.summary()["cls_isolation_min"] > 1 - 1e-6
    assert max(c.ablation_effect_block) < 1e-5  # the patches never read the CLS token


def test_last_block_averaging_loses_position_exactly_there(local_spec, probe32):
    from analysis_models import load_local_vit

    model = load_local_vit(local_spec, average_last=True)
    sp = spatial(model, probe32, objective_targets=1, objective_neurons=2, objective_steps=8, progress_bar=False)
    assert min(sp.position_accuracy[:-1]) >= 0.99
    assert sp.position_accuracy[-1] == pytest.approx(sp.chance)  # every token of the last block is the same
    assert sp.summary()["position_lost_in_last"] and sp.summary()["position_kept_before_last"]
    assert sp.objective_hit[:-1] == [1.0, 1.0] and sp.objective_hit[-1] < 0.5
    pl = pooling(model, probe32, gradient_images=4, queries=2, progress_bar=False)
    assert pl.attention_ratio[-1] == pytest.approx(1.0, abs=1e-5) and max(pl.attention_ratio[:-1]) < 1e-6
    assert pl.gradient_ratio[-1] > 0.9 and max(pl.gradient_ratio[:-1]) < 1e-6
    assert pl.summary()["last_block_most_global"]


def test_planted_colour_neuron_is_visual(tmp_path):
    from planted import RED, build_planted_vit

    model = clipviz.load(build_planted_vit(tmp_path / "planted"))
    probe = load_probe("world", (64, 64), 400)
    result = semantic(model, probe, hooks=["blocks.0.mlp.hook_post"], neurons=2, progress_bar=False)
    row = next(r for r in result.neurons if r["neuron"] == RED)
    assert row["label"] == "visual" and row["r2_visual"] > 0.6, row


def test_planted_concept_neuron_is_semantic():
    """World-clip with neuron 0 of block 3 replaced by a linear read-out of the concept "ring" from the block's
    MLP input (a ridge direction fitted on other world images, in GELU's linear range)."""
    from clipviz.world.probe import world_probe

    model = clipviz.load("world-clip")
    fit = world_probe(300, seed=1)
    parts = model.blocks[3]
    _, cache = model.run_with_cache(fit.images, ["blocks.3.hook_resid_mid"])
    x = parts.ln2(cache["blocks.3.hook_resid_mid"])[:, 1:].mean(1).double()
    y = torch.from_numpy(fit.concepts[:, fit.concept_names.index("shape=ring")]).double()
    xc = x - x.mean(0)
    w = torch.linalg.solve(
        xc.T @ xc + 1e-2 * len(x) * torch.eye(x.shape[1], dtype=torch.float64), xc.T @ (y - y.mean())
    )
    with torch.no_grad():
        parts.fc1.weight[0] = w.float()
        parts.fc1.bias[0] = float(y.mean() - x.mean(0) @ w) + 10.0
    probe = load_probe("world", (64, 64), 300)
    result = semantic(model, probe, hooks=["blocks.3.mlp.hook_post"], neurons=1, progress_bar=False)
    row = result.neurons[0]
    assert row["label"] == "semantic" and row["top_concept"] == "shape=ring", row


# ------------------------------------------------------------------------------------------------ world-clip
def _analyze(argv):
    from clipviz.apps.commands import analyze

    parser = argparse.ArgumentParser(prog="clipviz")
    analyze.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["analyze", *argv])
    return args.func(args)


def test_every_study_runs_on_world_clip_from_the_command(tmp_path, capsys):
    assert (
        _analyze(
            [
                "world-clip",
                "--study",
                "all",
                "--out",
                str(tmp_path),
                "--samples",
                "32",
                "--steps",
                "0",
                "--no-progress",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    for name in STUDIES:
        data = json.loads((tmp_path / f"{name}.json").read_text())
        assert data["study"] == name and data["claim"] and "2212.06727" in data["paper"]
        assert data["model"] == "world-clip" and data["dataset"] == "world:32" and data["summary"]
        assert (tmp_path / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
        assert f"wrote {tmp_path / name}.json" in out
    spatial_data = json.loads((tmp_path / "spatial.json").read_text())
    assert len(spatial_data["position_accuracy"]) == 5 and min(spatial_data["position_accuracy"]) > 0.5
    sem = json.loads((tmp_path / "semantic.json").read_text())
    assert len(sem["neurons"]) == 4 * 512 and sem["semantic_features"] == "concepts"
    bg = json.loads((tmp_path / "background.json").read_text())
    # The world's truth: shape cannot be read from the background alone, the background type can.
    assert bg["accuracy"]["background"]["shape"] < 0.4 and bg["accuracy"]["full"]["colour"] > 0.9
    c = json.loads((tmp_path / "cls.json").read_text())
    # With the patches dropped before block 0 the CLS token never sees the image: about chance.
    assert abs(c["cls_alone_accuracy"][0] - c["chance_accuracy"]) < 0.2 and c["full_accuracy"] > 0.8
    freq = json.loads((tmp_path / "frequency.json").read_text())
    assert len(freq["low_pass"]) == len(freq["cutoffs"]) == len(freq["high_pass"])


def test_spatial_objective_on_world_clip(world_clip):
    probe = load_probe("world", world_clip.image_size, 8)
    result = spatial(world_clip, probe, objective_targets=1, objective_neurons=1, objective_steps=4, progress_bar=False)
    assert result.objective_blocks == [0, 1, 2, 3]
    assert all(0 <= v <= 1 for v in result.objective_hit + result.objective_share)


# ------------------------------------------------------------------------------------------------ data sets
def test_probe_from_folder_and_saved_dataset_with_masks(tmp_path, world_clip):
    import datasets
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls_name in ("cats", "dogs"):
        (tmp_path / "folder" / cls_name).mkdir(parents=True)
        for k in range(3):
            Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(
                tmp_path / "folder" / cls_name / f"{k}.png"
            )
    probe = load_probe(str(tmp_path / "folder"), (64, 64), 100)
    assert probe.images.shape == (6, 3, 64, 64) and probe.tasks[0].classes == ["cats", "dogs"]
    assert probe.tasks[0].labels.tolist() == [0, 0, 0, 1, 1, 1]
    with pytest.raises(ClipvizError, match="no foreground masks"):
        background(world_clip, probe, progress_bar=False)

    masks = [np.zeros((16, 16), np.uint8) for _ in range(4)]
    for m in masks:
        m[4:12, 4:12] = 255
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "mask": datasets.Image(),
            "label": datasets.ClassLabel(names=["red", "blue"]),
            "caption": datasets.Value("string"),
        }
    )
    ds = datasets.Dataset.from_dict(
        {
            "image": [Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)) for _ in range(4)],
            "mask": [Image.fromarray(m) for m in masks],
            "label": [0, 1, 0, 1],
            "caption": ["a red thing", "a blue thing", "red", "blue"],
        },
        features=features,
    )
    ds.save_to_disk(str(tmp_path / "saved"))
    probe = load_probe(str(tmp_path / "saved"), (64, 64), 3, mask_column="mask")
    assert len(probe) == 3 and probe.masks.shape == (3, 64, 64)
    assert probe.masks[0, 20:44, 20:44].all() and not probe.masks[0, :10].any()
    assert probe.tasks[0].prompts == ["a photo of a red.", "a photo of a blue."]
    result = background(world_clip, probe, progress_bar=False)
    assert set(result.accuracy) == {"full", "foreground", "background"}


def test_errors_are_one_line(tmp_path, world_clip, monkeypatch):
    import transformers as T

    T.SiglipVisionModel(
        T.SiglipVisionConfig(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            image_size=32,
            patch_size=8,
        )
    ).save_pretrained(tmp_path / "siglip")
    T.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        tmp_path / "siglip"
    )
    siglip = clipviz.load(f"hf:{tmp_path / 'siglip'}")
    probe = load_probe("world:8", siglip.image_size, 8)
    with pytest.raises(ClipvizError, match="no CLS token"):
        cls(siglip, probe, progress_bar=False)
    with pytest.raises(ClipvizError, match="neither a text tower nor class logits"):
        background(siglip, probe, progress_bar=False)
    with pytest.raises(ClipvizError, match="world or world:<number"):
        load_probe("world:many", (64, 64), 8)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ClipvizError, match="pip install matplotlib"):
        _analyze(["world-clip", "--study", "cls", "--out", str(tmp_path / "x"), "--samples", "4"])


def test_caption_words_and_semantic_features():
    from clipviz.analysis.studies.common import Probe, caption_words

    words, vocab = caption_words(["A red ball.", "a red cube", "the red ball", "a ball", None], min_count=2)
    assert vocab == ["ball", "red"]
    assert words.tolist() == [[1, 1], [0, 1], [1, 1], [1, 0], [0, 0]]
    probe = Probe("captions", torch.zeros(5, 3, 8, 8), captions=["a red ball"] * 3 + ["blue"] * 2)
    assert probe.semantic_features()[2] == "caption words"
    with pytest.raises(ClipvizError, match="no captions, labels or concepts"):
        Probe("bare", torch.zeros(2, 3, 8, 8)).semantic_features()


def test_studies_run_on_a_timm_classifier_with_registers(tmp_path):
    """Any model: a timm ViT with a CLS token, 2 registers and class logits (accuracy from the logits)."""
    import timm
    from timm.models import save_for_hf

    net = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=32,
        patch_size=8,
        depth=2,
        embed_dim=32,
        num_heads=2,
        reg_tokens=2,
        num_classes=8,
    )
    save_for_hf(net.eval(), str(tmp_path / "timm"), safe_serialization=True)
    model = clipviz.load(f"timm:{tmp_path / 'timm'}")
    assert model.layout(0).n_prefix == 3
    probe = load_probe("world", model.image_size, 12)
    for name, study in STUDIES.items():
        options = {"objective_targets": 0} if name == "spatial" else {}
        result = study(model, probe, progress_bar=False, **options)
        result.save(tmp_path / "out")
        assert (tmp_path / "out" / f"{name}.json").is_file()
    c = cls(model, probe, progress_bar=False)
    assert all(0 <= v <= 1 for v in c.cls_isolation) and len(c.cls_alone_accuracy) == 2


def test_the_world_probe_is_rendered_at_a_square_size_so_its_masks_stay_exact():
    """At 96 px the world is drawn at 96 px, not drawn at 64 and resized, with the masks of that drawing."""
    from clipviz.world import scene as world
    from clipviz.world.probe import PROBE_SEED, foreground_masks, world_probe

    probe = world_probe(6, size=(96, 96))
    drawn = world.generate(6, seed=PROBE_SEED, single_object=True, size=96)
    assert torch.equal(probe.images, torch.from_numpy(drawn.images).permute(0, 3, 1, 2).float() / 255.0)
    assert torch.equal(probe.masks, torch.from_numpy(foreground_masks(6, seed=PROBE_SEED, size=96, single_object=True)))
    assert probe.masks.any(dim=(1, 2)).all() and not probe.masks.all(dim=(1, 2)).any()
    with pytest.raises(ClipvizError, match="are square"):  # not square: neither stretched nor cropped
        world_probe(6, size=(48, 64))
