"""The Space: its backend's caps, the Gradio app on localhost driven by gradio_client and Chromium, and publish."""

import json
import socket
import sys
from pathlib import Path

import pytest
import yaml
from browser import chromium, console_errors, screenshot

from clipviz.apps.cli import main
from clipviz.apps.publish import publish, results_dataset, space_files
from clipviz.apps.space import Limits, SpaceBackend
from clipviz.errors import ClipvizError

HOOK = "blocks.2.mlp.hook_post"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def atlas(tmp_path_factory):
    import clipviz
    from clipviz.analysis.concepts import direct_lens, load_vocabulary, write_table
    from clipviz.analysis.examples import mine_examples, write_thumbnails
    from clipviz.apps.atlas import build_atlas
    from clipviz.data import open_source
    from clipviz.visualization.visualize import visualize

    root = tmp_path_factory.mktemp("space-results")
    model = clipviz.load("world-clip")
    visualize(model, HOOK, [4, 5], recipe="default", steps=2, out=root / "vis", progress=False)
    source = open_source("world:60")
    ex = mine_examples(model, HOOK, source, neurons=[4, 5], top_k=3, progress=False)
    ex.save(root / "ex")
    write_thumbnails(source, ex, root / "ex")
    vocab = load_vocabulary("world")
    table = [{"neuron": n, **w} for n, w in zip([4, 5], direct_lens(model, HOOK, [4, 5], vocab, top_k=3), strict=True)]
    write_table(root / "con", HOOK, table, "direct", vocab, identity=model.identity())
    return build_atlas(root, root.parent / "site"), table


@pytest.fixture(scope="module")
def backend(atlas):
    return SpaceBackend(limits=Limits(max_steps=6, max_size=96, max_neurons=2, example_images=80), atlas=atlas[0])


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda b: b.neurons("world-clip", HOOK, "1", 7, 64), "steps must be between 1 and 6"),
        (lambda b: b.neurons("world-clip", HOOK, "1", 2, 97), "image size must be between 32 and 96"),
        (lambda b: b.neurons("world-clip", HOOK, "1,2,3", 2, 64), "at most 2 neurons per request"),
        (lambda b: b.neurons("world-clip", HOOK, "512", 2, 64), "out of range for hook"),
        (lambda b: b.neurons("world-clip", "../../etc/passwd", "1", 2, 64), "unknown hook"),
        (lambda b: b.neurons("/tmp/some/model", HOOK, "1", 2, 64), "unknown model"),
        (lambda b: b.neurons("world-clip", HOOK, "a", 2, 64), "bad index list"),
        (lambda b: b.phrase("world-clip", "x" * 121, 2, 64), "limited to 120 characters"),
        (lambda b: b.phrase("world-clip", "   ", 2, 64), "type a phrase"),
        (lambda b: b.atlas_neuron(HOOK, 7), "not in the atlas"),
        (lambda b: b.atlas_neuron("blocks.0.mlp.hook_post", 4), "not in the atlas"),
    ],
)
def test_capped_and_bad_inputs_are_refused(backend, call, message):
    with pytest.raises(ClipvizError, match=message):
        call(backend)


def test_backend_answers(backend, atlas):
    images, words, examples = backend.neurons("world-clip", HOOK, "5", 2, 48)
    assert [(im.size, caption) for im, caption in images] == [((48, 48), "neuron 5: data-guided (vital)")]
    assert words[0]["neuron"] == 5 and len(words[0]["direct lens"]) == 5
    assert len(examples) == backend.limits.top_k and all("neuron 5" in caption for _, caption in examples)
    images, words, examples = backend.atlas_neuron(HOOK, 4)
    assert len(images) == 1 and [w for w, _ in words["direct"]] == atlas[1][0]["words"]
    assert len(examples) == 3


def test_what_the_model_reads_in_a_neurons_image_does_not_depend_on_the_others_asked(backend):
    """The reading is scored against a fixed population of the hook's neurons: asked alone or with another neuron,
    neuron 5's image is read alike (alone it had no reference at all)."""
    _, alone, _ = backend.neurons("world-clip", HOOK, "5", 2, 48)
    _, together, _ = backend.neurons("world-clip", HOOK, "5,100", 2, 48)
    read = [w for w, _ in alone[0]["the model reads the image as"]]
    assert [w for w, _ in together[0]["the model reads the image as"]] == read
    scores = [s for _, s in alone[0]["the model reads the image as"]]
    assert [s for _, s in together[0]["the model reads the image as"]] == pytest.approx(scores, abs=1e-3)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(atlas):
    from clipviz.apps.space import build_app

    app = build_app(atlas=atlas[0], limits=Limits(max_steps=6, max_size=96, example_images=80))
    port = _free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    app.close()


def test_app_through_gradio_client(server):
    from gradio_client import Client
    from PIL import Image

    client = Client(server, verbose=False)
    gallery, words, examples = client.predict("world-clip", HOOK, "3", 2, 40, api_name="/visualize")
    assert len(gallery) == 1 and Image.open(gallery[0]["image"]).size == (40, 40)
    assert "neuron 3" in words and "direct lens" in words
    assert len(examples) == 6
    image, closest = client.predict("world-clip", "a red star", 2, 56, api_name="/phrase")
    assert Image.open(image).size == (56, 56) and len(closest) == 6
    with pytest.raises(Exception, match="greater than maximum value 6"):  # the slider's own bound
        client.predict("world-clip", HOOK, "3", 500, 40, api_name="/visualize")
    with pytest.raises(Exception, match="at most 4 neurons per request"):  # the backend's cap
        client.predict("world-clip", HOOK, "0:5", 2, 40, api_name="/visualize")
    gallery, words, _ = client.predict(HOOK, 4, api_name="/atlas")
    assert len(gallery) == 1 and "direct" in words


def test_app_page_renders_in_chromium(server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with chromium() as driver:
        driver.get(server)
        WebDriverWait(driver, 30).until(lambda d: "Visualize" in d.find_element(By.TAG_NAME, "body").text)
        body = driver.find_element(By.TAG_NAME, "body").text
        assert "clipviz" in body and "Phrase" in body and "Atlas" in body
        # Gradio itself may log network noise offline (fonts, analytics); the app's own code must not fail.
        assert not [e for e in console_errors(driver) if "127.0.0.1" in e and "favicon" not in e]
        screenshot(driver, "space.png")


def test_spaces_folder_is_the_published_app(atlas, tmp_path, monkeypatch):
    """``spaces/`` holds what publish uploads, and its app.py builds the app, with the Atlas tab when an atlas lies
    beside it."""
    import runpy
    import shutil

    files = space_files()
    assert (REPO / "spaces" / "app.py").read_text() == files["app.py"]
    assert "clipviz[spaces]" not in (REPO / "spaces" / "requirements.txt").read_text()  # clipviz is not on PyPI
    (tmp_path / "app.py").write_text(files["app.py"])
    shutil.copytree(atlas[0], tmp_path / "atlas")
    monkeypatch.setenv("CLIPVIZ_SPACE_MODELS", "world-clip")
    app = runpy.run_path(str(tmp_path / "app.py"))["app"]  # not __main__: built, not launched
    endpoints = {dep.api_name for dep in app.fns.values()}
    assert {"visualize", "phrase", "atlas"} <= endpoints
    shutil.rmtree(tmp_path / "atlas")
    app = runpy.run_path(str(tmp_path / "app.py"))["app"]
    assert "atlas" not in {dep.api_name for dep in app.fns.values()}
    card = yaml.safe_load((REPO / "spaces" / "README.md").read_text().split("---")[1])
    assert card["sdk"] == "gradio" and card["app_file"] == "app.py" and card["python_version"] == "3.11"


def test_publish_dry_run_lists_the_files_and_a_valid_card(atlas, capsys, tmp_path):
    args = ["publish", str(atlas[0]), "--space", "someone/atlas", "--dataset", "someone/results", "--dry-run"]
    assert main([*args, "--list", "--stage", str(tmp_path / "stage")]) == 0
    out = capsys.readouterr().out
    assert "would upload" in out and "spaces/someone/atlas" in out and "datasets/someone/results" in out
    for name in (
        "app.py",
        "requirements.txt",
        "README.md",
        "atlas/index.html",
        "atlas/atlas.json",
        "data/train-00000-of-00001.parquet",
    ):
        assert f"  {name}  " in out
    assert "  wheels/clipviz-" in out
    card = yaml.safe_load((tmp_path / "stage" / "space" / "README.md").read_text().split("---")[1])
    assert card["sdk"] == "gradio" and card["title"] == "atlas"
    # the Python the pins were resolved for (2026-12-02: a Space's default Python could not install them)
    assert card["python_version"] == f"{sys.version_info.major}.{sys.version_info.minor}"
    assert sorted(p.name for p in (tmp_path / "stage").iterdir()) == ["dataset", "space"]


def test_a_stage_killed_midway_leaves_nothing_and_the_rerun_succeeds(atlas, monkeypatch, tmp_path):
    """Found from outside (2026-12-02): the Space was staged in place, so a run killed while staging left a half
    folder that the next run refused as not empty."""
    import clipviz.apps.publish as publish_module

    real = publish_module.build_wheel

    def killed(dest):
        real(dest)
        raise KeyboardInterrupt

    monkeypatch.setattr(publish_module, "build_wheel", killed)
    args = ["publish", str(atlas[0]), "--space", "someone/atlas", "--dry-run", "--stage", str(tmp_path / "stage")]
    assert main(args) == 130  # interrupted
    assert not any(p.name.startswith((".stage", "stage")) for p in tmp_path.iterdir())
    monkeypatch.setattr(publish_module, "build_wheel", real)
    assert main(args) == 0
    assert (tmp_path / "stage" / "app.py").is_file() and (tmp_path / "stage" / "atlas" / "atlas.json").is_file()


def test_results_dataset_round_trips(atlas, tmp_path):
    import datasets

    ds, model = results_dataset(atlas[0])
    assert model == "world-clip" and ds["neuron"] == [4, 5]
    assert ds[0]["words"] == atlas[1][0]["words"] and ds[0]["visualization"].size == (64, 64)
    ds.save_to_disk(str(tmp_path / "saved"))
    back = datasets.load_from_disk(str(tmp_path / "saved"))
    assert back.features == ds.features and back.to_dict()["words"] == ds.to_dict()["words"]
    ds.to_parquet(str(tmp_path / "train.parquet"))  # what publish uploads; load_dataset reads it back
    loaded = datasets.load_dataset("parquet", data_files=str(tmp_path / "train.parquet"), split="train")
    assert loaded["example_indices"] == ds["example_indices"]
    assert loaded[1]["visualization"].tobytes() == ds[1]["visualization"].tobytes()


def test_publish_uploads_with_the_token_and_never_prints_it(atlas, monkeypatch, capsys):
    import huggingface_hub

    calls = []
    monkeypatch.setattr(
        huggingface_hub.HfApi, "create_repo", lambda self, repo, **kw: calls.append(("create", repo, kw))
    )

    def upload(self, folder_path, repo_id, repo_type, **kw):
        calls.append(
            (
                "upload",
                repo_id,
                {
                    "repo_type": repo_type,
                    "files": sorted(
                        p.relative_to(folder_path).as_posix() for p in Path(folder_path).rglob("*") if p.is_file()
                    ),
                },
            )
        )
        assert self.token == "hf_secret_value"

    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload)
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value")
    assert main(["publish", str(atlas[0]), "--space", "someone/atlas", "--dataset", "someone/results"]) == 0
    captured = capsys.readouterr()
    assert "hf_secret_value" not in captured.out + captured.err
    creates = {c[1]: c[2] for c in calls if c[0] == "create"}
    assert creates["someone/atlas"]["repo_type"] == "space" and creates["someone/atlas"]["space_sdk"] == "gradio"
    assert creates["someone/results"]["repo_type"] == "dataset"
    uploads = {c[1]: c[2] for c in calls if c[0] == "upload"}
    space_files_ = set(uploads["someone/atlas"]["files"])
    assert {"app.py", "requirements.txt", "README.md", "atlas/atlas.json"} <= space_files_
    assert any(f.startswith("wheels/clipviz-") and f.endswith(".whl") for f in space_files_)
    assert uploads["someone/results"]["files"] == ["README.md", "data/train-00000-of-00001.parquet"]


def test_publish_errors(atlas, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "no-login"))
    assert main(["publish", str(atlas[0]), "--space", "someone/atlas"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no Hugging Face token" in err and err.count("\n") == 0
    assert main(["publish", str(atlas[0]), "--space", "not a repo", "--dry-run"]) == 2
    assert main(["publish", str(atlas[0]), "--dry-run"]) == 2
    with pytest.raises(ClipvizError, match="not a folder"):
        publish(tmp_path / "missing", space="a/b", dry_run=True)
    assert json.loads((atlas[0] / "atlas.json").read_text())["model"] == "world-clip"


def test_the_authors_local_paths_are_not_published(tmp_path, capsys):
    """Found from outside (2026-12-02): a local model's folder and the image folder of its examples were published
    as absolute paths (the layout of the author's disk) in the Space's card, atlas and pages."""
    import numpy as np
    from families import _timm
    from PIL import Image

    secret = tmp_path / "alice-private"
    spec = _timm("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)(secret / "m")
    (secret / "photos").mkdir()
    for i in range(6):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(
            secret / "photos" / f"{i}.png"
        )
    hook, common = "blocks.1.mlp.hook_post", ["--neurons", "0:2"]
    vis = ["visualize", spec, "--hook", hook, *common, "--steps", "2", "--recipe", "default"]
    assert main([*vis, "--out", str(tmp_path / "res" / "vis")]) == 0
    ex = ["examples", spec, "--hook", hook, *common, "--dataset", str(secret / "photos"), "--top-k", "2"]
    assert main([*ex, "--workers", "0", "--out", str(tmp_path / "res" / "ex")]) == 0
    assert main(["atlas", str(tmp_path / "res"), "--out", str(tmp_path / "site")]) == 0
    for moved in (False, True):  # and once the folders have moved (2026-12-02: only existing paths were hidden)
        if moved:
            secret.rename(tmp_path / "elsewhere")
        stage = tmp_path / f"stage-{moved}"
        assert main(["publish", str(tmp_path / "site"), "--space", "u/x", "--dataset", "u/y", "--dry-run",
                     "--stage", str(stage)]) == 0  # fmt: skip
        assert "local paths are published as <local>/m, <local>/photos" in capsys.readouterr().out
        leaks = [
            f for f in stage.rglob("*") if f.is_file() and "alice-private" in f.read_bytes().decode("utf-8", "replace")
        ]
        assert not leaks, leaks


def test_encoded_bytes_in_an_atlas_are_not_taken_for_local_paths(tmp_path):
    """Found 2026-12-03: a heat map's base64 held '+/jEij3O.../yNfZm6bDze/n1r6k2...', read as an absolute path of
    three parts and replaced by '<local>/...' in the published atlas, which then decoded to the wrong bytes."""
    import base64
    import json

    from clipviz.apps.atlas import heat_code, heat_decode
    from clipviz.apps.publish import local_paths, redact_paths

    heat = {"shape": [2, 6], "uint8": base64.b64encode(bytes([255, 239, 140] * 4)).decode()}  # '/++/++/...'
    assert heat["uint8"].startswith("/") and heat["uint8"].count("/") > 2
    inline = "data:image/png;base64,z/+/jEij3OesksKRGrG889U8/yNfZm6bDze/n1r6k2MO69A=="
    secret = tmp_path / "bob" / "models" / "vit"
    site = tmp_path / "site"
    site.mkdir()
    atlas = {"model": f"hf:{secret}", "hooks": {"h": {"neurons": [{"heat": heat, "thumb": inline}]}}}
    (site / "atlas.json").write_text(json.dumps(atlas))
    (site / "index.html").write_text(f"<img src='{inline}'><script>const a = {json.dumps(atlas)};</script>")
    paths = local_paths(site)
    assert paths == {str(secret): "<local>/vit"}  # the model's folder, and nothing of the data
    redact_paths(site, paths)
    back = json.loads((site / "atlas.json").read_text())
    assert back["hooks"]["h"]["neurons"][0]["heat"] == heat and back["model"] == "hf:<local>/vit"
    assert heat_decode(back["hooks"]["h"]["neurons"][0]["heat"]).shape == (2, 6)
    assert inline in (site / "index.html").read_text() and "bob" not in (site / "index.html").read_text()
    assert heat_decode(heat_code([[0.0, 1.0]])).tolist() == [[0.0, 1.0]]


def test_the_live_tab_offers_the_atlas_model_where_the_space_can_load_it(tmp_path):
    """Found from outside: a Space published for another model offered only world-clip to visitors."""
    import json

    from clipviz.apps.space import _example_label, live_models

    def atlas_of(model: str) -> Path:
        site = tmp_path / f"site-{len(list(tmp_path.iterdir()))}"
        site.mkdir()
        (site / "atlas.json").write_text(json.dumps({"model": model, "hooks": {}}))
        return site

    assert live_models(atlas_of("hf:openai/clip-vit-base-patch16")) == ("hf:openai/clip-vit-base-patch16", "world-clip")
    assert live_models(atlas_of("world-clip")) == ("world-clip",)
    here = tmp_path / "my-model"
    here.mkdir()
    assert live_models(atlas_of(str(here))) == ("world-clip",)  # a folder on the author's machine is not in the Space
    assert live_models(atlas_of("hf:/data/author/vit")) == ("world-clip",)  # nor one named with its library
    assert live_models(atlas_of("hf:openai/clip-vit-base-patch16"), "world-clip") == ("world-clip",)
    assert live_models(None) == ("world-clip",)
    assert _example_label({"caption": "", "name": "cat-03.jpg", "index": 64}) == "cat-03.jpg"
    assert _example_label({"caption": "a red star", "name": "", "index": 3}) == "a red star"
    assert _example_label({"caption": "", "name": "", "index": 3}) == "image 3"
