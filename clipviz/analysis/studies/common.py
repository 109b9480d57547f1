"""What every study shares: the probe set, the result base class, linear read-outs, accuracy and plotting.

A study reads a model (``clipviz.HookedVisionModel``) on a :class:`Probe`: images in ``[0, 1]`` at the model's
input size, with whatever the data set knows about them (labelled tasks, captions, semantic factors, foreground
masks). ``load_probe`` builds one from ``world:N`` (the bundled synthetic world: every label, factor and mask is
exact), a folder of images (sub-folders as classes) or a Hugging Face data set (label, caption and mask columns).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from clipviz.data.sources import check_spec
from clipviz.errors import ClipvizError, check_int
from clipviz.images import fit_pil, pil_to_tensor, to_rgb
from clipviz.plugins import registry

if TYPE_CHECKING:
    from PIL import Image

    from clipviz.model.hooked import HookedVisionModel

PAPER = 'Ghiasi et al., "What do Vision Transformers Learn? A Visual Exploration" (arXiv:2212.06727)'


# ---------------------------------------------------------------------------------------------------- probe set
@dataclass
class Task:
    """A labelled classification task on the probe images.

    ``prompts`` (one per class) make it a zero-shot task for CLIP-like models; without them the model's own class
    logits are read and ``labels`` must be indices into the model's classes.
    """

    name: str
    labels: np.ndarray  # (n,) class index per image
    classes: list[str]
    prompts: list[str] | None = None

    @property
    def chance(self) -> float:
        return 1.0 / max(1, len(self.classes))


@dataclass
class Probe:
    """Images ``(n, 3, H, W)`` in ``[0, 1]`` and what is known about them."""

    name: str
    images: torch.Tensor
    tasks: list[Task] = field(default_factory=list)
    captions: list[str | None] | None = None
    masks: torch.Tensor | None = None  # (n, H, W) bool, True on the foreground
    concepts: np.ndarray | None = None  # (n, c) semantic features (e.g. factor one-hots), float
    concept_names: list[str] | None = None

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def semantic_features(self) -> tuple[np.ndarray, list[str], str]:
        """Semantic features of each image: the data set's concepts, else caption words, else task labels."""
        if self.concepts is not None:
            return self.concepts.astype(np.float32), list(self.concept_names or []), "concepts"
        if self.captions is not None and any(self.captions):
            return (*caption_words(self.captions), "caption words")
        if self.tasks:
            cols, names = [], []
            for task in self.tasks:
                for k, cls in enumerate(task.classes):
                    cols.append(task.labels == k)
                    names.append(f"{task.name}={cls}")
            return np.stack(cols, 1).astype(np.float32), names, "labels"
        raise ClipvizError(
            f"probe set '{self.name}' has no captions, labels or concepts: the semantic study needs "
            "one of them (world:N, a captioned or labelled data set, or folders as classes)"
        )


_STOP = {"a", "an", "the", "of", "on", "in", "at", "and", "with", "is", "are", "there", "some", "to", "near", "its"}


def caption_words(captions: Sequence[str | None], max_words: int = 256, min_count: int = 3):
    """Binary bag of words (n, w) of the captions' most frequent content words, and the words."""
    tokens = [{w.strip(".,;:!?\"'()").lower() for w in (c or "").split()} - _STOP - {""} for c in captions]
    counts: dict[str, int] = {}
    for words in tokens:
        for w in words:
            counts[w] = counts.get(w, 0) + 1
    vocab = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))[:max_words]
    index = {w: j for j, w in enumerate(vocab)}
    out = np.zeros((len(captions), len(vocab)), dtype=np.float32)
    for i, words in enumerate(tokens):
        for w in words:
            if w in index:
                out[i, index[w]] = 1.0
    return out, vocab


def _mask_to_tensor(img, size: tuple[int, int], preprocess=None) -> torch.Tensor:
    """A mask image as a boolean (H, W) tensor at ``size``, resized and cropped as its image is: by ``fit_pil``,
    or by the model's own ``preprocess`` (the mask as a black-and-white image through the same resize and crop,
    thresholded at half)."""
    from PIL import Image

    array = np.asarray(img.convert("L"))
    binary = array > 127 if array.max() > 1 else array > 0
    if preprocess is None:
        resized = np.asarray(fit_pil(Image.fromarray(binary.astype(np.uint8) * 255), size, Image.NEAREST))
        return torch.from_numpy(resized > 127)
    return preprocess(Image.fromarray(binary.astype(np.uint8) * 255).convert("RGB")).mean(0) > 0.5


def load_probe(
    spec: str,
    size: tuple[int, int],
    n: int,
    *,
    seed: int = 0,
    split: str | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    caption_column: str | None = None,
    mask_column: str | None = None,
    templates: Sequence[str] = ("a photo of a {}.",),
    preprocess: Callable[[Image.Image], torch.Tensor] | None = None,
) -> Probe:
    """``world`` / ``world:N`` (N images of the synthetic world, single objects, with masks and factors), a folder
    of images (classes from the first sub-folder when there are several) or a Hugging Face data set (id or saved
    directory; ``label_column`` / ``caption_column`` / ``mask_column`` name its columns). At most ``n`` images at
    ``size``: through ``preprocess`` where given (a model's own ``preprocess_pil``: its library's resize and crop,
    masks alike), else their shortest side resized and the centre cropped; never stretched."""
    if n < 1:
        raise ClipvizError(f"the number of probe images (--samples) must be >= 1, got {n}")
    check_spec(spec)
    scheme, _, argument = spec.partition(":")
    plugged = registry().probes.get(scheme)
    path = Path(spec).expanduser()
    folder = path.is_dir() and not (path / "dataset_info.json").is_file() and not (path / "dataset_dict.json").is_file()
    if plugged is not None or folder:  # options of Hugging Face datasets are refused here, not ignored
        columns = {"--image-column": image_column, "--label-column": label_column, "--caption-column": caption_column,
                   "--mask-column": mask_column, "--split": split}  # fmt: skip
        asked = [flag for flag, value in columns.items() if value is not None]
        if asked:
            kind = "a folder of images" if plugged is None else f"a {scheme}: probe set"
            raise ClipvizError(f"{', '.join(asked)} is for Hugging Face datasets; '{spec}' is {kind}: leave it out")
    if plugged is not None:  # a plug-in's probe set with labels and masks, e.g. world or world:N
        return plugged(argument, n=n, size=size, seed=seed)
    if folder:
        return _folder_probe(spec, size, n, templates, preprocess)
    columns = (image_column, label_column, caption_column, mask_column)
    return _hf_probe(spec, size, n, split or "train", columns, templates, preprocess)


def _fitter(size, preprocess) -> Callable[[Image.Image], torch.Tensor]:
    return preprocess if preprocess is not None else (lambda image: pil_to_tensor(fit_pil(to_rgb(image), size)))


def _folder_probe(spec: str, size, n: int, templates, preprocess) -> Probe:
    from clipviz.data.sources import open_source

    source = open_source(spec)
    fit = _fitter(size, preprocess)
    images, groups = [], []
    for i, img, _ in source:
        if img is None:
            continue
        images.append(fit(img))
        rel = Path(source.describe[i])
        groups.append(rel.parts[0] if len(rel.parts) > 1 else None)
        if len(images) == n:
            break
    if not images:
        raise ClipvizError(f"no readable images in '{spec}'")
    tasks = []
    if all(g is not None for g in groups) and len(set(groups)) > 1:
        classes = sorted(set(groups))
        labels = np.array([classes.index(g) for g in groups])
        tasks.append(Task("folder", labels, classes, [templates[0].format(c) for c in classes]))
    return Probe(spec, torch.stack(images), tasks)


def _hf_probe(spec, size, n, split, columns, templates, preprocess) -> Probe:
    import datasets

    from clipviz.data.sources import decode_cell, undecoded

    image_column, label_column, caption_column, mask_column = columns
    local = Path(spec).expanduser()
    if local.is_dir():
        ds = datasets.load_from_disk(str(local))
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise ClipvizError(f"dataset '{spec}' has no split '{split}'; splits: {', '.join(ds)}")
            ds = ds[split]
        elif split != "train":
            raise ClipvizError(f"dataset '{spec}' was saved without splits: leave --split {split} out")
    else:
        from clipviz.model.backends.hub import fetching

        ds = fetching(spec, lambda: datasets.load_dataset(spec, split=split))
    features = ds.features
    if image_column is None:
        image_column = next(
            (k for k, v in features.items() if isinstance(v, datasets.Image) and k != mask_column), None
        )
    for what, col in (
        ("image", image_column),
        ("label", label_column),
        ("caption", caption_column),
        ("mask", mask_column),
    ):
        if col is not None and col not in features:
            raise ClipvizError(f"dataset '{spec}' has no {what} column {col!r}; columns: {', '.join(features)}")
    if image_column is None:
        raise ClipvizError(f"dataset '{spec}' has no image column; columns: {', '.join(features)}")
    if label_column is None and "label" in features:
        label_column = "label"
    if caption_column is None:
        caption_column = next((k for k in ("caption", "text") if k in features), None)
    ds = undecoded(ds.select(range(min(n, len(ds)))), image_column, spec)
    fit = _fitter(size, preprocess)
    images, masks, raw_labels, captions = [], [], [], []
    for row in ds:
        image = decode_cell(row[image_column])  # an unreadable row is left out whole: the columns stay aligned
        if image is None:
            continue
        images.append(fit(image))
        if mask_column:
            masks.append(_mask_to_tensor(row[mask_column], size, preprocess))
        if label_column:
            raw_labels.append(row[label_column])
        if caption_column:
            captions.append(None if row[caption_column] is None else str(row[caption_column]))
    if not images:
        raise ClipvizError(f"no readable images in dataset '{spec}'")
    tasks = []
    if label_column:
        feature = features[label_column]
        if hasattr(feature, "names"):
            classes, labels = list(feature.names), np.asarray(raw_labels)
        else:
            classes = sorted({str(v) for v in raw_labels})
            labels = np.array([classes.index(str(v)) for v in raw_labels])
        tasks.append(Task(label_column, labels, classes, [templates[0].format(c) for c in classes]))
    return Probe(
        spec, torch.stack(images), tasks, captions=captions or None, masks=torch.stack(masks) if masks else None
    )


# ---------------------------------------------------------------------------------------------------- results
@dataclass
class StudyResult(ABC):
    """Base of every study's result: plain data, ``to_dict()`` for JSON, ``figure()`` for the plot."""

    study: ClassVar[str] = ""
    claim: ClassVar[str] = ""
    model: str
    dataset: str
    settings: dict

    def to_dict(self) -> dict:
        data = {"study": self.study, "claim": self.claim, "paper": PAPER}
        for f in fields(self):
            data[f.name] = _plain(getattr(self, f.name))
        data["summary"] = _plain(self.summary())
        return data

    def summary(self) -> dict:
        """The few numbers that answer the claim (also in the JSON under ``summary``)."""
        return {}

    @abstractmethod
    def figure(self):
        """The study's plot (a matplotlib ``Figure``)."""

    def save(self, out: str | Path) -> tuple[Path, Path]:
        """Write ``out/<study>.json`` and ``out/<study>.png`` (each atomically); returns both paths."""
        from clipviz.results import atomic_write, write_json

        out = Path(out)
        json_path, png_path = out / f"{self.study}.json", out / f"{self.study}.png"
        write_json(json_path, self.to_dict())
        fig = self.figure()
        fig.tight_layout()
        atomic_write(png_path, lambda tmp: fig.savefig(tmp, format="png", dpi=90, bbox_inches="tight"))
        return json_path, png_path


def _plain(value):
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, torch.Tensor):
        return _plain(value.tolist())
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return None if math.isnan(v) else round(v, 6)
    if isinstance(value, np.integer):
        return int(value)
    if hasattr(value, "__dataclass_fields__"):
        return _plain(asdict(value))
    return value


def new_figure(rows: int = 1, cols: int = 1, width: float = 5.0, height: float = 3.6):
    """A matplotlib figure on the Agg canvas (no pyplot, no global backend change) and its axes (flat list)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ClipvizError(
            "the analyses' plots need matplotlib: pip install matplotlib (or pip install 'clipviz[analysis]')"
        ) from None
    fig = Figure(figsize=(width * cols, height * rows))
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, [ax for row in axes for ax in row]


def require_matplotlib() -> None:
    """Fail early (before any work) with the one-line hint if matplotlib is missing."""
    new_figure()


# ---------------------------------------------------------------------------------------------------- running
def progress(total: int, desc: str, enabled: bool = True):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="step", disable=not enabled, leave=False)


def chunks(n: int, batch: int) -> Iterator[slice]:
    batch = check_int(batch, "batch size", 1, None)
    for lo in range(0, n, batch):
        yield slice(lo, min(n, lo + batch))


def hook_layout(model: HookedVisionModel, block: int):
    """The model's token layout at a block (``model.layout``), checked to be a plain ViT grid."""
    if model.backend.hierarchical:
        raise ClipvizError(
            f"model '{model.spec}' is hierarchical (its patch grid changes between stages): the "
            "analyses need a plain ViT with one patch grid"
        )
    return model.layout(block)


@torch.no_grad()
def collect(
    model: HookedVisionModel,
    images: torch.Tensor,
    hooks: Sequence[str],
    batch: int,
    reduce: Callable[[str, torch.Tensor], torch.Tensor] | None = None,
    bar=None,
) -> dict[str, torch.Tensor]:
    """Activations at ``hooks`` for all images (float32, on the CPU), reduced per batch by ``reduce(hook, act)``."""
    out: dict[str, list[torch.Tensor]] = {h: [] for h in hooks}
    for part in chunks(images.shape[0], batch):
        _, cache = model.run_with_cache(images[part].to(model.device), list(hooks))
        for h in hooks:
            act = cache[h].float()
            out[h].append((reduce(h, act) if reduce else act).cpu())
        if bar is not None:
            bar.update(1)
    return {h: torch.cat(v) for h, v in out.items()}


def grid_coordinates(grid: tuple[int, int]) -> torch.Tensor:
    """(P, 2) row, column of each patch in row-major order."""
    rows, cols = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    return torch.stack([rows.flatten(), cols.flatten()], 1).float()


def grid_distances(grid: tuple[int, int]) -> torch.Tensor:
    """(P, P) Euclidean distance between patches, in patch units."""
    xy = grid_coordinates(grid)
    return torch.cdist(xy, xy)


# ---------------------------------------------------------------------------------------------------- read-outs
def _standardise(train: torch.Tensor, *others: torch.Tensor):
    """Standardise columns by the training rows; columns constant up to float noise become 0."""
    mean = train.mean(0)
    std = train.std(0)
    floor = 1e-5 * float(train.abs().mean()) + 1e-12
    keep = std > floor
    std = torch.where(keep, std, torch.ones_like(std))
    out = [torch.where(keep, (x - mean) / std, torch.zeros_like(x)) for x in (train, *others)]
    return out


def ridge_fit(x: torch.Tensor, y: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Ridge regression of ``y`` (n, k) on standardised ``x`` (n, d): weights (d, k) and intercept (k,)."""
    x64, y64 = x.double(), y.double()
    ym = y64.mean(0)
    gram = x64.T @ x64 + alpha * x.shape[0] * torch.eye(x.shape[1], dtype=torch.float64)
    w = torch.linalg.solve(gram, x64.T @ (y64 - ym))
    return w, ym


class StreamingRidgeClassifier:
    """A linear classifier (ridge regression to one-hot targets on standardised features) fitted from running sums,
    so that a probe over many tokens never holds them all: ``update`` with training batches, ``fit``, then
    ``predict``. Features that are constant up to float noise over the training rows are dropped."""

    def __init__(self, dim: int, n_classes: int):
        self.n, self.k = 0, n_classes
        self.sum = torch.zeros(dim, dtype=torch.float64)
        self.abs_sum = 0.0
        self.gram = torch.zeros(dim, dim, dtype=torch.float64)
        self.xy = torch.zeros(dim, n_classes, dtype=torch.float64)
        self.y_sum = torch.zeros(n_classes, dtype=torch.float64)

    def update(self, x: torch.Tensor, y: torch.Tensor) -> None:
        x = x.detach().double().cpu()
        onehot = F.one_hot(y.long().cpu(), self.k).double()
        self.n += x.shape[0]
        self.sum += x.sum(0)
        self.abs_sum += float(x.abs().sum())
        self.gram += x.T @ x
        self.xy += x.T @ onehot
        self.y_sum += onehot.sum(0)

    def fit(self, alpha: float = 1e-3) -> StreamingRidgeClassifier:
        n, d = self.n, self.sum.shape[0]
        self.mean = self.sum / n
        cov = self.gram / n - torch.outer(self.mean, self.mean)
        std = cov.diagonal().clamp(min=0).sqrt()
        keep = std > 1e-5 * self.abs_sum / (n * d) + 1e-12
        self.scale = torch.where(keep, 1 / std.clamp(min=1e-300), torch.zeros_like(std))
        self.bias = self.y_sum / n
        gram = n * self.scale[:, None] * cov * self.scale[None, :]
        rhs = self.scale[:, None] * (self.xy - n * torch.outer(self.mean, self.bias))
        self.weight = torch.linalg.solve(gram + alpha * n * torch.eye(d, dtype=torch.float64), rhs)
        return self

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().double().cpu()
        return (((x - self.mean) * self.scale) @ self.weight + self.bias).argmax(1)


def cv_r2(
    x: np.ndarray | torch.Tensor,
    y: np.ndarray | torch.Tensor,
    folds: int = 3,
    alphas: Sequence[float] = (1e-3, 1e-2, 1e-1, 1.0),
    seed: int = 0,
) -> torch.Tensor:
    """Cross-validated R^2 of a ridge regression of every column of ``y`` (n, k) on ``x`` (n, d): (k,).

    Folds split the rows at random (``seed``); the held-out predictions of all folds are pooled, and the best
    ridge strength is taken per column (the same grid for every feature set, so comparisons stay fair).
    """
    x = torch.as_tensor(x, dtype=torch.float32)
    y = torch.as_tensor(y, dtype=torch.float32)
    n = x.shape[0]
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    pred = torch.zeros(len(alphas), *y.shape, dtype=torch.float64)
    for f in range(folds):
        test = order[f::folds]
        train = torch.ones(n, dtype=torch.bool)
        train[test] = False
        xs, xt = _standardise(x[train], x[test])
        for a, alpha in enumerate(alphas):
            w, b = ridge_fit(xs, y[train], alpha)
            pred[a, test] = xt.double() @ w + b
    y64 = y.double()
    sst = ((y64 - y64.mean(0)) ** 2).sum(0)
    sse = ((pred - y64) ** 2).sum(1)  # (alphas, k)
    r2 = 1 - sse / sst.clamp(min=1e-12)
    r2 = torch.where(sst > 1e-12 * n, r2, torch.zeros_like(r2))
    return r2.max(0).values.float()


# ---------------------------------------------------------------------------------------------------- accuracy
class Predictor:
    """Predicts a task's classes: zero-shot against class prompts (CLIP-like models) or from the class logits."""

    def __init__(self, model: HookedVisionModel, task: Task):
        self.model, self.task = model, task
        if model.is_clip:
            if not task.prompts:
                raise ClipvizError(f"task '{task.name}' has no class prompts for zero-shot classification")
            with torch.no_grad():
                self.text = F.normalize(model.encode_text(list(task.prompts)).float(), dim=-1)
        elif model.backend.output_kind == "logits":
            self.text = None
        else:
            raise ClipvizError(
                f"model '{model.spec}' has neither a text tower nor class logits: accuracy needs one of them"
            )

    def classify(self, output: torch.Tensor) -> torch.Tensor:
        """Class predictions from the model's head output (B, ...)."""
        if self.text is not None:
            return (F.normalize(output, dim=-1) @ self.text.T.to(output.device)).argmax(1).cpu()
        return output.argmax(1).cpu()


def accuracy_tasks(model: HookedVisionModel, probe: Probe) -> list[Task]:
    if not probe.tasks:
        raise ClipvizError(
            f"probe set '{probe.name}' has no labels: accuracy needs world:N, a folder with one "
            "sub-folder per class or a data set with a label column (--label-column)"
        )
    return probe.tasks


def accuracies(
    model: HookedVisionModel, predictors: Sequence[Predictor], images: torch.Tensor, batch: int
) -> dict[str, float]:
    """Accuracy per task on ``images`` (all tasks share each forward pass of the image tower)."""
    preds: dict[str, list[torch.Tensor]] = {p.task.name: [] for p in predictors}
    for part in chunks(images.shape[0], batch):
        with torch.no_grad():
            out = model(images[part].to(model.device)).float()
        for p in predictors:
            preds[p.task.name].append(p.classify(out))
    return {p.task.name: float((torch.cat(preds[p.task.name]).numpy() == p.task.labels).mean()) for p in predictors}


__all__ = [
    "PAPER",
    "Predictor",
    "Probe",
    "StreamingRidgeClassifier",
    "StudyResult",
    "Task",
    "accuracies",
    "caption_words",
    "chunks",
    "collect",
    "cv_r2",
    "grid_distances",
    "load_probe",
    "new_figure",
    "progress",
]
