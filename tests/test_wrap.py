"""``clipviz.wrap`` for models already in memory, ``HookedVisionModel.from_pretrained``, ``--revision`` /
``--cache-dir``."""

import pytest
import torch

import clipviz
from clipviz.apps.cli import main
from clipviz.errors import ClipvizError


def test_wrap_an_open_clip_model_in_memory_matches_load():
    loaded = clipviz.load("world-clip")
    wrapped = clipviz.wrap(loaded.native, spec="my-world-clip")
    images = torch.rand(2, 3, 64, 64)
    hook = "blocks.2.mlp.hook_post"
    _, a = loaded.run_with_cache(images, [hook])
    _, b = wrapped.run_with_cache(images, [hook])
    assert torch.equal(a[hook], b[hook]) and wrapped.spec == "my-world-clip"
    with torch.no_grad():
        assert torch.allclose(loaded.encode_text(["a red star"]), wrapped.encode_text(["a red star"]))
    assert clipviz.wrap(loaded) is loaded


def test_wrap_transformers_and_timm_modules():
    import timm
    import transformers as T

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
    model = clipviz.wrap(vit)
    assert model.spec == "wrapped:ViTModel" and model.n_blocks == 2 and model.d_mlp == 64
    _, cache = model.run_with_cache(torch.rand(1, 3, 32, 32), ["blocks.1.mlp.hook_post"])
    assert cache["blocks.1.mlp.hook_post"].shape == (1, 17, 64)
    net = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2)
    model = clipviz.wrap(net)
    assert model.n_blocks == 2 and model.image_size == (32, 32)
    _, cache = model.run_with_cache(torch.rand(1, 3, 32, 32), ["blocks.0.mlp.hook_post"])
    assert cache["blocks.0.mlp.hook_post"].shape[:2] == (1, 17)
    with pytest.raises(ClipvizError, match="reads transformers, open_clip and timm"):
        clipviz.wrap(torch.nn.Linear(2, 2))
    with pytest.raises(ClipvizError, match="needs a torch module"):
        clipviz.wrap("world-clip")


def test_from_pretrained_is_load_and_revision_cache_dir_reach_the_loaders(tmp_path, capsys):
    model = clipviz.HookedVisionModel.from_pretrained("world-clip")
    assert model.spec == "world-clip" and model.n_blocks == 4
    assert clipviz.load("world-clip", cache_dir=tmp_path).n_blocks == 4
    with pytest.raises(ClipvizError, match="--revision is for transformers models"):
        clipviz.load("world-clip", revision="main")
    assert main(["info", "world-clip", "--revision", "v1"]) == 2
    assert "--revision is for transformers models" in capsys.readouterr().err
    assert main(["info", "world-clip", "--cache-dir", str(tmp_path)]) == 0


def test_space_command_runs_the_app_and_hints_when_gradio_is_missing(monkeypatch, tmp_path, capsys):
    import importlib.util

    import clipviz.apps.space as space

    launched = {}

    class App:
        def launch(self, **kwargs):
            launched.update(kwargs)

        def close(self):
            launched["closed"] = True

    monkeypatch.setattr(space, "build_app", lambda models, atlas: launched.update(models=models, atlas=atlas) or App())
    assert main(["space", "--port", "7999"]) == 0
    expected = {"models": ("world-clip",), "atlas": None, "server_name": "127.0.0.1", "server_port": 7999}
    assert launched == {**expected, "prevent_thread_lock": True, "closed": True}
    assert main(["space", str(tmp_path)]) == 2
    assert "is not an atlas" in capsys.readouterr().err
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gradio" else real(name, *a))
    assert main(["space"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "clipviz: error: the app needs gradio, which is not installed: pip install gradio"
