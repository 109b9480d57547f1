"""``clipviz sweep`` end to end: sweep -> atlas -> a staged Space that installs in a fresh venv and serves; a killed
sweep resumes to the same files; the results as a Hugging Face dataset."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from pathlib import Path

import pytest

from clipviz.apps.cli import main
from clipviz.errors import ClipvizError

# The command with tiny settings: 2 hooks x 6 neurons, 4 steps, 300 images in shards of 100. Batches of 3:
# two processes then render the same batches as one (float rounding in a batch of 4 and one of 3 can differ by a
# pixel level).
ARGS = ["world-clip", "--blocks", "2:4", "--neurons", "0:6", "--dataset", "world:300"]
FAST = ["--steps", "4", "--batch-size", "3", "--shard-size", "100", "--workers", "0", "--top-k", "4"]
PROBE = ["--probe", "world:300"]  # CLIP-Dissect words too, from the examples' own probe matrix
HOOKS = ("blocks.2.mlp.hook_post", "blocks.3.mlp.hook_post")


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "R"
    assert main(["sweep", *ARGS, *FAST, *PROBE, "--out", str(out)]) == 0
    return out


def test_sweep_writes_the_standard_layout_and_the_atlas(swept, capsys):
    from clipviz.results import find_concepts, find_examples, find_visualizations, read_atlas

    vis = list(find_visualizations(swept / "visualizations"))
    assert sorted((m["hook"], m["neuron"]) for _, m in vis) == [(h, n) for h in HOOKS for n in range(6)]
    assert sorted(hook for _, hook in find_examples(swept)) == list(HOOKS)
    tables = dict(find_concepts(swept / "concepts"))
    assert sorted((p.parent.name, p.name) for p in tables) == [
        (h, f"concepts-{m}.parquet") for h in HOOKS for m in ("direct", "dissect")
    ]
    atlas = read_atlas(swept / "atlas")
    assert set(atlas["hooks"]) == set(HOOKS)
    entry = atlas["hooks"][HOOKS[0]]["neurons"][0]
    assert entry["visualizations"] and len(entry["examples"]) == 4
    assert len(entry["words"]["direct"]) == len(entry["words"]["dissect"]) == 5
    assert entry["examples"][0]["heat"]["shape"] == [8, 8]  # the patch map travels with the atlas (for the dataset)
    # A rerun has nothing left to do.
    assert main(["sweep", *ARGS, *FAST, *PROBE, "--out", str(swept)]) == 0
    out = capsys.readouterr().out
    assert "nothing left to compute" in out


def test_one_command_from_a_model_to_a_space_folder(swept, tmp_path, monkeypatch, capsys):
    """``sweep --stage`` ends with the Space's folder (app, wheel, requirements, this sweep's atlas); ``--space``
    without a token stops before any work, not after it."""
    import huggingface_hub

    from clipviz.results import read_atlas

    stage = tmp_path / "space"
    assert main(["sweep", *ARGS, *FAST, *PROBE, "--out", str(swept), "--stage", str(stage)]) == 0
    assert "nothing left to compute" in capsys.readouterr().out  # the sweep itself was done: only staged
    assert {"app.py", "README.md", "requirements.txt", "wheels", "atlas"} <= {p.name for p in stage.iterdir()}
    assert read_atlas(stage / "atlas") == read_atlas(swept / "atlas")
    wheel = (stage / "requirements.txt").read_text().splitlines()[0]
    assert (stage / wheel).is_file() and wheel.endswith("-py3-none-any.whl")
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    fresh = tmp_path / "never"
    assert main(["sweep", *ARGS, *FAST, "--out", str(fresh), "--space", "me/atlas"]) == 2
    assert "needs a Hugging Face token" in capsys.readouterr().err and not fresh.exists()


def test_an_output_folder_of_any_name_is_fine_without_a_space(tmp_path, capsys):
    """No Space id is made up and checked unless one is asked for (a folder named '_scratch' once failed it)."""
    assert main(["sweep", *ARGS, *FAST, "--dry-run", "--out", str(tmp_path / "_scratch")]) == 0
    assert "estimate" in capsys.readouterr().out


def test_dry_run_prints_the_plan_and_an_estimate_only(tmp_path, capsys):
    assert main(["sweep", *ARGS, "--out", str(tmp_path / "R"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "neurons: 12 in 2 hooks" in out and "300 images" in out
    assert re.search(r"estimate on cpu: about [\d.]+ (s|min|h) \(examples [\d.]+ s, visualize", out)
    assert "recipe 'vital'" in out and "each neuron guided by its top 16 examples" in out  # guided by default
    assert not (tmp_path / "R").exists()


def test_sweep_errors_are_one_line(tmp_path, capsys):
    spec = "timm:vit_tiny_patch16_224"  # refused before it is loaded
    assert main(["sweep", spec, "--out", str(tmp_path / "R"), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--dataset is required" in err and err.count("\n") == 0
    assert main(["sweep", *ARGS, "--blocks", "7", "--out", str(tmp_path / "R"), "--dry-run"]) == 2
    assert "out of range: the model has 4 blocks" in capsys.readouterr().err
    assert main(["sweep", *ARGS, "--hooks", "mlp.nope", "--out", str(tmp_path / "R"), "--dry-run"]) == 2
    capsys.readouterr()
    assert main(["sweep", *ARGS, "--recipe", "accentuate", "--out", str(tmp_path / "R"), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert "accentuates a seed image, and a sweep has none" in err and err.count("\n") == 0
    for bad, message in (("--steps", "must be between 1 and"), ("--shard-size", "must be at least 1")):
        assert main(["sweep", *ARGS, bad, "0", "--out", str(tmp_path / "R"), "--dry-run"]) == 2
        assert message in capsys.readouterr().err
    import clipviz
    from clipviz.apps.sweep import make_plan

    with pytest.raises(ClipvizError, match="--steps must be at least 1"):  # the API does not ignore a zero
        make_plan(clipviz.load("world-clip"), tmp_path / "R", dataset="world:10", steps=0)
    assert not (tmp_path / "R").exists()


def test_examples_mined_again_guide_the_visualizations_anew(tmp_path):
    """The visualizations are guided by the sweep's own examples: when those change (here fewer of them), a rerun
    renders them again with the new references instead of keeping images of the old ones."""
    from clipviz.results import find_visualizations

    small = ["world-clip", "--blocks", "3", "--neurons", "0:2", "--dataset", "world:60", "--steps", "2"]
    small += ["--workers", "0", "--out", str(tmp_path / "R")]
    assert main(["sweep", *small, "--top-k", "4"]) == 0
    first = {m["neuron"]: m["guide"] for _, m in find_visualizations(tmp_path / "R" / "visualizations")}
    assert [g["k"] for g in first.values()] == [4, 4]
    assert main(["sweep", *small, "--top-k", "2"]) == 0
    again = {m["neuron"]: m["guide"] for _, m in find_visualizations(tmp_path / "R" / "visualizations")}
    assert {n: g["images"] for n, g in again.items()} == {n: g["images"][:2] for n, g in first.items()}


def test_sweep_of_a_model_without_text_tower_over_a_folder(tmp_path):
    """A transformers ViT (no words: no text tower), an image folder as the dataset, two kinds of hooks."""
    import numpy as np
    import transformers as T
    from PIL import Image
    from tiny_models import _save_processor

    vit = T.ViTModel(
        T.ViTConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            image_size=32,
            patch_size=8,
        )
    )
    vit.eval().save_pretrained(tmp_path / "vit")
    _save_processor(tmp_path / "vit")
    rng = np.random.default_rng(0)
    for i in range(20):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(tmp_path / f"img-{i:02d}.png")
    (tmp_path / "images").mkdir()
    for png in tmp_path.glob("img-*.png"):
        png.rename(tmp_path / "images" / png.name)
    out = tmp_path / "R"
    argv = [f"hf:{tmp_path / 'vit'}", "--dataset", str(tmp_path / "images"), "--blocks", "1", "--neurons", "0:3"]
    argv += ["--hooks", "mlp.hook_post,hook_resid_post", "--steps", "2", "--workers", "0", "--out", str(out)]
    assert main(["sweep", *argv]) == 0
    from clipviz.results import find_concepts, read_atlas

    atlas = read_atlas(out / "atlas")
    assert sorted(atlas["hooks"]) == ["blocks.1.hook_resid_post", "blocks.1.mlp.hook_post"]
    assert all(len(n["examples"]) == 16 for e in atlas["hooks"].values() for n in e["neurons"])
    assert not list(find_concepts(out))


def _snapshot(root: Path) -> dict[str, object]:
    """Every file under ``root`` by content, minus what legitimately differs between runs (timings)."""
    import pyarrow.parquet as pq

    out: dict[str, object] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel == "sweep.json":
            out[rel] = json.loads(path.read_text())["done"]
        elif path.suffix == ".json":
            out[rel] = re.sub(r'"batch_seconds": [\d.]+', "", path.read_text())
        elif path.suffix == ".html":
            out[rel] = re.sub(r"&quot;batch_seconds&quot;: [\d.]+|\"batch_seconds\": [\d.]+", "", path.read_text())
        elif path.suffix == ".parquet":
            out[rel] = pq.read_table(path).to_pylist()
        else:
            out[rel] = path.read_bytes()
    return out


def test_a_killed_sweep_resumes_and_ends_identical(swept, tmp_path, monkeypatch):
    import clipviz.analysis.concepts as concepts
    import clipviz.analysis.examples as examples
    import clipviz.visualization.visualize as visualize

    def failing(module, name, at):
        real, calls = getattr(module, name), {"n": 0}

        def fn(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == at:
                raise KeyboardInterrupt  # what Ctrl-C (or a killed job's SIGINT) raises mid-stage
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, fn)
        return lambda: monkeypatch.setattr(module, name, real)

    out = tmp_path / "R"
    run = ["sweep", *ARGS, *FAST, *PROBE, "--out", str(out)]
    for module, name, at in (
        (examples, "mine_examples", 5),  # the second hook's second shard
        (visualize, "optimise", 3),  # the second hook's first batch
        (concepts, "write_table", 3),  # the second hook's words (direct, then dissect, per hook)
    ):
        restore = failing(module, name, at)
        assert main(run) == 130
        restore()
    assert main(run) == 0
    assert _snapshot(out) == _snapshot(swept)


@pytest.mark.slow
def test_two_processes_end_identical_to_one(swept, tmp_path):
    """``torchrun`` (what ``accelerate launch`` does) on the CPU: the processes split the images and the example
    shards, only the main one writes the shared files, and the results are those of a single process."""
    out = tmp_path / "two"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m"]
    proc = subprocess.run(
        [*command, "clipviz.cli", "sweep", *ARGS, *FAST, *PROBE, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env={k: v for k, v in os.environ.items() if k != "CLIPVIZ_DEBUG"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("sweep of world-clip") == 1  # the plan is printed once, by the main process
    assert _snapshot(out) == _snapshot(swept)


def test_results_dataset_round_trips_with_images_heat_maps_words_and_truth(swept, tmp_path):
    import datasets

    from clipviz.apps.publish import results_dataset
    from clipviz.results import read_results_dataset, write_results_dataset

    ds, model = results_dataset(swept / "atlas")
    assert model == "world-clip" and len(ds) == 12
    assert isinstance(ds.features["visualization"], datasets.Image)
    row = ds[0]
    assert row["visualization"].size == (64, 64) and len(row["visualizations"]) == 1
    assert len(row["example_images"]) == len(row["example_heat_maps"]) == len(row["example_scores"]) == 4
    assert row["example_heat_maps"][0].size == row["example_images"][0].size
    assert row["example_heat_maps"][0].tobytes() != row["example_images"][0].tobytes()  # tinted where it fires
    assert row["word_method"] == "dissect" and row["words_dissect"] == row["words"] and len(row["words"]) == 5
    assert len(row["words_direct"]) == len(row["scores_direct"]) == 5
    assert ":" in row["truth_concept"] and 0.0 <= row["truth_auroc"] <= 1.0 and isinstance(row["truth_clear"], bool)
    from clipviz.world.groundtruth import bundled_selectivity

    best, _ = bundled_selectivity().best(row["hook"])
    assert row["truth_auroc"] == pytest.approx(float(best[row["neuron"]]), abs=1e-6)

    write_results_dataset(tmp_path / "ds", ds)
    back = read_results_dataset(tmp_path / "ds")  # datasets.load_dataset("parquet", ...)
    assert (
        back.features == ds.features and back["words"] == ds["words"] and back["truth_concept"] == ds["truth_concept"]
    )
    assert back[3]["example_heat_maps"][1].tobytes() == ds[3]["example_heat_maps"][1].tobytes()
    ds.save_to_disk(str(tmp_path / "saved"))
    assert datasets.load_from_disk(str(tmp_path / "saved"))["example_scores"] == ds["example_scores"]


# ------------------------------------------------------------------------------------ the Space, installed for real
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fresh_venv(root: Path) -> Path:
    """A new virtual environment that sees this one's installed packages except clipviz.

    Installing torch & co. from PyPI would take minutes and GBs, so the heavy packages come from this environment:
    a folder of links to everything in its site-packages but clipviz (its files, its editable finder and every
    .pth) is put on the new venv's path with a .pth file. What is exercised: the staged requirements.txt as pip reads
    it (the relative wheel path, the pins, which must match what is installed, all resolved with --no-index) and
    the shipped wheel's install (package data: the bundled model, the app and atlas assets, the plug-in entry point);
    the app then runs from the installed wheel, not from the source tree. Not exercised: downloading the pinned
    packages from PyPI, and the Space builder's own environment."""
    import venv

    heavy = root / "heavy"
    heavy.mkdir(parents=True)
    site = Path(sysconfig.get_paths()["purelib"])
    for entry in site.iterdir():
        if entry.name.startswith(("clipviz", "__editable__")) or entry.suffix == ".pth":
            continue
        (heavy / entry.name).symlink_to(entry)
    env = root / "venv"
    venv.EnvBuilder(with_pip=False).create(env)
    python = env / "bin" / "python"
    target = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(target) / "clipviz-test-heavy.pth").write_text(f"{heavy}\n")
    return python


def _clean_env(**extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False", **extra)
    return env


@pytest.mark.slow
def test_staged_space_installs_in_a_fresh_venv_and_serves(swept, tmp_path):
    site, stage = tmp_path / "S", tmp_path / "T"
    assert main(["atlas", str(swept), "--out", str(site)]) == 0
    assert main(["publish", str(site), "--space", "u/n", "--dry-run", "--stage", str(stage)]) == 0
    wheels = sorted((stage / "wheels").glob("clipviz-*-py3-none-any.whl"))
    requirements = (stage / "requirements.txt").read_text().splitlines()
    assert len(wheels) == 1 and requirements[0] == f"./wheels/{wheels[0].name}"
    assert any(r.startswith("gradio==") for r in requirements) and any(r.startswith("torch==") for r in requirements)
    assert not any(r.startswith("clipviz") for r in requirements)  # never from PyPI

    python = _fresh_venv(tmp_path / "fresh")
    env = _clean_env()
    install = subprocess.run(
        [python, "-m", "pip", "install", "--no-index", "-q", "-r", "requirements.txt"],
        cwd=stage,
        env=env,
        capture_output=True,
        text=True,
    )
    assert install.returncode == 0, install.stderr[-2000:]
    where = subprocess.run(
        [python, "-c", "import clipviz; print(clipviz.__file__)"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert where.returncode == 0 and str(tmp_path / "fresh" / "venv") in where.stdout, where.stderr[-2000:]
    # The installed copy can rebuild its own wheel (repacked from the installed files): same files.
    repack = subprocess.run(
        [python, "-c", f"from clipviz.apps.publish import build_wheel; print(build_wheel({str(tmp_path / 'w')!r}))"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert repack.returncode == 0, repack.stderr[-2000:]
    import zipfile

    assert sorted(zipfile.ZipFile(repack.stdout.strip()).namelist()) == sorted(zipfile.ZipFile(wheels[0]).namelist())

    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    server = subprocess.Popen(
        [python, "app.py"],
        cwd=stage,
        env=_clean_env(GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.time() + 240
        while True:
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    assert response.status == 200 and "gradio" in response.read().decode().lower()
                break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    server.kill()
                    pytest.fail(f"the staged app did not serve: {server.stdout.read()[-3000:]}")
                time.sleep(1)
        from gradio_client import Client

        client = Client(url, verbose=False)
        gallery, words, examples = client.predict(HOOKS[1], 2, api_name="/atlas")
        assert len(gallery) == 1 and "direct" in words and "dissect" in words and len(examples) == 4
        from browser import chromium
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        with chromium() as driver:
            driver.get(url)
            WebDriverWait(driver, 60).until(lambda d: "Atlas" in d.find_element(By.TAG_NAME, "body").text)
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


def test_publish_dry_run_summarises_by_kind_and_lists_on_request(swept, tmp_path, capsys):
    assert main(["publish", str(swept / "atlas"), "--dataset", "u/results", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would upload 2 files" in out and "  data " in out and "  app " in out
    assert main(["publish", str(swept / "atlas"), "--dataset", "u/results", "--dry-run", "--list"]) == 0
    out = capsys.readouterr().out
    assert "  data/train-00000-of-00001.parquet  " in out and "  README.md  " in out
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(ClipvizError, match="not empty"):
        from clipviz.apps.publish import publish

        publish(swept / "atlas", dataset="u/results", dry_run=True, stage=tmp_path / "full")


def test_wheel_build_refuses_with_one_line_when_it_cannot(monkeypatch, tmp_path):
    import importlib.metadata

    import clipviz.apps.publish as publish

    def no_distribution(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(publish, "_source_tree", lambda: None)  # an editable install whose tree is gone
    monkeypatch.setattr(importlib.metadata, "distribution", no_distribution)  # and no egg-info on the path either
    with pytest.raises(ClipvizError, match="cannot build a wheel of the running clipviz") as error:
        publish.build_wheel(tmp_path)
    assert "\n" not in str(error.value)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))


def test_another_vocabulary_renames_the_neurons_without_rendering_or_mining_again(tmp_path):
    """Found from outside (2026-12-02): a new --vocab re-mined the examples and re-rendered every visualization;
    only the words depend on it."""
    small = ["world-clip", "--blocks", "3", "--neurons", "0:2", "--dataset", "world:60", "--steps", "2"]
    small += ["--workers", "0", "--top-k", "4", "--out", str(tmp_path / "R")]
    assert main(["sweep", *small]) == 0
    state = tmp_path / "R" / "sweep.json"
    before = json.loads(state.read_text())["done"]
    made = [*(tmp_path / "R" / "visualizations").rglob("*"), *(tmp_path / "R" / "examples").rglob("*")]
    files = {p: p.stat().st_mtime_ns for p in made if p.is_file()}
    assert any(p.suffix == ".png" for p in files)
    mine = tmp_path / "shapes.txt"  # words world-clip's text tower knows, in another template
    mine.write_text("circle\nsquare\nstar\nring\ntriangle\ncross\n")
    assert main(["sweep", *small, "--vocab", str(mine), "--templates", "a {}"]) == 0
    after = json.loads(state.read_text())["done"]
    kept = [u for u in before if not u.startswith(("concepts", "atlas"))]  # the words and the atlas change
    assert kept and {u: after[u] for u in kept} == {u: before[u] for u in kept}
    assert any(after[u] != before[u] for u in after if u.startswith("concepts"))
    assert all(p.stat().st_mtime_ns == t for p, t in files.items())  # no image written again


def test_a_rerun_with_another_recipe_shows_only_its_own_images(tmp_path):
    """Found from outside: a sweep rerun into its folder with another recipe (or fewer samples) left the older
    images beside the new ones, and the atlas showed both as the sweep's."""
    from clipviz.results import find_visualizations, read_atlas

    small = ["world-clip", "--blocks", "3", "--neurons", "0:2", "--dataset", "world:60", "--steps", "2"]
    small += ["--workers", "0", "--top-k", "4", "--out", str(tmp_path / "R")]
    assert main(["sweep", *small, "--samples", "2"]) == 0  # vital: data-guided, two samples a neuron
    assert main(["sweep", *small, "--recipe", "default"]) == 0  # unguided, one sample
    on_disk = [m for _, m in find_visualizations(tmp_path / "R" / "visualizations")]
    assert {m["recipe"]["name"] for m in on_disk} == {"vital", "default"}  # the older images stay on disk
    atlas = read_atlas(tmp_path / "R" / "atlas")
    shown = [n for entry in atlas["hooks"].values() for n in entry["neurons"]]
    assert [n["neuron"] for n in shown] == [0, 1]
    assert all(len(n["visualizations"]) == 1 and n["visualization_kinds"] == ["plain"] for n in shown), shown


def test_world_clip_is_named_with_its_own_words_whatever_the_images(tmp_path):
    """Found from outside: a sweep of world-clip over a folder of images defaulted to ImageNet's class names, words
    its text tower never learned (now refused), instead of its world's."""
    import numpy as np
    from PIL import Image

    import clipviz
    from clipviz.apps.sweep import default_dataset, make_plan

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(4):
        Image.fromarray(np.full((32, 32, 3), 60 * i, dtype=np.uint8)).save(photos / f"{i}.png")
    plan = make_plan(
        clipviz.load("world-clip"), tmp_path / "out", blocks="3", neurons="0:2", dataset=str(photos), top_k=2, words=2
    )
    assert plan.vocab == "world"
    assert default_dataset("clipviz:world-clip") == default_dataset("world-clip") is not None
