"""Dataset examples: a planted red neuron finds the red images and the red patch; bad data is handled."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from planted import RED, build_planted_vit

import clipviz
from clipviz.analysis.examples import ExampleResult, mine_examples
from clipviz.apps.cli import main as cli_main
from clipviz.data import open_source
from clipviz.errors import ClipvizError

HOOK = "blocks.0.mlp.hook_post"


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return clipviz.load(build_planted_vit(tmp_path_factory.mktemp("planted-examples")))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """skimage/sklearn photos, three grey images with one red square each, and some bad files."""
    from skimage import data
    from sklearn.datasets import load_sample_images

    root = tmp_path_factory.mktemp("images")
    photos = {
        "astronaut": data.astronaut(),
        "chelsea": data.chelsea(),
        "coffee": data.coffee(),
        "rocket": data.rocket(),
        "camera": data.camera(),
        "coins": data.coins(),
        **{f"sample{i}": img for i, img in enumerate(load_sample_images().images)},
    }
    for name, array in photos.items():
        Image.fromarray(array).save(root / f"{name}.png")
    for k, (top, left) in enumerate([(8, 16), (0, 0), (24, 8)]):  # 32x32: the red square fills one 8x8 patch
        img = np.full((32, 32, 3), 128, dtype=np.uint8)
        img[top : top + 8, left : left + 8] = (255, 0, 0)
        Image.fromarray(img).save(root / f"red{k}.png")
    Image.fromarray(np.zeros((40, 40, 4), dtype=np.uint8)).save(root / "rgba.png")  # RGBA: converted
    Image.fromarray(np.zeros((3, 3), dtype=np.uint8)).save(root / "tiny_gray.png")  # grayscale, tiny
    Image.new("CMYK", (50, 50), (255, 0, 0, 0)).save(root / "cmyk.jpg")  # CMYK cyan: converted to RGB
    (root / "broken.jpg").write_bytes(b"not an image at all")
    good = Image.fromarray(np.full((64, 64, 3), 200, dtype=np.uint8))
    good.save(root / "truncated.png")
    raw = (root / "truncated.png").read_bytes()
    (root / "truncated.png").write_bytes(raw[: len(raw) // 2])
    return root


def test_red_images_are_the_top_examples_and_maps_peak_on_the_red_patch(planted, folder):
    source = open_source(str(folder))
    result = mine_examples(planted, HOOK, source, neurons=[RED, 5], top_k=3, reduce="max", progress=False)
    names = [result.names[int(i)] for i in result.indices[0]]
    assert sorted(names) == ["red0.png", "red1.png", "red2.png"]
    expected_patch = {"red0.png": (1, 2), "red1.png": (0, 0), "red2.png": (3, 1)}
    for j, name in enumerate(names):
        heat = result.maps[0, j]
        assert divmod(int(heat.argmax()), 4) == expected_patch[name]
    assert set(result.skipped) == {source.describe.index("broken.jpg"), source.describe.index("truncated.png")}
    assert result.seen == len(source.describe) - 2


def test_streamed_top_k_equals_the_full_activation_matrix(planted, folder):
    source = open_source(str(folder))
    result = mine_examples(planted, HOOK, source, top_k=4, batch=3, progress=False)
    # Recompute every image's patch-mean activation in one go and take the top 4.
    from clipviz.data.decoding import batches

    images, idx = [], []
    for x, i, _ in batches(source, planted.preprocess_pil, 100, []):  # the model's own resize + centre crop
        images.append(x)
        idx += i
    _, cache = planted.run_with_cache(torch.cat(images), [HOOK])
    full = cache[HOOK][:, 1:].float().mean(1).T  # (neurons, images)
    scores, order = full.topk(4, dim=1)
    torch.testing.assert_close(result.scores, scores)
    kept = mine_examples(planted, HOOK, source, top_k=4, batch=3, progress=False, keep_activations=True)
    assert kept.activation_indices.tolist() == idx
    torch.testing.assert_close(kept.activations, full.T.half())
    # Neurons 2.. of the planted model are constant (ties in any order); the live ones must match exactly.
    assert torch.equal(result.indices[:2], torch.tensor(idx)[order[:2]])


def test_a_probe_matrix_of_part_of_a_layer_keeps_every_neurons_top_images(planted, folder, tmp_path):
    """CLIP-Dissect's prior is the whole layer's: stored activations of a few neurons keep, beside them, every
    neuron's top images by the patch mean, exact in one pass and in shards, and in the order of their scores."""
    import clipviz.analysis.examples as ex

    source = open_source(str(folder))
    part = mine_examples(planted, HOOK, source, neurons=[1], top_k=2, batch=3, progress=False, keep_activations=True)
    # every neuron mined with a top-k of every image: the ranking the layer's top sets must hold
    whole = mine_examples(planted, HOOK, source, top_k=part.seen, batch=5, progress=False, keep_activations=True)
    assert whole.layer_top is None  # the matrix is the whole layer already
    width = planted.hook_width(HOOK)
    assert tuple(part.layer_top.shape) == (width, part.seen)  # fewer images than CLIP-Dissect's 100: all of them
    assert torch.equal(part.layer_top, whole.indices)
    torch.testing.assert_close(part.layer_top_scores, whole.scores)
    torch.testing.assert_close(whole.scores[:2, 0], whole.activations[:, :2].float().max(0).values, atol=2e-3, rtol=0)
    sharded = ex.mine_examples_resumable(
        planted, HOOK, source, tmp_path, neurons=[1], top_k=2, shard_size=4, progress=False, keep_activations=True
    )
    assert torch.equal(sharded.layer_top, part.layer_top)
    assert torch.equal(ExampleResult.load(tmp_path, HOOK).layer_top, part.layer_top)


def test_results_round_trip_and_cli(planted, folder, tmp_path, capsys):
    out = tmp_path / "ex"
    code = cli_main(
        [
            "examples",
            planted.spec,
            "--hook",
            HOOK,
            "--dataset",
            str(folder),
            "--neurons",
            "0:2",
            "--top-k",
            "2",
            "--out",
            str(out),
        ]
    )
    assert code == 0, capsys.readouterr().err
    captured = capsys.readouterr().out
    assert "skipped 2 unreadable images" in captured
    loaded = ExampleResult.load(out, HOOK)
    assert loaded.neurons == [0, 1] and loaded.scores.shape == (2, 2)
    assert (out / "thumbs").is_dir() and len(list((out / "thumbs").rglob("*.png"))) >= 2


def test_bad_datasets_fail_with_one_line(planted, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ClipvizError, match="no images in"):
        open_source(str(empty))
    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    (only_bad / "x.png").write_bytes(b"garbage")
    with pytest.raises(ClipvizError, match="all 1 images were unreadable"):
        mine_examples(planted, HOOK, open_source(str(only_bad)), progress=False)
    code = cli_main(["examples", planted.spec, "--hook", HOOK, "--dataset", str(empty), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("clipviz: error: no images in") and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_hf_imagefolder_dataset_with_captions(planted, tmp_path):
    import datasets

    rows = {
        "image": [Image.fromarray(np.full((32, 32, 3), v, dtype=np.uint8)) for v in (0, 128, 255)],
        "caption": ["black", "grey", "white"],
    }
    ds = datasets.Dataset.from_dict(
        rows, features=datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")})
    )
    ds.save_to_disk(str(tmp_path / "ds"))
    source = open_source(str(tmp_path / "ds"))
    result = mine_examples(planted, HOOK, source, neurons=[RED], top_k=3, progress=False)
    assert set(result.captions.values()) == {"black", "grey", "white"}
    missing = datasets.Dataset.from_dict({"caption": ["a"]})
    missing.save_to_disk(str(tmp_path / "noimg"))
    with pytest.raises(ClipvizError, match="has no image column; columns: caption"):
        open_source(str(tmp_path / "noimg"))


def _same(a: ExampleResult, b: ExampleResult) -> None:
    torch.testing.assert_close(a.scores, b.scores, rtol=0, atol=0)
    assert torch.equal(a.indices, b.indices) and torch.equal(a.maps, b.maps)
    assert a.seen == b.seen and sorted(a.skipped) == sorted(b.skipped)


def test_resumable_run_equals_one_pass_and_resumes_after_a_kill(planted, folder, tmp_path, monkeypatch):
    import clipviz.analysis.examples as ex

    source = open_source(str(folder))
    whole = mine_examples(planted, HOOK, source, top_k=3, progress=False)
    sharded = ex.mine_examples_resumable(
        planted, HOOK, source, tmp_path / "a", top_k=3, shard_size=4, progress=False, keep_activations=True
    )
    _same(whole, sharded)
    full = mine_examples(planted, HOOK, source, top_k=3, progress=False, keep_activations=True)
    assert torch.equal(sharded.activations, full.activations)
    assert torch.equal(ExampleResult.load(tmp_path / "a", HOOK).activation_indices, full.activation_indices)
    real, calls = ex.mine_examples, []

    def dies_on_third_shard(*args, **kwargs):
        calls.append(kwargs["span"])
        if len(calls) == 3:
            raise KeyboardInterrupt  # killed mid-run
        return real(*args, **kwargs)

    monkeypatch.setattr(ex, "mine_examples", dies_on_third_shard)
    with pytest.raises(KeyboardInterrupt):
        ex.mine_examples_resumable(planted, HOOK, source, tmp_path / "b", top_k=3, shard_size=4, progress=False)
    calls.clear()
    monkeypatch.setattr(ex, "mine_examples", lambda *a, **k: (calls.append(k["span"]), real(*a, **k))[1])
    resumed = ex.mine_examples_resumable(planted, HOOK, source, tmp_path / "b", top_k=3, shard_size=4, progress=False)
    assert calls and (0, 4) not in calls and (4, 8) not in calls  # the two finished shards were not redone
    _same(whole, resumed)
    _same(whole, ExampleResult.load(tmp_path / "b", HOOK))


def test_two_processes_equal_one(planted, folder, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    import clipviz.analysis.examples as ex

    one = ex.mine_examples_resumable(
        planted, HOOK, open_source(str(folder)), tmp_path / "one", top_k=3, shard_size=4, progress=False
    )
    script = Path(__file__).parent / "multiprocess_examples.py"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(script),
            planted.spec,
            str(folder),
            str(tmp_path / "two"),
            HOOK,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "rank 1 of 2 done" in proc.stdout
    _same(one, ExampleResult.load(tmp_path / "two", HOOK))


def test_decoding_workers_give_the_same_result(planted, folder):
    source = open_source(str(folder))
    alone = mine_examples(planted, HOOK, source, top_k=3, batch=4, progress=False, keep_activations=True)
    workers = mine_examples(planted, HOOK, source, top_k=3, batch=4, progress=False, keep_activations=True, workers=2)
    _same(alone, workers)
    assert torch.equal(alone.activation_indices, workers.activation_indices)  # chunks come back in index order
    assert torch.equal(alone.activations, workers.activations) and alone.captions == workers.captions
    with pytest.raises(ClipvizError, match="workers must be between 0 and 64"):
        mine_examples(planted, HOOK, source, progress=False, workers=-1)


def test_an_all_unreadable_shard_is_reported_as_skipped(planted, folder, tmp_path):
    import shutil

    from clipviz.analysis.examples import mine_examples_resumable

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for k in range(3):  # sorted names: bad0..bad2 fill the first shard of 3, red0..red2 the second
        (mixed / f"bad{k}.png").write_bytes(b"garbage")
        shutil.copy(folder / f"red{k}.png", mixed / f"red{k}.png")
    source = open_source(str(mixed))
    result = mine_examples_resumable(
        planted, HOOK, source, tmp_path / "out", neurons=[RED], top_k=2, shard_size=3, progress=False, workers=1
    )
    assert result.skipped == [0, 1, 2] and result.seen == 3
    assert ExampleResult.load(tmp_path / "out", HOOK).skipped == [0, 1, 2]
