"""Finished work is reused only for the same weights, images and vocabulary, never for the same names alone.

A result on disk is identified by what decides it: a hash of the model's weights (``HookedVisionModel.identity``),
the images behind a dataset's name (``Source.identity``) and a vocabulary's content. Each test changes one of them
behind an unchanged name and checks that the answer is the one a fresh run gives.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import clipviz
from clipviz.analysis.examples import mine_examples_resumable, write_thumbnails
from clipviz.data.sources import open_source
from clipviz.errors import ClipvizError
from clipviz.results import read_visualization_meta
from clipviz.visualization.visualize import visualize

HOOK = "blocks.1.mlp.hook_post"


def _tower(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2
    ).eval()


def _photos(folder, seed: int, n: int = 6) -> None:
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(folder / f"{i}.png")


def test_identity_follows_the_weights_even_an_edit_in_place():
    tower = _tower(0)
    model = clipviz.wrap(tower)
    before = model.identity()
    assert clipviz.wrap(_tower(0)).identity() == before  # the same weights: the same identity
    with torch.no_grad():
        tower.blocks[1].mlp.fc2.weight.data[0, 0] += 1.0  # the ablation idiom: .data, no version bump
    assert model.identity()["weights"] != before["weights"]


def test_visualize_renders_anew_for_other_weights_behind_the_same_spec(tmp_path):
    """Two towers wrapped in one process share a spec ('wrapped:...'); the second is never answered from the
    first's images."""
    out = tmp_path / "vis"
    base, tuned = clipviz.wrap(_tower(0)), clipviz.wrap(_tower(1))
    assert base.spec == tuned.spec
    first = visualize(base, HOOK, [0], recipe="default", steps=3, copies=1, progress=False, out=out)[0]
    again = visualize(tuned, HOOK, [0], recipe="default", steps=3, copies=1, progress=False, out=out)[0]
    fresh = visualize(tuned, HOOK, [0], recipe="default", steps=3, copies=1, progress=False)[0]
    assert again.meta["objective_end"] == pytest.approx(fresh.meta["objective_end"])
    assert again.meta["objective_end"] != pytest.approx(first.meta["objective_end"])
    assert read_visualization_meta(again.path)["weights"] == tuned.identity()["weights"]


def test_examples_are_mined_anew_when_the_images_behind_a_folder_change(tmp_path):
    model = clipviz.wrap(_tower(0))
    photos, out = tmp_path / "photos", tmp_path / "examples"
    _photos(photos, seed=0)
    old = mine_examples_resumable(model, HOOK, open_source(str(photos)), out, neurons=[0, 1], top_k=2, progress=False)
    _photos(photos, seed=1)  # the same names, other images
    source = open_source(str(photos))
    new = mine_examples_resumable(model, HOOK, source, out, neurons=[0, 1], top_k=2, progress=False)
    fresh = mine_examples_resumable(model, HOOK, source, tmp_path / "fresh", neurons=[0, 1], top_k=2, progress=False)
    torch.testing.assert_close(new.scores, fresh.scores)
    assert not torch.allclose(new.scores, old.scores)


def test_a_file_replaced_keeping_its_size_and_modification_time_changes_the_folders_identity(tmp_path):
    """Found from outside: identity was path + size + mtime, so an image replaced by another of the same size with
    its mtime kept (``cp -p``, rsync -t) left the folder's results looking current."""
    import os

    photos = tmp_path / "photos"
    _photos(photos, seed=0)
    before = open_source(str(photos)).identity
    assert open_source(str(photos)).identity == before  # nothing changed: the same identity
    target = photos / "0.png"
    stat = target.stat()
    data = bytearray(target.read_bytes())
    data[-20] ^= 0xFF  # other bytes, the same size
    target.write_bytes(bytes(data))
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # the old modification time kept
    assert target.stat().st_size == stat.st_size and target.stat().st_mtime_ns == stat.st_mtime_ns
    assert open_source(str(photos)).identity != before


def test_two_datasets_mined_into_one_folder_keep_their_own_thumbnails(tmp_path):
    model = clipviz.wrap(_tower(0))
    a, b, out = tmp_path / "a", tmp_path / "b", tmp_path / "out"
    _photos(a, seed=0)
    _photos(b, seed=1)
    paths = {}
    for folder in (a, b):
        source = open_source(str(folder))
        result = mine_examples_resumable(model, HOOK, source, out / folder.name, neurons=[0], top_k=2, progress=False)
        write_thumbnails(source, result, out, model=model)
        paths[folder.name] = {i: result.settings for i in result.indices.flatten().tolist()}
    from clipviz.results import thumbnail_path

    for name, wanted in paths.items():
        for index, settings in wanted.items():
            thumb = np.asarray(Image.open(thumbnail_path(out, index, settings)).convert("RGB"), dtype=np.float32)
            photo = model.preprocess_pil(Image.open(tmp_path / name / f"{index}.png")).permute(1, 2, 0).numpy() * 255
            assert np.abs(thumb - photo).mean() < 2, f"thumbnail {index} of {name} is another dataset's image"


def test_stored_activations_of_other_weights_are_refused(tmp_path):
    from clipviz.analysis.dissect import stored_activations

    model = clipviz.wrap(_tower(0))
    photos = tmp_path / "photos"
    _photos(photos, seed=0)
    out = tmp_path / "examples"
    mine_examples_resumable(
        model, HOOK, open_source(str(photos)), out, neurons=[0], top_k=2, progress=False, keep_activations=True
    )
    assert stored_activations(out, HOOK, model=model).activations.shape == (6, 1)
    other = clipviz.wrap(copy.deepcopy(_tower(1)))
    with pytest.raises(ClipvizError, match="other weights"):
        stored_activations(out, HOOK, model=other)
    _photos(photos, seed=1)
    with pytest.raises(ClipvizError, match="not those the activations"):
        stored_activations(out, HOOK, model=model)


def test_a_sweep_plan_changes_with_the_weights_the_images_and_the_vocabulary_file(tmp_path):
    """The keys a sweep records its finished stages with: each changes when what decides the stage changes."""
    from clipviz.apps.sweep import _unit_key, make_plan

    model = clipviz.load("world-clip")
    vocab = tmp_path / "words.txt"
    vocab.write_text("circle\nsquare\nstar\n")  # words world-clip's text tower learned
    photos = tmp_path / "photos"
    _photos(photos, seed=0)

    def keys() -> dict[str, str]:
        plan = make_plan(
            model,
            tmp_path / "out",
            blocks="3",
            neurons="0:2",
            dataset=str(photos),
            vocab=str(vocab),
            templates="a {}",
            top_k=2,
            words=2,
        )
        hook = plan.hooks[0]
        return {stage: _unit_key(plan, f"{stage}/{hook}") for stage in ("examples", "concepts-direct")}

    first = keys()
    assert keys() == first
    vocab.write_text("red\ngreen\nblue\n")
    edited = keys()
    assert edited["concepts-direct"] != first["concepts-direct"]
    _photos(photos, seed=1)
    replaced = keys()
    assert replaced["examples"] != edited["examples"]
    with torch.no_grad():
        next(model.backend.native.parameters()).data.mul_(1.01)
    assert keys()["examples"] != replaced["examples"]


def test_a_saved_dataset_dict_is_a_dataset_not_a_folder_of_images(tmp_path):
    import datasets

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)) for _ in range(3)]
    split = datasets.Dataset.from_dict({"image": images}, features=datasets.Features({"image": datasets.Image()}))
    datasets.DatasetDict({"train": split, "test": split.select([0])}).save_to_disk(str(tmp_path / "ds"))
    assert open_source(str(tmp_path / "ds")).length == 3
    test = open_source(str(tmp_path / "ds"), split="test")
    assert test.length == 1
    # what was mined from a split is read back from that split, not from the default one
    from clipviz.analysis.dissect import stored_activations

    model = clipviz.wrap(_tower(0))
    out = tmp_path / "examples"
    mine_examples_resumable(model, HOOK, test, out, neurons=[0], top_k=1, progress=False, keep_activations=True)
    stored = stored_activations(out, HOOK, model=model)
    assert stored.options["split"] == "test" and open_source(stored.source, **stored.options).length == 1


def test_a_weight_edited_through_data_between_two_renderings_is_seen():
    """The oneDNN path packs each weight once per rendering: an ablation made through ``.data`` (which PyTorch's
    version counter does not see) after a rendering changes the next one exactly as on a never-rendered copy."""
    model = clipviz.wrap(_tower(0))
    visualize(model, HOOK, [0], recipe="default", steps=3, copies=1, progress=False)
    twin = copy.deepcopy(model)
    for m in (model, twin):
        m.backend.native.blocks[0].mlp.fc1.weight.data[:32] = 0
    after = visualize(model, HOOK, [0], recipe="default", steps=3, copies=1, progress=False)[0]
    fresh = visualize(twin, HOOK, [0], recipe="default", steps=3, copies=1, progress=False)[0]
    assert after.meta["objective_end"] == pytest.approx(fresh.meta["objective_end"], rel=1e-5)


def test_an_atlas_never_shows_two_sets_of_weights_as_one_model(tmp_path):
    """A folder rendered again with new weights for some neurons keeps the others' old images: the atlas refuses
    the mixture, and a sweep's atlas (``only``: its plan's neurons) shows just what the rerun made."""
    from clipviz.apps.atlas import build_atlas, collect

    out = tmp_path / "vis"
    visualize(clipviz.wrap(_tower(0)), HOOK, [0, 1], recipe="default", steps=2, copies=1, progress=False, out=out)
    visualize(clipviz.wrap(_tower(1)), HOOK, [0], recipe="default", steps=2, copies=1, progress=False, out=out)
    with pytest.raises(ClipvizError, match="different weights"):
        build_atlas(out, tmp_path / "site")
    assert set(collect(out, only={HOOK: [0]}).neurons[HOOK]) == {0}


def test_a_config_or_processor_edited_behind_the_same_weights_is_rendered_anew(tmp_path):
    """Found from outside (2026-12-02): a model's activation (``hidden_act``) or its image processor's resize
    changes its results with the weights unchanged; finished work was reused for them."""
    import json

    import transformers as T

    directory = tmp_path / "vit"
    config = T.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8)
    torch.manual_seed(0)
    T.ViTModel(config).eval().save_pretrained(directory)
    T.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(directory)
    out = tmp_path / "vis"
    spec = f"hf:{directory}"
    first = visualize(clipviz.load(spec), HOOK, [0], recipe="default", steps=3, copies=1, progress=False, out=out)[0]
    weights = {"config": clipviz.load(spec).identity()["weights"]}
    for name, edit in (("config.json", {"hidden_act": "relu"}), ("preprocessor_config.json", {"resample": 0})):
        path = directory / name
        path.write_text(json.dumps({**json.loads(path.read_text()), **edit}))
        model = clipviz.load(spec)
        assert model.identity()["weights"] not in weights.values(), name
        weights[name] = model.identity()["weights"]
    model = clipviz.load(spec)
    again = visualize(model, HOOK, [0], recipe="default", steps=3, copies=1, progress=False, out=out)[0]
    fresh = visualize(model, HOOK, [0], recipe="default", steps=3, copies=1, progress=False)[0]
    assert again.meta["objective_end"] == pytest.approx(fresh.meta["objective_end"])
    assert again.meta["objective_end"] != pytest.approx(first.meta["objective_end"])


def test_examples_of_a_folder_named_relatively_guide_from_any_working_folder(tmp_path, monkeypatch):
    """Found from outside (2026-12-02): the folder was stored as typed ('photos'), so the examples could not be
    used as a guide from another working folder (and 'photos' was then looked up on the Hub)."""
    from clipviz.apps.cli import main

    (tmp_path / "work").mkdir()
    _photos(tmp_path / "work" / "photos", seed=0, n=40)
    monkeypatch.chdir(tmp_path / "work")
    args = ["examples", "world-clip", "--hook", HOOK, "--neurons", "0:2", "--dataset", "photos", "--top-k", "4"]
    assert main([*args, "--workers", "0", "--out", "ex"]) == 0
    monkeypatch.chdir(tmp_path)
    vis = ["visualize", "world-clip", "--hook", HOOK, "--neurons", "0", "--steps", "2", "--guide", "work/ex"]
    assert main([*vis, "--out", "vis"]) == 0
    assert any((tmp_path / "vis").rglob("*.data-guided.png"))
