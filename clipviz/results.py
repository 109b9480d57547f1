"""The on-disk results layout, in one place: file names, sidecars and tables, their atomic writers and readers.

A results folder holds any of (``<hook>`` is a hook name such as ``blocks.6.mlp.hook_post``)::

    <out>/<hook>/neuron-00042.png + .json          a visualization and its sidecar (every setting, the objective)
    <out>/<hook>/neuron-00042-s<seed>.png + .json  one of several samples of a target
    <out>/text/text-<slug>-<crc>.png + .json       a text-prompt visualization (``class/`` for classes)
    <out>/<hook>/neuron-00042.data-guided.png      the same neuron's data-guided image (``.accentuated``: seeded)
    <out>/<group>/grid.png                         every image of a group side by side (``grid.<kind>.png``)
    <out>/<hook>/examples.safetensors + .json      top dataset examples (scores, indices, heat maps)
    <out>/thumbs/<source key>/<index>.png          thumbnails of the dataset images kept as examples
    <out>/<hook>/concepts-<method>.parquet + .csv  words per neuron and rank, with scores
    <out>/shards/...                               unfinished work of a resumable run (ignored by readers)

``clipviz sweep`` writes one results folder per model with the parts side by side (``sweep_paths``)::

    <out>/sweep.json                               the plan and the finished units of work (``write_sweep_state``)
    <out>/visualizations/  <out>/examples/  <out>/concepts/  <out>/atlas/

and a results dataset (one row per neuron, ``write_results_dataset``) is ``<folder>/data/train-*.parquet`` plus
a README, the layout of a dataset repository on the Hugging Face Hub.

and an atlas site built from it holds ``atlas.json`` (``ATLAS_FILE``). Every file is written to a hidden
temporary name in its folder and renamed into place, so a killed run never leaves a half-written file.

>>> import tempfile
>>> root = Path(tempfile.mkdtemp())
>>> write_json(root / "a" / "x.json", {"k": 1})
>>> read_json(root / "a" / "x.json"), read_json(root / "a" / "missing.json")
({'k': 1}, None)
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import socket
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from PIL import Image

from clipviz.errors import ClipvizError

EXAMPLES_META = "examples.json"
EXAMPLES_TENSORS = "examples.safetensors"
GRID_FILE = "grid.png"
ATLAS_FILE = "atlas.json"
SWEEP_FILE = "sweep.json"
DATASET_PARQUET = "data/train-00000-of-00001.parquet"
SHARDS_DIR = "shards"
THUMBS_DIR = "thumbs"


# ------------------------------------------------------------------------------------------------ atomic writers
#: A temporary file or folder is stale (a killed run's) once its writer is dead, or after this many seconds.
STALE_SECONDS = 3600
_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]
# .<name>.<host>-<pid>.<random>.tmp (files) and .<name>.<host>-<pid>.<random>.staging / .old (atlas folders)
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<host>[0-9a-f]{6})-(?P<pid>[0-9]+)\.[^.]+\.(?:tmp|staging|old)$")
_cleaned: set[Path] = set()


def temp_prefix(name: str) -> str:
    """The prefix of this process's temporary names for ``name`` (``mkstemp``/``mkdtemp`` add the rest)."""
    return f".{name}.{_HOST}-{os.getpid()}."


def _writer_alive(host: str, pid: int) -> bool:
    if host != _HOST:
        return True  # another machine's writer (shared file system): only its age tells
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def is_stale(path: Path, now: float | None = None) -> bool:
    """Whether ``path`` is a temporary file or folder of clipviz's writers whose writer died or that is older than
    ``STALE_SECONDS``."""
    m = _TEMP.match(Path(path).name)
    if m is None:
        return False
    try:
        age = (now or time.time()) - Path(path).lstat().st_mtime
    except OSError:
        return False
    return age > STALE_SECONDS or not _writer_alive(m["host"], int(m["pid"]))


def remove_stale_temporaries(folder: Path, recursive: bool = True, name: str | None = None) -> list[Path]:
    """Remove the stale temporary files and folders a killed run left under ``folder`` (only names clipviz's
    writers make, see ``is_stale``; with ``name``, only those for a file or folder of that name); returns what was
    removed."""
    import shutil

    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    try:
        candidates = folder.rglob(".*") if recursive else folder.glob(".*")
        stale = [p for p in candidates if is_stale(p) and (name is None or _TEMP.match(p.name)["name"] == name)]
    except OSError:
        return removed
    for path in stale:
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path)
        except OSError:
            continue
    return removed


def atomic_write(path: Path, write: Callable[[str], object]) -> None:
    """Run ``write(tmp)`` on a hidden temporary file beside ``path``, then rename it to ``path``.

    The temporary name carries the writer's process id, so the next writer in the folder removes what a killed
    one left (``remove_stale_temporaries``). A file-system error (not a folder, permission, disk full) is a
    one-line ``ClipvizError`` that names the path and the cause; ``path`` is then unchanged.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.parent not in _cleaned:
            _cleaned.add(path.parent)
            remove_stale_temporaries(path.parent, recursive=False)
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name), suffix=".tmp", dir=path.parent)
        os.close(fd)
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; results are meant to be shared
        os.replace(tmp, path)
    except OSError as error:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise ClipvizError(f"cannot write '{path}': {_cause(error, path)}") from error
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_folder(out: Path) -> Iterator[Path]:
    """Yield a hidden staging folder beside ``out`` to be filled; on success it replaces ``out`` (an existing one
    is removed only after the new one is in place), on any failure it is removed and ``out`` is unchanged. What
    a killed writer left is removed by the next one (``remove_stale_temporaries``)."""
    import shutil

    out = Path(out)
    staging = None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out.parent, recursive=False, name=out.name)
        staging = Path(tempfile.mkdtemp(prefix=temp_prefix(out.name), suffix=".staging", dir=out.parent))
        yield staging
        os.chmod(staging, 0o755)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=temp_prefix(out.name), suffix=".old", dir=out.parent))
            out.rename(old / out.name)
            staging.rename(out)
            shutil.rmtree(old)
        else:
            staging.rename(out)
    except OSError as error:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        raise ClipvizError(f"cannot write '{out}': {_cause(error, out)}") from error
    except BaseException:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        raise


def _cause(error: OSError, path: Path) -> str:
    """What went wrong, in words: a parent that is a file, permission, a full disk, ..."""
    if isinstance(error, (FileExistsError, NotADirectoryError)):
        for parent in (path, *path.parents):
            if parent.exists() and not parent.is_dir():
                return f"'{parent}' is a file, not a folder"
    if error.errno == errno.ENOSPC:
        return "no space left on the device (free some and run again: finished work is kept)"
    return error.strerror or str(error) or type(error).__name__


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_json(path: Path, data: dict) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_png(path: Path, image: Image.Image) -> None:
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def read_png(path: Path, size: Sequence[int] | None = None) -> Image.Image | None:
    """The RGB image in ``path``, or ``None`` if it is missing, unreadable or truncated, or not ``size`` (H, W)."""
    try:
        with Image.open(path) as img:
            img.load()
            image = img.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None
    if size is not None and list(size) != [image.height, image.width]:
        return None
    return image


def read_json(path: Path) -> dict | None:
    """The JSON object in ``path``, or ``None`` if it is missing, unreadable or not an object."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# ------------------------------------------------------------------------------------------------ provenance
def settings_id(settings: dict) -> str:
    """A short hash of the settings that determine a result (to skip finished work only when nothing changed)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def versions() -> dict[str, str]:
    """Versions of clipviz and the libraries that shape its results."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("clipviz", "torch", "transformers", "open-clip-torch", "timm", "accelerate"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


# ------------------------------------------------------------------------------------------------ the layout
def _in_shards(path: Path, root: Path) -> bool:
    return SHARDS_DIR in path.relative_to(root).parts


#: How a visualization was made, in the order the atlas and the Space show them side by side.
VISUALIZATION_KINDS = ("plain", "data-guided", "accentuated")


def _kind_suffix(kind: str) -> str:
    if kind not in VISUALIZATION_KINDS:
        raise ValueError(f"unknown visualization kind {kind!r}; known: {', '.join(VISUALIZATION_KINDS)}")
    return "" if kind == "plain" else f".{kind}"


def visualization_path(out: Path, group: str, key: str, sample_seed: int | None = None, kind: str = "plain") -> Path:
    """Where a visualization's PNG goes (its sidecar is the same path with ``.json``). Each kind has its own name,
    so a plain, a data-guided and an accentuated image of one neuron live side by side in one folder.

    >>> visualization_path(Path("out"), "blocks.1.mlp.hook_post", "7", kind="data-guided").name
    '7.data-guided.png'
    """
    seed = "" if sample_seed is None else f"-s{sample_seed}"
    return Path(out) / group / f"{key}{seed}{_kind_suffix(kind)}.png"


def grid_path(out: Path, group: str, kind: str = "plain") -> Path:
    """The labelled grid of one group's visualizations of one kind."""
    return Path(out) / group / f"{Path(GRID_FILE).stem}{_kind_suffix(kind)}.png"


def write_visualization(png: Path, image: Image.Image, meta: dict) -> None:
    """The PNG first, then its sidecar: a sidecar is only ever next to a finished image. An older copy of the
    same kind under the plain name is removed (``remove_old_style_copy``)."""
    write_png(png, image)
    write_json(png.with_suffix(".json"), meta)
    remove_old_style_copy(png, visualization_kind(meta))


def remove_old_style_copy(png: Path, kind: str) -> None:
    """Before each kind had its own name, every kind was written to ``<key>.png``: a data-guided or accentuated
    image found there is the predecessor of ``png`` and goes, so that the atlas does not show the neuron twice
    as that kind. A plain image there is kept."""
    if kind == "plain":
        return
    old = png.with_name(png.name.removesuffix(f"{_kind_suffix(kind)}.png") + ".png")
    meta = read_visualization_meta(old)
    if old != png and meta is not None and visualization_kind(meta) == kind:
        old.with_suffix(".json").unlink(missing_ok=True)
        old.unlink(missing_ok=True)


def read_visualization_meta(png: Path) -> dict | None:
    """The sidecar of a finished visualization, or ``None`` (missing, unreadable, or its PNG is missing)."""
    meta = read_json(png.with_suffix(".json"))
    if meta is None or not png.is_file() or "settings_id" not in meta or "kind" not in meta:
        return None
    return meta


def is_guided(recipe: Mapping) -> bool:
    """Whether a recipe's settings (``Recipe.to_dict()``, as results record them) match the statistics of
    reference images: features at its match points, or colours."""
    return bool(recipe.get("match") and recipe.get("match_weight")) or bool(recipe.get("colour_match"))


def visualization_kind(meta: dict) -> str:
    """``plain`` (the neuron's objective alone), ``data-guided`` (matched to its top examples: ``vital``) or
    ``accentuated`` (started from a seed image), from a visualization's metadata."""
    if meta.get("from_image"):
        return "accentuated"
    recipe = meta.get("recipe", {})
    return "data-guided" if is_guided(recipe) and meta.get("guide") else "plain"


def find_visualizations(root: Path) -> Iterator[tuple[Path, dict]]:
    """``(png, sidecar)`` of every finished visualization under ``root``, in path order."""
    root = Path(root)
    for meta_path in sorted(root.rglob("*.json")):
        if _in_shards(meta_path, root) or meta_path.name in (EXAMPLES_META, ATLAS_FILE, SWEEP_FILE):
            continue
        png = meta_path.with_suffix(".png")
        meta = read_visualization_meta(png)
        if meta is not None and read_png(png) is not None:  # a garbage PNG is unfinished work, not a result
            yield png, meta


def examples_dir(out: Path, hook: str) -> Path:
    return Path(out) / hook


def thumbnail_path(out: Path, index: int, settings: dict) -> Path:
    """Where the thumbnail of image ``index`` of an examples result with ``settings`` lives: under a folder named
    by the images' source identity and the model's input size (its crop), so two datasets mined into one folder,
    or a dataset whose images were replaced, never share a thumbnail."""
    source = settings.get("source_identity") or settings.get("source") or ""
    key = hashlib.sha256(f"{source}|{settings.get('image_size')}".encode()).hexdigest()[:12]
    return Path(out) / THUMBS_DIR / key / f"{index}.png"


def write_examples(out: Path, hook: str, tensors: dict, meta: dict) -> None:
    """Top-k tensors (safetensors) first, then the JSON that marks them finished."""
    from safetensors.torch import save_file

    folder = examples_dir(out, hook)
    atomic_write(folder / EXAMPLES_TENSORS, lambda tmp: save_file({k: v.contiguous() for k, v in tensors.items()}, tmp))
    write_json(folder / EXAMPLES_META, meta)


def read_examples(out: Path, hook: str) -> tuple[dict, dict]:
    """The tensors and the JSON of ``write_examples`` (``ValueError`` if either is unreadable or truncated)."""
    from safetensors.torch import load_file

    folder = examples_dir(out, hook)
    meta = read_json(folder / EXAMPLES_META)
    if meta is None:
        raise ValueError(f"'{folder / EXAMPLES_META}' is missing or not valid JSON")
    try:
        tensors = load_file(str(folder / EXAMPLES_TENSORS))
    except Exception as error:  # noqa: BLE001 - safetensors raises its own error type for corrupt files
        raise ValueError(f"'{folder / EXAMPLES_TENSORS}' is unreadable ({str(error).splitlines()[0]})") from None
    return tensors, meta


def has_examples(out: Path, hook: str) -> bool:
    return (examples_dir(out, hook) / EXAMPLES_META).is_file()


def find_examples(root: Path) -> Iterator[tuple[Path, str]]:
    """``(results folder, hook)`` of every examples result under ``root``."""
    root = Path(root)
    for meta_path in sorted(root.rglob(EXAMPLES_META)):
        if not _in_shards(meta_path, root):
            yield meta_path.parent.parent, meta_path.parent.name


def concepts_paths(out: Path, hook: str, method: str) -> tuple[Path, Path]:
    """The parquet and CSV files of one concept method's words for one hook."""
    folder = Path(out) / hook
    return folder / f"concepts-{method}.parquet", folder / f"concepts-{method}.csv"


def write_concepts(out: Path, hook: str, method: str, rows: list[dict]) -> list[Path]:
    """Rows (hook, neuron, rank, word, score, method, vocabulary) as parquet and CSV."""
    import csv
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    parquet, csv_path = concepts_paths(out, hook, method)
    atomic_write(parquet, lambda tmp: pq.write_table(pa.Table.from_pylist(rows), tmp))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["hook", "neuron"])
    writer.writeheader()
    writer.writerows(rows)
    write_text(csv_path, buf.getvalue())
    return [parquet, csv_path]


def find_concepts(root: Path) -> Iterator[tuple[Path, list[dict]]]:
    """``(parquet path, rows)`` of every concepts table under ``root`` (``ValueError``/``OSError`` if unreadable)."""
    import pyarrow.parquet as pq

    root = Path(root)
    for table_path in sorted(root.rglob("concepts-*.parquet")):
        if not _in_shards(table_path, root):
            yield table_path, pq.read_table(table_path).to_pylist()


def read_atlas(site: Path) -> dict:
    """The data of an atlas site (what ``clipviz atlas`` wrote to ``atlas.json``)."""
    return json.loads((Path(site) / ATLAS_FILE).read_text(encoding="utf-8"))


def is_atlas(path: Path) -> bool:
    return (Path(path) / ATLAS_FILE).is_file()


# ------------------------------------------------------------------------------------------------ sweeps
def sweep_paths(out: Path) -> dict[str, Path]:
    """Where each part of a sweep goes under its results folder ``out``."""
    out = Path(out)
    return {
        "state": out / SWEEP_FILE,
        "visualizations": out / "visualizations",
        "examples": out / "examples",
        "concepts": out / "concepts",
        "atlas": out / "atlas",
    }


def write_sweep_state(out: Path, state: dict) -> None:
    """The sweep's plan and its finished units (``{"plan": ..., "done": {unit: settings id}}``), atomically."""
    write_json(sweep_paths(out)["state"], state)


def read_sweep_state(out: Path) -> dict:
    """What ``write_sweep_state`` wrote, or an empty state (nothing finished) when there is none."""
    state = read_json(sweep_paths(out)["state"]) or {}
    state.setdefault("done", {})
    return state


# ------------------------------------------------------------------------------------------------ datasets
def write_results_dataset(folder: Path, dataset, card: str | None = None) -> list[Path]:
    """A ``datasets.Dataset`` of results as the Hub's dataset layout: ``data/train-00000-of-00001.parquet`` (and a
    ``README.md`` card when given), each written atomically."""
    folder = Path(folder)
    parquet = folder / DATASET_PARQUET
    atomic_write(parquet, lambda tmp: dataset.to_parquet(tmp))
    paths = [parquet]
    if card is not None:
        write_text(folder / "README.md", card)
        paths.append(folder / "README.md")
    return paths


def read_results_dataset(folder: Path):
    """The dataset that ``write_results_dataset`` wrote, read back with ``datasets.load_dataset`` (images decode
    to PIL)."""
    import datasets

    return datasets.load_dataset("parquet", data_files=str(Path(folder) / DATASET_PARQUET), split="train")
