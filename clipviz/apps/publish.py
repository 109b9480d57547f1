"""Publish an atlas as a Hugging Face Space, and results as a Hugging Face dataset.

>>> from clipviz.apps.publish import space_card
>>> print(space_card("my-atlas", sdk_version="5.0.0").splitlines()[0:3])
['---', 'title: my-atlas', 'emoji: 🔬']

``publish(path, space="user/name")`` uploads the Gradio app (``app.py``, ``requirements.txt``, a README with the
Space's YAML front matter) with the atlas in ``atlas/``; ``dataset="user/name"`` uploads one row per neuron
(hook, neuron, visualization, words and scores, top examples) as parquet that ``datasets.load_dataset`` reads.
``dry_run=True`` lists exactly what would be uploaded and needs no token. The token comes from the usual Hugging
Face login or the ``HF_TOKEN`` environment variable; it is never printed or written.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from clipviz.errors import ClipvizError
from clipviz.results import is_atlas, read_atlas


def space_files() -> dict[str, str]:
    """The Space's ``app.py`` and ``requirements.txt``, shipped in the package (``spaces/`` links to them)."""
    from importlib.resources import files

    folder = files("clipviz.apps") / "space_files"
    return {name: (folder / name).read_text(encoding="utf-8") for name in ("app.py", "requirements.txt")}


_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")


def space_card(title: str, sdk_version: str | None = None, model: str | None = None) -> str:
    """The Space's README: YAML front matter (sdk: gradio, app_file: app.py) and a short description."""
    if sdk_version is None:
        from importlib.metadata import version

        sdk_version = version("gradio")
    about = f"an atlas of the neurons of `{model}`" if model else "what the neurons of vision transformers respond to"
    return (
        f"---\ntitle: {title}\nemoji: 🔬\ncolorFrom: indigo\ncolorTo: gray\nsdk: gradio\n"
        f"sdk_version: {sdk_version}\napp_file: app.py\npinned: false\nlicense: apache-2.0\n---\n\n"
        f"# {title}\n\nMade with [clipviz](https://pypi.org/project/clipviz/): {about}. Pick a hook and "
        "neurons, or type a phrase, to see feature visualizations, the words that name them and the images "
        "that excite them; the Atlas tab browses precomputed results.\n"
    )


def dataset_card(name: str, model: str | None, rows: int) -> str:
    return (
        "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/*.parquet\n"
        f"tags:\n- clipviz\n- interpretability\n---\n\n# {name}\n\nclipviz results for `{model or 'a model'}`: "
        f"{rows} neurons, one row each (hook, neuron, feature visualization, words with scores, top dataset "
        "examples). Load with `datasets.load_dataset(...)`.\n"
    )


def results_dataset(site: str | Path):
    """The atlas at ``site`` as a ``datasets.Dataset``, one row per neuron."""
    import datasets

    site = Path(site)
    data = read_atlas(site)
    rows = {
        k: []
        for k in (
            "hook",
            "neuron",
            "visualization",
            "word_method",
            "words",
            "word_scores",
            "example_indices",
            "example_scores",
            "example_captions",
        )
    }
    for hook, entry in data["hooks"].items():
        for n in entry["neurons"]:
            method = next((m for m in ("dissect", "visual", "direct") if m in n["words"]), next(iter(n["words"]), ""))
            ranked = n["words"].get(method, [])
            rows["hook"].append(hook)
            rows["neuron"].append(n["neuron"])
            rows["visualization"].append(  # the bytes themselves, so that the parquet file stands alone
                {"bytes": (site / n["visualizations"][0]).read_bytes(), "path": f"{hook}-{n['neuron']}.png"}
                if n["visualizations"]
                else None
            )
            rows["word_method"].append(method)
            rows["words"].append([w for w, _ in ranked])
            rows["word_scores"].append([float(s) for _, s in ranked])
            rows["example_indices"].append([e["index"] for e in n["examples"]])
            rows["example_scores"].append([float(e["score"]) for e in n["examples"]])
            rows["example_captions"].append([e["caption"] for e in n["examples"]])
    features = datasets.Features(
        {
            "hook": datasets.Value("string"),
            "neuron": datasets.Value("int64"),
            "visualization": datasets.Image(),
            "word_method": datasets.Value("string"),
            "words": datasets.Sequence(datasets.Value("string")),
            "word_scores": datasets.Sequence(datasets.Value("float32")),
            "example_indices": datasets.Sequence(datasets.Value("int64")),
            "example_scores": datasets.Sequence(datasets.Value("float32")),
            "example_captions": datasets.Sequence(datasets.Value("string")),
        }
    )
    return datasets.Dataset.from_dict(rows, features=features), data.get("model")


@contextmanager
def _site_of(path: Path):
    """``path`` itself when it is an atlas, else an atlas built from the results under it (in a temporary folder)."""
    if is_atlas(path):
        yield path
        return
    from clipviz.apps.atlas import build_atlas

    with tempfile.TemporaryDirectory(prefix="clipviz-atlas-") as tmp:
        yield build_atlas(path, Path(tmp) / "site")


def _listing(folder: Path) -> list[tuple[str, int]]:
    return sorted((p.relative_to(folder).as_posix(), p.stat().st_size) for p in folder.rglob("*") if p.is_file())


def _check_repo(repo: str, what: str) -> None:
    if not _REPO_ID.match(repo):
        raise ClipvizError(f"bad {what} id '{repo}': use USER/NAME (letters, digits, '-', '_', '.')")


def publish(
    path: str | Path,
    *,
    space: str | None = None,
    dataset: str | None = None,
    dry_run: bool = False,
    private: bool = False,
    token: str | None = None,
    echo=print,
) -> dict[str, list[tuple[str, int]]]:
    """Upload an atlas (or results, built into an atlas first) to a Space and/or a dataset repo; returns the files
    (path, bytes) per repo. With ``dry_run`` nothing is uploaded and no token is needed."""
    path = Path(path)
    if not path.is_dir():
        raise ClipvizError(f"'{path}' is not a folder: give an atlas (clipviz atlas) or a results folder")
    if not (space or dataset):
        raise ClipvizError("nothing to publish to: give --space USER/NAME and/or --dataset USER/NAME")
    for repo, what in ((space, "Space"), (dataset, "dataset")):
        if repo:
            _check_repo(repo, what)
    api = None
    if not dry_run:
        from huggingface_hub import HfApi, get_token

        token = token or get_token()
        if not token:
            raise ClipvizError("no Hugging Face token: log in with `hf auth login` or set HF_TOKEN (or use --dry-run)")
        api = HfApi(token=token)
    uploaded: dict[str, list[tuple[str, int]]] = {}
    with _site_of(path) as site, tempfile.TemporaryDirectory(prefix="clipviz-publish-") as tmp:
        model = read_atlas(site).get("model")
        if space:
            stage = Path(tmp) / "space"
            shutil.copytree(site, stage / "atlas")
            for name, text in space_files().items():
                (stage / name).write_text(text, encoding="utf-8")
            (stage / "README.md").write_text(space_card(space.split("/", 1)[1], model=model), encoding="utf-8")
            uploaded[f"spaces/{space}"] = _listing(stage)
            if api is not None:
                api.create_repo(space, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
                api.upload_folder(
                    folder_path=str(stage),
                    repo_id=space,
                    repo_type="space",
                    commit_message="clipviz publish: atlas and app",
                )
        if dataset:
            stage = Path(tmp) / "dataset"
            ds, _ = results_dataset(site)
            (stage / "data").mkdir(parents=True)
            ds.to_parquet(str(stage / "data" / "train-00000-of-00001.parquet"))
            (stage / "README.md").write_text(dataset_card(dataset.split("/", 1)[1], model, len(ds)), encoding="utf-8")
            uploaded[f"datasets/{dataset}"] = _listing(stage)
            if api is not None:
                api.create_repo(dataset, repo_type="dataset", private=private, exist_ok=True)
                api.upload_folder(
                    folder_path=str(stage),
                    repo_id=dataset,
                    repo_type="dataset",
                    commit_message="clipviz publish: results",
                )
        for repo, files in uploaded.items():
            total = sum(size for _, size in files)
            echo(f"{'would upload' if dry_run else 'uploaded'} {len(files)} files ({total / 1e6:.1f} MB) to {repo}")
            for name, size in files:
                echo(f"  {name}  {size}")
            if dry_run and repo.startswith("spaces/"):
                echo("Space card (README.md):")
                echo((Path(tmp) / "space" / "README.md").read_text(encoding="utf-8"))
    return uploaded
