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

import html
import json
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from clipviz.apps.validate import check_new_folder
from clipviz.errors import ClipvizError
from clipviz.results import atomic_folder, is_atlas, read_atlas


def space_files() -> dict[str, str]:
    """The Space's ``app.py``, shipped in the package (``spaces/app.py`` is the same file); ``requirements.txt`` is
    written by ``space_requirements`` for the wheel that goes with it."""
    from importlib.resources import files

    folder = files("clipviz.apps") / "space_files"
    return {"app.py": (folder / "app.py").read_text(encoding="utf-8")}


# What the Space's app needs besides clipviz's own dependencies; torchvision is pinned with torch because a
# mismatched pair breaks open_clip and timm (``operator torchvision::nms does not exist``).
_APP_EXTRAS = ("gradio", "torchvision")


def _installed(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def space_requirements(wheel: str) -> str:
    """``requirements.txt`` of a Space: the shipped clipviz wheel, then every package the app needs pinned to the
    version installed here (local labels such as ``+cpu`` dropped: PyPI has no such files).

    >>> print(space_requirements("clipviz-0.1.0-py3-none-any.whl").splitlines()[0])
    ./wheels/clipviz-0.1.0-py3-none-any.whl
    """
    from importlib.metadata import PackageNotFoundError, requires

    try:
        declared = requires("clipviz") or []
    except PackageNotFoundError:
        declared = []
    names = [re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0] for r in declared if "extra ==" not in r]
    lines = [f"./wheels/{wheel}"]
    for name in dict.fromkeys([*names, *_APP_EXTRAS]):
        installed = _installed(name)
        if installed is not None:
            lines.append(f"{name}=={installed.split('+', 1)[0]}")
    return "\n".join(lines) + "\n"


def _source_tree() -> Path | None:
    """The source checkout the running clipviz is imported from (``pyproject.toml`` beside the package), if any."""
    import clipviz

    root = Path(clipviz.__file__).resolve().parent.parent
    pyproject = root / "pyproject.toml"
    try:
        return root if re.search(r'^name = "clipviz"', pyproject.read_text(encoding="utf-8"), re.M) else None
    except OSError:
        return None


def build_wheel(dest: str | Path) -> Path:
    """A wheel of the running clipviz in ``dest``: built with pip from its source tree (a copy, so the tree stays
    clean), or repacked from the installed files when it was installed from a wheel; a one-line error otherwise."""
    import subprocess
    import sys

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    root = _source_tree()
    if root is None:
        return _repack_installed(dest)
    with tempfile.TemporaryDirectory(prefix="clipviz-wheel-") as tmp:
        src = Path(tmp) / "src"
        shutil.copytree(root / "clipviz", src / "clipviz", ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*"))
        for name in ("pyproject.toml", "README.md", "LICENSE", "setup.cfg", "setup.py"):
            if (root / name).is_file():
                shutil.copy2(root / name, src / name)
        out = Path(tmp) / "wheels"
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--no-deps",
                "--no-build-isolation",
                "--no-index",
                "-q",
                "-w",
                str(out),
                str(src),
            ],
            capture_output=True,
            text=True,
        )
        built = sorted(out.glob("clipviz-*.whl"))
        if done.returncode != 0 or not built:
            last = (done.stderr or done.stdout or "no output").strip().splitlines()[-1:] or ["no output"]
            raise ClipvizError(
                f"cannot build a wheel of clipviz from {root} ({last[0][:200]}); "
                "it needs pip, setuptools and wheel in this environment"
            )
        target = dest / built[0].name
        shutil.copyfile(built[0], target)
    return target


def _repack_installed(dest: Path) -> Path:
    """The installed clipviz distribution (a regular, non-editable install) written back into a wheel."""
    import base64
    import hashlib
    import zipfile
    from importlib.metadata import PackageNotFoundError, distribution

    import clipviz

    try:
        dist = distribution("clipviz")
    except PackageNotFoundError:
        dist = None
    files = list(dist.files or []) if dist is not None else []
    running = Path(clipviz.__file__).resolve()
    if not files or not any(
        f.as_posix() == "clipviz/__init__.py" and Path(f.locate()).resolve() == running for f in files
    ):
        raise ClipvizError(
            f"cannot build a wheel of the running clipviz ({running.parent}): it is neither a source tree with "
            "pyproject.toml nor a regular installed distribution; install it with `pip install .` and try again"
        )
    info = f"clipviz-{dist.version}.dist-info"
    target = dest / f"clipviz-{dist.version}-py3-none-any.whl"
    records = []
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as wheel:
        for f in sorted(files, key=lambda f: f.as_posix()):
            arc = f.as_posix()
            skip = arc.startswith("..") or "__pycache__" in f.parts or arc.endswith(".pyc")
            if skip or arc in (f"{info}/RECORD", f"{info}/INSTALLER", f"{info}/REQUESTED", f"{info}/direct_url.json"):
                continue
            data = Path(f.locate()).read_bytes()
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            wheel.writestr(arc, data)
            records.append(f"{arc},sha256={digest},{len(data)}")
        records.append(f"{info}/RECORD,,")
        wheel.writestr(f"{info}/RECORD", "\n".join(records) + "\n")
    return target


_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")


def space_card(title: str, sdk_version: str | None = None, model: str | None = None) -> str:
    """The Space's README: YAML front matter (sdk: gradio, app_file: app.py, and the Python of this machine, for
    which the pinned requirements were resolved: a Space's default Python may be older than some of them need)
    and a short description."""
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    if sdk_version is None:
        from importlib.metadata import version

        sdk_version = version("gradio")
    about = f"an atlas of the neurons of `{model}`" if model else "what the neurons of vision transformers respond to"
    return (
        f"---\ntitle: {title}\nemoji: 🔬\ncolorFrom: indigo\ncolorTo: gray\nsdk: gradio\n"
        f'sdk_version: {sdk_version}\npython_version: "{python}"\napp_file: app.py\npinned: false\n'
        "license: apache-2.0\n---\n\n"
        f"# {title}\n\nMade with clipviz (installed from the wheel in `wheels/`): {about}. Pick a hook and "
        "neurons, or type a phrase, to see feature visualizations, the words that name them and the images "
        "that excite them; the Atlas tab browses precomputed results.\n"
    )


def dataset_card(name: str, model: str | None, rows: int, methods: list[str], truth: bool) -> str:
    words = ", ".join(f"`words_{m}`/`scores_{m}`" for m in methods) or "none"
    truth_text = (
        "`truth_concept` and `truth_auroc` hold each neuron's ground-truth concept (the factor value of the synthetic "
        "world it tells apart best, by AUROC of its patch-mean activation) and `truth_clear` whether that AUROC "
        "reaches 0.95. "
        if truth
        else ""
    )
    return (
        "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/*.parquet\n"
        f"tags:\n- clipviz\n- interpretability\n---\n\n# {name}\n\nclipviz results for `{model or 'a model'}`: "
        f"{rows} neurons, one row each: `hook`, `neuron`, `visualization` (the first feature visualization) and "
        "`visualizations` (all of them), the top dataset examples (`example_images`, `example_heat_maps` with the "
        "neuron's patch activations in cyan, `example_scores`, `example_indices`, `example_captions`), the words of "
        f"each method with their scores ({words}; `words`/`word_scores` repeat the preferred method, "
        f"`word_method`). {truth_text}\n\n"
        '```python\nimport datasets\n\nds = datasets.load_dataset("USER/NAME", split="train")\n'
        'ds[0]["visualization"]  # a PIL image\n```\n'
    )


def _png(image) -> dict:
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return {"bytes": buf.getvalue(), "path": None}


def _ground_truth(model: str | None):
    """The bundled ground-truth table of ``model`` (world-clip), or ``None`` when the model has none."""
    if not model:
        return None
    from clipviz.model.loading import bundled_models

    directory = bundled_models().get(model)
    if directory is None or not (directory / "ground_truth.json").is_file():
        return None
    from clipviz.world.groundtruth import bundled_selectivity

    return bundled_selectivity(model)


def results_dataset(site: str | Path):
    """The atlas at ``site`` (or the results under a folder, built into an atlas first) as a ``datasets.Dataset``
    with one row per neuron (see ``dataset_card`` for the columns), and the model's spec."""
    import datasets
    import torch
    from PIL import Image

    from clipviz.apps.atlas import METHOD_ORDER, heat_decode
    from clipviz.images import overlay

    with _site_of(Path(site)) as site:
        data = read_atlas(site)
        truth = _ground_truth(data.get("model"))
        methods = sorted(
            {m for entry in data["hooks"].values() for n in entry["neurons"] for m in n["words"]},
            key=lambda m: (*METHOD_ORDER, m).index(m),
        )
        columns = [
            "hook",
            "neuron",
            "visualization",
            "visualizations",
            "example_images",
            "example_heat_maps",
            "example_indices",
            "example_scores",
            "example_captions",
            "word_method",
            "words",
            "word_scores",
        ]
        columns += [c for m in methods for c in (f"words_{m}", f"scores_{m}")]
        if truth is not None:
            columns += ["truth_concept", "truth_auroc", "truth_clear"]
        rows: dict[str, list] = {k: [] for k in columns}
        for hook, entry in data["hooks"].items():
            best = truth.best(hook) if truth is not None and hook in truth.auroc else None
            for n in entry["neurons"]:
                vis = [{"bytes": (site / v).read_bytes(), "path": None} for v in n["visualizations"]]
                thumbs, heats = [], []
                for e in n["examples"]:
                    if not e.get("thumb"):
                        continue
                    with Image.open(site / e["thumb"]) as img:
                        thumb = img.convert("RGB")
                    thumbs.append(_png(thumb))
                    if e.get("heat") is not None:
                        heat = torch.from_numpy(heat_decode(e["heat"]))
                        heats.append(_png(overlay(thumb, heat, size=max(thumb.size))))
                preferred = next((m for m in METHOD_ORDER if m in n["words"]), next(iter(n["words"]), ""))
                ranked = n["words"].get(preferred, [])
                row = {
                    "hook": hook,
                    "neuron": n["neuron"],
                    "visualization": vis[0] if vis else None,
                    "visualizations": vis,
                    "example_images": thumbs,
                    "example_heat_maps": heats,
                    "example_indices": [e["index"] for e in n["examples"]],
                    "example_scores": [float(e["score"]) for e in n["examples"]],
                    "example_captions": [e["caption"] or "" for e in n["examples"]],
                    "word_method": preferred,
                    "words": [w for w, _ in ranked],
                    "word_scores": [float(sc) for _, sc in ranked],
                }
                for m in methods:
                    row[f"words_{m}"] = [w for w, _ in n["words"].get(m, [])]
                    row[f"scores_{m}"] = [float(sc) for _, sc in n["words"].get(m, [])]
                if truth is not None:
                    from clipviz.world.groundtruth import CLEAR_AUROC, CONCEPTS

                    if best is not None and n["neuron"] < best[0].numel():
                        value, concept = float(best[0][n["neuron"]]), CONCEPTS[int(best[1][n["neuron"]])]
                        row.update(truth_concept=":".join(concept), truth_auroc=value, truth_clear=value >= CLEAR_AUROC)
                    else:
                        row.update(truth_concept=None, truth_auroc=None, truth_clear=None)
                for k, v in row.items():
                    rows[k].append(v)
        model = data.get("model")
    listing = getattr(datasets, "List", datasets.Sequence)
    string, number = datasets.Value("string"), datasets.Value("float32")
    features = {
        "hook": string,
        "neuron": datasets.Value("int64"),
        "visualization": datasets.Image(),
        "visualizations": listing(datasets.Image()),
        "example_images": listing(datasets.Image()),
        "example_heat_maps": listing(datasets.Image()),
        "example_indices": listing(datasets.Value("int64")),
        "example_scores": listing(number),
        "example_captions": listing(string),
        "word_method": string,
        "words": listing(string),
        "word_scores": listing(number),
    }
    for m in methods:
        features[f"words_{m}"], features[f"scores_{m}"] = listing(string), listing(number)
    if truth is not None:
        features.update(truth_concept=string, truth_auroc=number, truth_clear=datasets.Value("bool"))
    return datasets.Dataset.from_dict(rows, features=datasets.Features(features)), model


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


def _kind(name: str) -> str:
    if name.startswith("wheels/"):
        return "wheel"
    if name.startswith("atlas/"):
        suffix = name.rsplit(".", 1)[-1]
        return {"html": "atlas pages", "png": "atlas images"}.get(suffix, "atlas data")
    if name.startswith("data/"):
        return "data"
    return "app"


def summary(files: list[tuple[str, int]]) -> list[str]:
    """Counts and sizes of a listing by kind (app, wheel, atlas pages, atlas images, atlas data, data).

    >>> summary([("app.py", 1000), ("atlas/a.html", 2000), ("atlas/b.html", 2000)])
    ['  app            1 file    1.0 kB', '  atlas pages    2 files   4.0 kB']
    """
    kinds: dict[str, list[int]] = {}
    for name, size in files:
        kinds.setdefault(_kind(name), []).append(size)
    order = ("app", "wheel", "atlas pages", "atlas images", "atlas data", "data")
    return [
        f"  {k:<13}{len(v):>3} file{'s' if len(v) != 1 else ' '}  {_size(sum(v)):>7}"
        for k in order
        if (v := kinds.get(k))
    ]


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def check_repo(repo: str, what: str) -> None:
    if not _REPO_ID.match(repo):
        raise ClipvizError(f"bad {what} id '{repo}': use USER/NAME (letters, digits, '-', '_', '.')")


_SCHEMES = ("hf:", "open_clip:", "timm:", "local-dir:")
_TEXT_FILES = {".html", ".json", ".md", ".js", ".csv", ".txt", ".yaml", ".yml"}
_ABSOLUTE = re.compile(r"(?<![\w.<>/+-])/(?!/)[^\s\"'&<>`]+")  # a POSIX absolute path, up to a quote or a space
# Encoded bytes are data, not text that could name a path: a data: URI's payload (an inline PNG) and the atlas's
# heat maps (``atlas.heat_code``: {"shape", "uint8": base64}). Base64 holds '/' anywhere, '/9j/...' at the start.
_DATA_URI = re.compile(r"data:[\w/+.-]+;base64,[A-Za-z0-9+/]*={0,2}")
_ENCODED_KEYS = {"uint8"}
_ENCODED_FIELD = re.compile(r'"uint8"\s*:\s*"[A-Za-z0-9+/]*={0,2}"')  # the same, quoted in a page or a script


def _without_data(text: str) -> str:
    return _ENCODED_FIELD.sub("", _DATA_URI.sub("", text))


def _absolute(text: str, *, existing_only: bool) -> tuple[str, Path] | None:
    """``text`` (less a model scheme) and the absolute path of this machine it names, or None. A path that no
    longer exists (a model folder moved since the run) counts where it has two parts or more and
    ``existing_only`` is off; a one-part one (``/s``) only where it exists."""
    text = next((text[len(s) :] for s in _SCHEMES if text.startswith(s)), text)
    path = Path(text).expanduser()
    if not path.is_absolute() or len(path.parts) < 2:
        return None
    if path.exists() or (not existing_only and len(path.parts) > 2):
        return text, path
    return None


def local_paths(site: Path) -> dict[str, str]:
    """The absolute paths of this machine that an atlas names (a local model's folder, a folder of images),
    whether or not they still exist, -> what is published instead, ``<local>/<folder name>``: a Space or dataset
    card shows no one the layout of the author's disk. Paths are read from every JSON value of the site (whole
    values and paths quoted inside them) and its pages (in a script, only paths that exist)."""
    found: dict[str, str] = {}

    def add(text: str, *, existing_only: bool) -> None:
        named = _absolute(text, existing_only=existing_only)
        if named is not None:
            found[named[0]] = f"<local>/{named[1].name}"

    def visit(value) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                if k not in _ENCODED_KEYS:
                    visit(v)
        elif isinstance(value, list):
            for v in value:
                visit(v)
        elif isinstance(value, str) and value:
            value = _without_data(value)
            add(value, existing_only=False)
            for quoted in _ABSOLUTE.findall(value):
                add(quoted, existing_only=False)

    visit(read_atlas(site))
    for file in Path(site).rglob("*"):  # and any other that the results or pages quote
        if not file.is_file() or file.suffix.lower() not in _TEXT_FILES:
            continue
        text = file.read_text(encoding="utf-8", errors="replace")
        if file.suffix.lower() == ".json":
            try:
                visit(json.loads(text))
                continue
            except ValueError:
                pass
        page = _without_data(html.unescape(text))  # a page quotes JSON as &quot;/path&quot;
        for quoted in _ABSOLUTE.findall(page):
            add(quoted, existing_only=file.suffix.lower() == ".js")  # a script's text is not data
    return dict(sorted(found.items(), key=lambda item: -len(item[0])))  # the longest first: nested paths


def redact_paths(folder: Path, paths: dict[str, str]) -> None:
    """Replace each of ``paths`` in every text file under ``folder``."""
    if not paths:
        return
    for file in folder.rglob("*"):
        if file.is_file() and file.suffix.lower() in _TEXT_FILES:
            text = file.read_text(encoding="utf-8", errors="surrogateescape")
            new = text
            for path, shown in paths.items():
                new = new.replace(path, shown)
            if new != text:
                file.write_text(new, encoding="utf-8", errors="surrogateescape")


def redacted(text: str | None, paths: dict[str, str]) -> str | None:
    for path, shown in paths.items():
        text = text.replace(path, shown) if text else text
    return text


def stage_space(site: Path, folder: Path, title: str, model: str | None = None) -> Path:
    """Write the Space exactly as it is uploaded into ``folder``: ``app.py``, ``README.md`` (the card),
    ``requirements.txt`` (the shipped wheel + pinned packages), ``wheels/clipviz-<version>-py3-none-any.whl`` and the
    atlas in ``atlas/``."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copytree(site, folder / "atlas")
    wheel = build_wheel(folder / "wheels")
    for name, text in space_files().items():
        (folder / name).write_text(text, encoding="utf-8")
    (folder / "requirements.txt").write_text(space_requirements(wheel.name), encoding="utf-8")
    (folder / "README.md").write_text(space_card(title, model=model), encoding="utf-8")
    redact_paths(folder, local_paths(site))
    return folder


def publish(
    path: str | Path,
    *,
    space: str | None = None,
    dataset: str | None = None,
    dry_run: bool = False,
    private: bool = False,
    token: str | None = None,
    stage: str | Path | None = None,
    list_files: bool = False,
    echo=print,
) -> dict[str, list[tuple[str, int]]]:
    """Upload an atlas (or results, built into an atlas first) to a Space and/or a dataset repo; returns the files
    (path, bytes) per repo. With ``dry_run`` nothing is uploaded and no token is needed; ``stage`` keeps the folder
    that is (or would be) uploaded (the Space's, or the dataset's, or both as ``space/`` and ``dataset/``); the
    summary gives counts and sizes by kind, ``list_files`` every file."""
    path = Path(path)
    if not path.is_dir():
        raise ClipvizError(f"'{path}' is not a folder: give an atlas (clipviz atlas) or a results folder")
    if not (space or dataset):
        raise ClipvizError("nothing to publish to: give --space USER/NAME and/or --dataset USER/NAME")
    for repo, what in ((space, "Space"), (dataset, "dataset")):
        if repo:
            check_repo(repo, what)
    if stage is not None:
        stage = check_new_folder(stage, "--stage folder")
        if stage.resolve().is_relative_to(path.resolve()):  # it would be copied into itself, again and again
            raise ClipvizError(f"--stage folder '{stage}' is inside '{path}', which it stages: choose one outside it")
    api = None
    if not dry_run:
        from huggingface_hub import HfApi, get_token

        token = token or get_token()
        if not token:
            raise ClipvizError("no Hugging Face token: log in with `hf auth login` or set HF_TOKEN (or use --dry-run)")
        api = HfApi(token=token)
    uploaded: dict[str, list[tuple[str, int]]] = {}
    with _site_of(path) as site, _staging(stage) as root:
        model = read_atlas(site).get("model")
        both = bool(space and dataset)

        def where(part: str) -> Path:
            return root / part if both or stage is None else root

        if space:
            folder = stage_space(site, where("space"), space.split("/", 1)[1], model)
            uploaded[f"spaces/{space}"] = _listing(folder)
            if api is not None:
                api.create_repo(space, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
                api.upload_folder(
                    folder_path=str(folder),
                    repo_id=space,
                    repo_type="space",
                    commit_message="clipviz publish: atlas, app and the clipviz wheel",
                )
        if dataset:
            from clipviz.results import write_results_dataset

            folder = where("dataset")
            ds, _ = results_dataset(site)
            methods = [c.removeprefix("words_") for c in ds.column_names if c.startswith("words_")]
            card = dataset_card(dataset.split("/", 1)[1], model, len(ds), methods, "truth_concept" in ds.column_names)
            write_results_dataset(folder, ds, redacted(card, local_paths(site)))
            uploaded[f"datasets/{dataset}"] = _listing(folder)
            if api is not None:
                api.create_repo(dataset, repo_type="dataset", private=private, exist_ok=True)
                api.upload_folder(
                    folder_path=str(folder),
                    repo_id=dataset,
                    repo_type="dataset",
                    commit_message="clipviz publish: results",
                )
        for repo, files in uploaded.items():
            total = sum(size for _, size in files)
            echo(f"{'would upload' if dry_run else 'uploaded'} {len(files)} files ({_size(total)}) to {repo}")
            lines = [f"  {name}  {size}" for name, size in files] if list_files else summary(files)
            for line in lines:
                echo(line)
            if repo.startswith("spaces/") and dry_run:
                requirements = (where("space") / "requirements.txt").read_text(encoding="utf-8")
                echo("requirements.txt: " + ", ".join(requirements.split()))
        hidden = local_paths(site)
        if hidden:
            echo(f"local paths are published as {', '.join(sorted(set(hidden.values())))}")
    if stage is not None:
        echo(f"staged in {Path(stage).resolve()}")
    return uploaded


@contextmanager
def _staging(stage: Path | None) -> Iterator[Path]:
    """Where the upload is assembled: a temporary folder, or one that becomes ``stage`` only once complete (a
    killed run leaves no half-staged folder that the next run would refuse)."""
    if stage is None:
        with tempfile.TemporaryDirectory(prefix="clipviz-publish-") as tmp:
            yield Path(tmp)
    else:
        with atomic_folder(stage) as folder:
            yield folder
