"""Datasets as in-memory tensors, from a registry (digits, mnist, cifar10/100, imagefolder).

Small image datasets fit in memory (CIFAR-10 is 150 MB as uint8), so whole splits are kept as
tensors and moved to the device once; `gaprune.data.loaders` batches them there. torchvision is
imported lazily (~2.5 s).
"""
from __future__ import annotations

import functools
import inspect
import os
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from gaprune.utils.errors import GapruneError
from gaprune.data.custom import load_custom
from gaprune.data.splits import DataBundle, RawDataset, TensorSplit  # noqa: F401  (re-exported)
from gaprune.utils.registry import Registry

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)


DATASETS: Registry[Callable[[str, bool], RawDataset]] = Registry("dataset")


def _shared_prepare_script() -> str:
    """Where prepare.py probably is, relative to the working directory when possible."""
    base = os.environ.get("GAPRUNE_SHARED_DATA")
    script = (Path(base) if base else Path(__file__).resolve().parents[2] / "shared" / "data")
    script = script / "prepare.py"
    if not script.exists():
        return "prepare.py"
    try:
        return os.path.relpath(script)
    except ValueError:
        return str(script)


def _not_found(name: str, data_dir: str, download: bool, err: Exception) -> GapruneError:
    if download:
        return GapruneError(
            f"{name} could not be downloaded into '{data_dir}' ({err}); without internet use "
            f"download=false and prepare it with: python {_shared_prepare_script()} {name} "
            f"--root {data_dir}"
        )
    extra = " --archive cifar100-images.zip" if name == "cifar100" else ""
    return GapruneError(
        f"{name} not found under '{data_dir}' (download=false). Prepare it with: "
        f"python {_shared_prepare_script()} {name} --root {data_dir}{extra}   "
        "(or set dataset.download=true where there is internet)"
    )


def _stratified_order(y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random order whose every prefix is (nearly) class-balanced.

    Each sample gets its rank inside its class (after a seeded shuffle) divided by the
    class size; sorting by that quantile interleaves classes in proportion.
    """
    n = y.shape[0]
    perm = torch.randperm(n, generator=generator)
    ys = y[perm]
    counts = torch.bincount(ys).double()
    by_class = torch.sort(ys, stable=True).indices
    rank = torch.empty(n, dtype=torch.float64)
    starts = torch.cumsum(counts, 0) - counts
    rank[by_class] = torch.arange(n, dtype=torch.float64) - starts[ys[by_class]]
    quantile = (rank + 0.5) / counts[ys]
    return perm[torch.sort(quantile, stable=True).indices]


def check_limit(label: str, value: int | None) -> None:
    """A sample/size cap is a positive int, or None for no cap."""
    if value is not None and (not isinstance(value, int) or value < 1):
        raise GapruneError(f"{label}={value!r} must be a positive integer or null")


def _loader(name: str, options: dict) -> Callable[..., "RawDataset"]:
    """The loader of a registered dataset, or of `custom.<module>.<Class>` (any map-style torch
    Dataset, `gaprune.data.custom`) with its `options`."""
    if name.startswith("custom.") and name not in DATASETS:
        allowed = [k for k in inspect.signature(load_custom).parameters if k not in ("name", "data_dir", "download")]
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise GapruneError(f"dataset '{name}' has no option '{unknown[0]}'; valid options: {', '.join(allowed)}")
        return functools.partial(load_custom, name, **options)
    fn = DATASETS.get(name)
    if options:
        raise GapruneError(f"dataset '{name}' has no option(s) {', '.join(sorted(options))}")
    return fn


def load_dataset(name: str, data_dir: str = "data", download: bool = False,
                 val_fraction: float = 0.1, seed: int = 0, train_limit: int | None = None,
                 test_limit: int | None = None, image_size: int | None = None, **options) -> DataBundle:
    """Load a dataset with a validation split held out of train (test is never used for
    selection). `train_limit` caps the training pool *before* the validation hold-out, so
    train+val == train_limit; subsets and the split are stratified and seeded.

    `image_size` is passed to loaders that take it (`imagefolder`, default 32); datasets with a
    fixed geometry (digits, mnist, cifar) reject a different value. `options`: the loader's own
    (custom datasets: split_arg, splits, kwargs, hflip)."""
    if not isinstance(val_fraction, (int, float)) or not 0.0 < val_fraction <= 0.5:
        raise GapruneError(f"val_fraction={val_fraction!r} must be in (0, 0.5]")
    check_limit("train_limit", train_limit)
    check_limit("test_limit", test_limit)
    check_limit("image_size", image_size)
    fn = _loader(name, options)
    if image_size is not None and "image_size" in inspect.signature(fn).parameters:
        raw = fn(str(data_dir), bool(download), image_size=image_size)
    else:
        raw = fn(str(data_dir), bool(download))
        native = int(raw.train.x.shape[-1])
        if image_size is not None and image_size != native:
            raise GapruneError(
                f"dataset '{name}' has a fixed image size of {native}, not image_size={image_size}; "
                "image_size only applies to imagefolder"
            )
    labels = int(torch.unique(raw.train.y).numel())
    if min(raw.num_classes, labels) < 2:
        where = f" under '{data_dir}'" if name == "imagefolder" else ""
        raise GapruneError(f"dataset '{name}'{where} has {min(raw.num_classes, labels)} class; a classifier needs "
                           "at least 2 (imagefolder: one sub-folder per class)")
    gen = torch.Generator().manual_seed(int(seed))
    pool, test = raw.train, raw.test
    if train_limit is not None and train_limit < len(pool):
        pool = pool.subset(_stratified_order(pool.y, gen)[:train_limit])
    if test_limit is not None and test_limit < len(test):
        test = test.subset(_stratified_order(test.y, gen)[:test_limit])
    n_val = round(val_fraction * len(pool))
    if n_val < 1 or n_val >= len(pool):
        raise GapruneError(
            f"val_fraction={val_fraction} of {len(pool)} training samples leaves an empty "
            "split; raise train_limit or change val_fraction"
        )
    order = _stratified_order(pool.y, gen)
    val, train = pool.subset(order[:n_val]), pool.subset(order[n_val:])
    return DataBundle(
        train=train, val=val, test=test, num_classes=raw.num_classes,
        in_channels=int(train.x.shape[1]), image_size=int(train.x.shape[-1]),
        mean=raw.mean, std=raw.std, name=name, hflip=raw.hflip, crop_padding=raw.crop_padding,
        classes=tuple(raw.classes),
    )


@DATASETS.register("digits")
def _load_digits(data_dir: str, download: bool) -> RawDataset:
    """scikit-learn's bundled 8x8 digits, upsampled once to 32x32 so LeNet-5 fits; a fixed
    stratified 20% test split (random_state=0) independent of the run seed."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False).clamp_(0, 1)
    y = torch.as_tensor(digits.target, dtype=torch.int64)
    tr, te = train_test_split(torch.arange(len(y)).numpy(), test_size=0.2, random_state=0,
                              stratify=y.numpy())
    tr, te = torch.as_tensor(tr), torch.as_tensor(te)
    mean, std = x[tr].mean().item(), x[tr].std().item()
    return RawDataset(TensorSplit(x[tr].contiguous(), y[tr]), TensorSplit(x[te].contiguous(), y[te]),
                10, (mean,), (std,), hflip=False, crop_padding=2)


@DATASETS.register("mnist")
def _load_mnist(data_dir: str, download: bool) -> RawDataset:
    """MNIST padded by 2 px of zeros to 32x32 (classic LeNet-5 geometry)."""
    from torchvision.datasets import MNIST

    splits = []
    for train in (True, False):
        try:
            ds = MNIST(data_dir, train=train, download=download)
        except (RuntimeError, OSError, ValueError, IndexError) as err:
            raw = Path(data_dir) / "MNIST" / "raw"
            files = [raw / os.path.splitext(os.path.basename(url))[0] for url, _ in MNIST.resources]
            present = [f for f in files if f.is_file()]
            if len(present) == len(files):  # every file is there, so one is cut short or damaged
                raise GapruneError(
                    f"mnist files under '{raw}' are corrupt ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else '?'}); "
                    f"delete them and rebuild with: python {_shared_prepare_script()} mnist --root {data_dir}"
                ) from None
            raise _not_found("mnist", data_dir, download, err) from None
        x = F.pad(ds.data.unsqueeze(1), (2, 2, 2, 2)).contiguous()
        splits.append(TensorSplit(x, ds.targets.to(torch.int64)))
    return RawDataset(splits[0], splits[1], 10, MNIST_MEAN, MNIST_STD, hflip=False, crop_padding=2)


def _load_cifar(name: str, data_dir: str, download: bool, num_classes: int,
                mean: Sequence[float], std: Sequence[float]) -> RawDataset:
    """CIFAR via torchvision; offline files rebuilt by prepare.py have other md5s, so
    download=False uses a subclass that only checks that the files exist."""
    import pickle

    from torchvision.datasets import CIFAR10, CIFAR100

    official = CIFAR10 if name == "cifar10" else CIFAR100
    cls = official
    if not download:
        cls = type(f"{official.__name__}Local", (official,), {
            "train_list": [[f, None] for f, _ in official.train_list],
            "test_list": [[f, None] for f, _ in official.test_list],
            "meta": {**official.meta, "md5": None},
        })
    splits = []
    for train in (True, False):
        try:
            ds = cls(data_dir, train=train, download=download)
        except (RuntimeError, OSError) as err:
            raise _not_found(name, data_dir, download, err) from None
        except (pickle.UnpicklingError, EOFError, KeyError, ValueError) as err:
            raise GapruneError(
                f"{name} files under '{data_dir}' are unreadable ({type(err).__name__}: {err}); "
                f"delete them and prepare again with: python {_shared_prepare_script()} {name} "
                f"--root {data_dir}"
            ) from None
        x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
        splits.append(TensorSplit(x, torch.as_tensor(ds.targets, dtype=torch.int64)))
    return RawDataset(splits[0], splits[1], num_classes, tuple(mean), tuple(std), hflip=True,
                crop_padding=4)


for _name, _classes, _mean, _std in (("cifar10", 10, CIFAR10_MEAN, CIFAR10_STD),
                                     ("cifar100", 100, CIFAR100_MEAN, CIFAR100_STD)):
    DATASETS.register(_name)(
        functools.partial(_load_cifar, _name, num_classes=_classes, mean=_mean, std=_std))


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def _scan_image_folder(root: Path) -> dict[str, list[Path]]:
    """class name -> sorted image files, for torchvision's ImageFolder layout `root/<class>/*`
    (files may sit in nested folders below the class folder)."""
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    return {
        c: sorted(p for p in (root / c).rglob("*")
                  if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        for c in classes
    }


def _read_images(files: Sequence[Path], size: int) -> torch.Tensor:
    """Decode to RGB, resize the shorter side to `size` and centre-crop size x size (the usual
    Resize+CenterCrop; square images are just resized); uint8 (N, 3, size, size)."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    out = torch.empty(len(files), 3, size, size, dtype=torch.uint8)
    for i, path in enumerate(files):
        try:
            with Image.open(path) as img:
                img = img.convert("RGB")
                w, h = img.size
                scale = size / min(w, h)
                nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
                if (nw, nh) != (w, h):
                    img = img.resize((nw, nh), Image.BILINEAR)
                left, top = (nw - size) // 2, (nh - size) // 2
                img = img.crop((left, top, left + size, top + size))
                out[i] = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
        except (UnidentifiedImageError, OSError, ValueError) as err:
            raise GapruneError(f"imagefolder: cannot read image '{path}' ({err}); remove or "
                               "replace it") from None
    return out


def _channel_stats(x: torch.Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std in [0, 1] units of a uint8 (N, C, H, W) tensor, in chunks."""
    total = torch.zeros(x.shape[1], dtype=torch.float64)
    squares = torch.zeros(x.shape[1], dtype=torch.float64)
    for lo in range(0, x.shape[0], chunk):
        part = x[lo:lo + chunk].to(torch.float64) / 255.0
        total += part.sum(dim=(0, 2, 3))
        squares += (part * part).sum(dim=(0, 2, 3))
    count = x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / count
    std = (squares / count - mean * mean).clamp_min(1e-12).sqrt()
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


@DATASETS.register("imagefolder")
def _load_imagefolder(data_dir: str, download: bool, image_size: int = 32) -> RawDataset:
    """Any RGB classification dataset in torchvision's ImageFolder layout:
    `<data_dir>/train/<class>/*` and `<data_dir>/test/<class>/*` (classes sorted by name, as
    ImageFolder numbers them; test may hold a subset of the train classes).

    Every image is decoded once, resized (shorter side) and centre-cropped to image_size, and
    kept in memory as uint8: N*3*S*S bytes (50k images at 32 px = 150 MB, at 64 px = 600 MB),
    so this is meant for small and medium datasets. mean/std are computed from the train
    folder (before the validation hold-out). Augmentation: random crop with S//8 zero padding
    and horizontal flips (natural images)."""
    if download:
        raise GapruneError("imagefolder has nothing to download; set download=false and put the "
                           f"images under '{data_dir}/train/<class>/' and '{data_dir}/test/<class>/'")
    if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 1:
        raise GapruneError(f"image_size={image_size!r} must be a positive integer")
    root = Path(data_dir)
    splits: dict[str, dict[str, list[Path]]] = {}
    for split in ("train", "test"):
        folder = root / split
        if not folder.is_dir():
            raise GapruneError(
                f"imagefolder: no '{split}' folder at '{folder}'; expected "
                f"'{root}/train/<class>/<image>' and '{root}/test/<class>/<image>' "
                "(set dataset.data_dir to the folder that holds train/ and test/)"
            )
        found = _scan_image_folder(folder)
        if not found or not any(found.values()):
            raise GapruneError(
                f"imagefolder: '{folder}' holds no images in class sub-folders "
                f"(expected '{folder}/<class>/<image>' with one of {', '.join(IMAGE_EXTENSIONS)})"
            )
        splits[split] = found
    classes = list(splits["train"])
    empty = [c for c in classes if not splits["train"][c]]
    if empty:
        raise GapruneError(f"imagefolder: train class folder(s) without images under "
                           f"'{root / 'train'}': {', '.join(empty)}")
    unknown = [c for c, files in splits["test"].items() if files and c not in splits["train"]]
    if unknown:
        raise GapruneError(f"imagefolder: test classes not in '{root / 'train'}': "
                           f"{', '.join(unknown)}")
    index = {c: i for i, c in enumerate(classes)}
    raw: list[TensorSplit] = []
    for split in ("train", "test"):
        files = [(p, index[c]) for c, paths in splits[split].items() for p in paths]
        x = _read_images([p for p, _ in files], image_size)
        raw.append(TensorSplit(x, torch.tensor([y for _, y in files], dtype=torch.int64)))
    mean, std = _channel_stats(raw[0].x)
    return RawDataset(raw[0], raw[1], len(classes), mean, std, hflip=True,
                crop_padding=max(1, image_size // 8), classes=tuple(classes))
