"""Data sources: streams of images (with captions where there are any) for example mining and probe sets.

A source is a folder of images (recursively), a Hugging Face dataset id or a dataset saved with
``save_to_disk``, or a plug-in scheme such as ``world:<n>`` (held-out images of the bundled synthetic world).
Images that cannot be read come out as ``None`` so that callers can skip and count them; grayscale, CMYK and
palette images are converted to RGB, and images with transparency to RGBA, which the model's preprocessing
flattens as its library does (``clipviz.images.to_rgb``).

>>> source = open_source("world:8")
>>> source.length, next(iter(source))[2] is not None
(8, True)
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from clipviz.errors import ClipvizError
from clipviz.images import decoded, open_image
from clipviz.plugins import registry

IMAGE_SUFFIXES = {
    ".png", ".jpg", ".jpeg", ".jfif", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".ico",
    ".avif",
}  # fmt: skip


@dataclass
class Source:
    """A stream of (index, PIL image or None if unreadable, caption or None) with a length and names."""

    name: str
    length: int
    items: object  # callable (lo, hi) returning an iterator over indices lo..hi-1 (hi None: to the end)
    describe: list[str] = field(default_factory=list)  # a name per index (file path or dataset row)
    # What decides the images, beyond the name: a folder's files (path, size, modification time), a dataset's
    # fingerprint, split and columns. Finished work is reused only for the same identity, so replacing the images
    # behind one name is never answered from the old ones.
    identity: str = ""
    # The keyword arguments of ``open_source`` that reopen it as it is (a dataset's split and columns; none for a
    # folder or world:), so that a result's source can be opened again exactly
    options: dict = field(default_factory=dict)
    # Where to open it again from any working folder (a folder's absolute path; the name as given otherwise)
    location: str = ""

    def __post_init__(self) -> None:
        self.identity = self.identity or self.name
        self.location = self.location or self.name

    def __iter__(self) -> Iterator[tuple[int, Image.Image | None, str | None]]:
        return self.items(0, None)

    def range(self, lo: int, hi: int) -> Iterator[tuple[int, Image.Image | None, str | None]]:
        """The items with index in [lo, hi), reading only those."""
        return self.items(lo, hi)


def image_files(root: Path) -> list[Path]:
    """The image files under ``root``, sorted, through linked sub-folders too (each real folder once, so a link
    back up is no loop). A broken link is listed, so that it is skipped and counted as unreadable, never silently
    dropped.

    >>> import tempfile
    >>> top = Path(tempfile.mkdtemp())
    >>> (top / "a").mkdir(); (top / "a" / "x.png").touch(); (top / "b.jpg").touch(); (top / "notes.txt").touch()
    >>> (top / "a" / "up").symlink_to(top)  # a loop
    >>> [str(p.relative_to(top)) for p in image_files(top)]
    ['a/x.png', 'b.jpg']
    """
    import os

    found, seen = [], set()
    for folder, subfolders, names in os.walk(root, followlinks=True):
        real = Path(folder).resolve()
        if real in seen:  # reached again through a link: already listed
            subfolders.clear()
            continue
        seen.add(real)
        subfolders.sort()
        for name in names:
            p = Path(folder) / name
            if p.suffix.lower() in IMAGE_SUFFIXES and (p.is_file() or (p.is_symlink() and not p.exists())):
                found.append(p)
    return sorted(found)


def _files_digest(root: Path, files: list[Path]) -> str:
    """The identity of a folder's images: a hash of the folder's absolute path and each file's relative path, size,
    modification time and status-change time (not its bytes, which would read the whole folder). The last is what
    no copy can carry over: a file replaced by one of the same size and modification time (``cp -p``, a sync tool)
    changes it, so results of the old images are never taken for the new ones."""
    digest = hashlib.blake2b(str(root.resolve()).encode(), digest_size=12)
    for f in files:
        stat = f.stat() if f.exists() else f.lstat()  # a broken link: the link itself
        digest.update(f"{f.relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}\0{stat.st_ctime_ns}\n".encode())
    return f"folder:{digest.hexdigest()}"


UNREADABLE = (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError, ClipvizError)


def _read(path: Path) -> Image.Image | None:
    try:
        return open_image(path)  # upright; the model's backend flattens transparency
    except UNREADABLE:
        return None


def decode_cell(value: dict | None) -> Image.Image | None:
    """A cell of an undecoded ``datasets.Image`` column (``{"bytes", "path"}``), read as ``datasets`` reads it (a
    path in an archive or on the Hub too, upright by its EXIF orientation) and kept as clipviz keeps images
    (``decoded``); ``None`` where it cannot be read, so the row is skipped and counted."""
    import datasets

    if not isinstance(value, dict) or not (value.get("bytes") or value.get("path")):
        return None
    try:
        return decoded(ImageOps.exif_transpose(datasets.Image().decode_example(value)))
    except (*UNREADABLE, FileNotFoundError):
        return None


def undecoded(ds, column: str, spec: str):
    """``ds`` with its image ``column`` left as bytes, so that a damaged row is skipped and counted by
    ``decode_cell`` instead of failing the whole read inside ``datasets``. A column of anything but images is
    refused in one line."""
    import datasets

    feature = (ds.features or {}).get(column)
    if not isinstance(feature, datasets.Image):
        images = [k for k, v in (ds.features or {}).items() if isinstance(v, datasets.Image)]
        raise ClipvizError(
            f"column {column!r} of dataset '{spec}' holds {type(feature).__name__ if feature is not None else 'no'}"
            f" values, not images; its image columns: {', '.join(images) or 'none'}"
        )
    return ds.cast_column(column, datasets.Image(decode=False))


ACCEPTED = "a folder of images, world:<n>, a dataset saved with save_to_disk or a Hugging Face dataset id"


def check_spec(spec: object) -> None:
    """Refuse an empty (or blank) dataset spec in one line: as a path it would be the working folder.

    >>> check_spec("")
    Traceback (most recent call last):
    ...
    clipviz.errors.ClipvizError: empty dataset spec: give a folder of images, world:<n>, a dataset saved ...
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ClipvizError(f"empty dataset spec: give {ACCEPTED}")


def open_source(
    spec: str,
    *,
    split: str = "train",
    image_column: str | None = None,
    caption_column: str | None = None,
    streaming: bool = False,
) -> Source:
    """A folder, a plug-in source such as ``world:<n>``, or a Hugging Face dataset (id or saved dataset)."""
    check_spec(spec)
    scheme, sep, argument = spec.partition(":")
    factory = registry().sources.get(scheme) if sep else None
    path = Path(spec).expanduser()
    saved = (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()  # save_to_disk
    folder = factory is None and path.is_dir() and not saved
    if factory is not None or folder:  # options of Hugging Face datasets are refused here, not ignored
        asked = [
            name
            for name, given in (
                ("--split", split != "train"),
                ("--image-column", image_column is not None),
                ("--caption-column", caption_column is not None),
                ("--streaming", streaming),
            )
            if given
        ]
        if asked:
            kind = "a folder of images" if folder else f"a {scheme}: source"
            raise ClipvizError(f"{', '.join(asked)} is for Hugging Face datasets; '{spec}' is {kind}: leave it out")
    if factory is not None:
        return factory(argument)
    if not sep and spec in registry().sources and not path.exists():
        raise ClipvizError(f"dataset '{spec}' needs a count of images: use {spec}:<n>, e.g. {spec}:2000")
    if folder:
        files = image_files(path)
        if not files:
            raise ClipvizError(f"no images in '{spec}' (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")

        def folder_items(lo=0, hi=None):
            for i in range(lo, len(files) if hi is None else min(hi, len(files))):
                yield i, _read(files[i]), None

        described = [str(p.relative_to(path)) for p in files]
        return Source(
            spec, len(files), folder_items, described, _files_digest(path, files), location=str(path.resolve())
        )
    return _hf_source(spec, split, image_column, caption_column, streaming)


def _hf_source(spec: str, split: str, image_column: str | None, caption_column: str | None, streaming: bool) -> Source:
    import datasets

    from clipviz.model.backends.hub import fetching

    local = Path(spec).expanduser()
    if local.is_dir() and ((local / "dataset_info.json").is_file() or (local / "dataset_dict.json").is_file()):
        ds = datasets.load_from_disk(str(local))  # saved with Dataset.save_to_disk
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise ClipvizError(f"dataset '{spec}' has no split '{split}'; splits: {', '.join(ds)}")
            ds = ds[split]
        elif split != "train":
            raise ClipvizError(f"dataset '{spec}' was saved without splits: leave --split {split} out")
        streaming = False
    else:
        if local.exists() and not local.is_dir():
            raise ClipvizError(f"dataset '{spec}' is a file: use a folder of images, world:<n> or a dataset id")
        if spec.startswith((".", "/", "~")) or spec.count("/") > 1 or "\\" in spec:
            raise ClipvizError(
                f"dataset folder '{spec}' does not exist (accepted: a folder of images, world:<n>, a dataset saved "
                "with save_to_disk, or a Hugging Face dataset id)"
            )
        ds = fetching(spec, lambda: datasets.load_dataset(spec, split=split, streaming=streaming), what="dataset")
    features = ds.features or {}
    if image_column is None:
        image_column = next((k for k, v in features.items() if isinstance(v, datasets.Image)), None)
    if image_column is None or image_column not in features:
        raise ClipvizError(
            f"dataset '{spec}' has no image column{f' named {image_column!r}' if image_column else ''}"
            f"; columns: {', '.join(features)}"
        )
    if caption_column is not None and caption_column not in features:
        raise ClipvizError(f"dataset '{spec}' has no caption column {caption_column!r}; columns: {', '.join(features)}")
    if caption_column is None:
        caption_column = next((k for k in ("caption", "text", "label") if k in features), None)
    if streaming:
        splits = ds.info.splits or {}
        length = splits[split].num_examples if split in splits else None
    else:
        length = len(ds)
    if length == 0:
        raise ClipvizError(f"dataset '{spec}' split '{split}' is empty")

    ds = undecoded(ds, image_column, spec)

    def rows(lo=0, hi=None):
        if streaming:
            part = ds.skip(lo) if lo else ds
            part = part.take(hi - lo) if hi is not None else part
        else:
            part = ds.select(range(lo, len(ds) if hi is None else min(hi, len(ds))))
        for i, row in enumerate(part, start=lo):
            img = decode_cell(row[image_column])
            cap = row.get(caption_column) if caption_column else None
            if hasattr(features.get(caption_column), "int2str") and isinstance(cap, int):
                cap = features[caption_column].int2str(cap)
            yield i, img, (str(cap) if cap is not None else None)

    fingerprint = getattr(ds, "_fingerprint", None)
    if fingerprint is None:  # a streaming dataset has none: what its info says of the data instead
        info = getattr(ds, "info", None)
        fingerprint = f"{getattr(info, 'config_name', None)}:{getattr(info, 'version', None)}:{length}"
    identity = f"dataset:{spec}|{split}|{image_column}|{caption_column}|{fingerprint}"
    options = {"split": split, "image_column": image_column, "caption_column": caption_column, "streaming": streaming}
    return Source(spec, length or 0, rows, [], identity, options)
