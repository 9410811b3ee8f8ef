"""Datasets and the tensor loader: splits, determinism, normalisation, augmentation."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from gaprune.data.datasets import TensorSplit, load_dataset
from gaprune.data.loaders import TensorLoader, make_loader
from gaprune.utils.errors import GapruneError


def _rows(x: torch.Tensor) -> Counter:
    return Counter(bytes(r.numpy().tobytes()) for r in x.reshape(len(x), -1))


def test_digits_sizes_and_metadata(digits) -> None:
    assert (len(digits.train), len(digits.val), len(digits.test)) == (1293, 144, 360)
    assert digits.train.x.shape[1:] == (1, 32, 32) and digits.train.x.dtype == torch.float32
    assert digits.train.y.dtype == torch.int64
    assert float(digits.train.x.min()) >= 0.0 and float(digits.train.x.max()) <= 1.0
    assert (digits.num_classes, digits.in_channels, digits.image_size) == (10, 1, 32)
    assert not digits.hflip and len(digits.mean) == len(digits.std) == 1
    for split in (digits.train, digits.val, digits.test):
        assert torch.bincount(split.y, minlength=10).min() > 0.08 * len(split)  # stratified


def test_digits_splits_partition_the_data(digits) -> None:
    from sklearn.datasets import load_digits

    images = torch.as_tensor(load_digits().images, dtype=torch.float32).unsqueeze(1) / 16
    full = F.interpolate(images, size=(32, 32), mode="bilinear", align_corners=False).clamp(0, 1)
    parts = torch.cat([digits.train.x, digits.val.x, digits.test.x])
    assert _rows(parts) == _rows(full)  # every sample exactly once across the three splits
    assert not set(_rows(digits.val.x)) & set(_rows(digits.test.x))


def test_splits_are_deterministic_by_seed(digits) -> None:
    again = load_dataset("digits", seed=0)
    other = load_dataset("digits", seed=1)
    assert torch.equal(again.val.x, digits.val.x) and torch.equal(again.train.y, digits.train.y)
    assert not torch.equal(other.val.x, digits.val.x)
    assert torch.equal(other.test.x, digits.test.x)  # the test split never depends on seed


def test_limits_take_seeded_subsets() -> None:
    small = load_dataset("digits", train_limit=500, test_limit=100, val_fraction=0.2, seed=3)
    assert (len(small.train), len(small.val), len(small.test)) == (400, 100, 100)
    assert torch.bincount(small.test.y, minlength=10).min() >= 9
    same = load_dataset("digits", train_limit=500, test_limit=100, val_fraction=0.2, seed=3)
    assert torch.equal(same.test.x, small.test.x) and torch.equal(same.train.x, small.train.x)


@pytest.mark.parametrize("kwargs,match", [
    ({"val_fraction": 0.0}, "val_fraction=0.0"), ({"val_fraction": 0.7}, "val_fraction=0.7"),
    ({"train_limit": 0}, "train_limit=0"), ({"test_limit": -5}, "test_limit=-5"),
    ({"train_limit": 3}, "train_limit"),
])
def test_bad_dataset_arguments_raise(kwargs: dict, match: str) -> None:
    with pytest.raises(GapruneError, match=match):
        load_dataset("digits", **kwargs)


def test_unknown_dataset_and_split_raise(digits) -> None:
    with pytest.raises(GapruneError, match="'svhn'.*cifar10"):
        load_dataset("svhn")
    with pytest.raises(GapruneError, match="'valid'"):
        make_loader(digits, "valid", 32)
    with pytest.raises(GapruneError, match="batch_size=0"):
        make_loader(digits, "train", 0)


def test_loader_normalises_and_covers_split(digits) -> None:
    loader = make_loader(digits, "train", 100)
    assert len(loader) == 13 and loader.num_samples == 1293
    batches = list(loader)
    assert [len(y) for _, y in batches][-1] == 93
    x = torch.cat([b for b, _ in batches])
    assert x.dtype == torch.float32 and x.shape == (1293, 1, 32, 32)
    assert abs(x.mean().item()) < 0.05 and abs(x.std().item() - 1) < 0.05
    expected = (digits.train.x - digits.mean[0]) / digits.std[0]
    assert torch.allclose(x, expected, atol=1e-6)  # no shuffle: original order
    assert len(TensorLoader(digits.train, 100, digits.mean, digits.std, drop_last=True)) == 12


def test_shuffle_is_seeded_and_changes_per_epoch(digits) -> None:
    def epochs(seed: int, n: int = 2) -> list[torch.Tensor]:
        loader = make_loader(digits, "train", 64, shuffle=True, seed=seed)
        return [torch.cat([y for _, y in loader]) for _ in range(n)]

    a, b, c = epochs(0), epochs(0), epochs(1)
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert not torch.equal(a[0], a[1]) and not torch.equal(a[0], c[0])
    assert not torch.equal(a[0], digits.train.y)
    assert torch.equal(a[0].sort().values, digits.train.y.sort().values)  # a permutation


def test_make_loader_limit_takes_first_samples(digits) -> None:
    loader = make_loader(digits, "val", 16, limit=40)
    assert loader.num_samples == 40 and len(loader) == 3
    assert torch.equal(torch.cat([y for _, y in loader]), digits.val.y[:40])
    with pytest.raises(GapruneError, match="limit=0"):
        make_loader(digits, "val", 16, limit=0)


def test_augmentation_changes_pixels_keeps_shapes(digits) -> None:
    plain = next(iter(make_loader(digits, "train", 128)))[0]
    aug = make_loader(digits, "train", 128, augment=True, seed=5)
    first, second = next(iter(aug)), next(iter(aug))
    assert first[0].shape == plain.shape and not torch.equal(first[0], plain)
    assert not torch.equal(first[0], second[0])  # fresh draws each epoch
    again = next(iter(make_loader(digits, "train", 128, augment=True, seed=5)))[0]
    assert torch.equal(again, first[0])


def _shifted(img: torch.Tensor, dy: int, dx: int, pad: int) -> torch.Tensor:
    h, w = img.shape[-2:]
    padded = F.pad(img, (pad, pad, pad, pad))
    return padded[..., pad + dy:pad + dy + h, pad + dx:pad + dx + w]


def test_augmentation_is_zero_padded_crop_and_optional_flip() -> None:
    x = torch.randint(1, 256, (64, 3, 8, 8), dtype=torch.uint8)  # no zeros in the image
    split = TensorSplit(x, torch.zeros(64, dtype=torch.int64))
    mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    crops = next(iter(TensorLoader(split, 64, mean, std, augment=True, crop_padding=2)))[0]
    flips = next(iter(TensorLoader(split, 64, mean, std, augment=True, crop_padding=0,
                                   hflip=True)))[0]
    src = x.float() / 255
    n_flipped = 0
    for i in range(64):
        shifts = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                  if torch.equal(crops[i], _shifted(src[i], dy, dx, 2))]
        assert shifts, f"sample {i} is not a zero-padded crop"
        if torch.equal(flips[i], src[i].flip(-1)):
            n_flipped += 1
        else:
            assert torch.equal(flips[i], src[i])
    assert 10 < n_flipped < 54


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "mnist"])
def test_missing_files_raise_with_prepare_hint(name: str, tmp_path: Path) -> None:
    with pytest.raises(GapruneError) as info:
        load_dataset(name, data_dir=str(tmp_path / "nothing"), download=False)
    msg = str(info.value)
    assert "prepare.py" in msg and name in msg and str(tmp_path / "nothing") in msg
    assert "download=false" in msg and "\n" not in msg


def test_real_cifar10(cifar10_root: Path) -> None:
    bundle = load_dataset("cifar10", data_dir=str(cifar10_root), train_limit=2000,
                          test_limit=500)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (1800, 200, 500)
    assert bundle.train.x.shape[1:] == (3, 32, 32) and bundle.train.x.dtype == torch.uint8
    assert (bundle.num_classes, bundle.in_channels, bundle.image_size) == (10, 3, 32)
    assert bundle.hflip and bundle.crop_padding == 4
    for split in (bundle.train, bundle.val, bundle.test):
        assert int(split.y.min()) == 0 and int(split.y.max()) == 9
    assert torch.bincount(bundle.test.y).tolist() == [50] * 10
    x = torch.cat([b for b, _ in make_loader(bundle, "train", 512)])
    assert x.mean(dim=(0, 2, 3)).abs().max() < 0.1
    assert (x.std(dim=(0, 2, 3)) - 1).abs().max() < 0.1
    xb, yb = next(iter(make_loader(bundle, "train", 64, shuffle=True, augment=True)))
    assert xb.shape == (64, 3, 32, 32) and yb.shape == (64,)


def test_real_mnist(mnist_root: Path) -> None:
    bundle = load_dataset("mnist", data_dir=str(mnist_root))
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (54000, 6000, 10000)
    assert bundle.train.x.shape[1:] == (1, 32, 32) and bundle.train.x.dtype == torch.uint8
    assert bundle.test.y[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]  # official order
    assert int(bundle.test.x[:, :, :2].max()) == 0 and int(bundle.test.x[..., -2:].max()) == 0
    assert not bundle.hflip and bundle.crop_padding == 2
    x = torch.cat([b for b, _ in make_loader(bundle, "test", 2000)])
    # 2-px zero padding lowers the mean below MNIST's official 0.1307 (784/1024 of it)
    assert x.mean().item() == pytest.approx((0.1325 * 784 / 1024 - 0.1307) / 0.3081, abs=0.01)


def _image_folder(root: Path, classes: dict[str, int], size: tuple[int, int] = (20, 12),
                  colors: dict[str, tuple[int, int, int]] | None = None) -> None:
    """`root/<class>/img<i>.png`, a flat colour per class (shade varies with i)."""
    from PIL import Image

    for c, (name, count) in enumerate(classes.items()):
        folder = root / name
        folder.mkdir(parents=True)
        base = (colors or {}).get(name, (40 * c, 255 - 60 * c, 100))
        for i in range(count):
            rgb = tuple(min(255, v + 2 * i) for v in base)
            Image.new("RGB", size, rgb).save(folder / f"img{i}.png")


@pytest.fixture()
def tiny_folder(tmp_path: Path) -> Path:
    root = tmp_path / "tiny"
    _image_folder(root / "train", {"cat": 6, "dog": 6, "emu": 6})
    _image_folder(root / "test", {"cat": 2, "dog": 2, "emu": 2})
    return root


def test_imagefolder_loads_resized_rgb_uint8(tiny_folder: Path) -> None:
    bundle = load_dataset("imagefolder", data_dir=str(tiny_folder), val_fraction=0.2, seed=0)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (14, 4, 6)
    assert bundle.train.x.shape[1:] == (3, 32, 32) and bundle.train.x.dtype == torch.uint8
    assert (bundle.num_classes, bundle.in_channels, bundle.image_size) == (3, 3, 32)
    assert bundle.classes == ("cat", "dog", "emu")  # sorted names -> 0, 1, 2 as ImageFolder does
    assert torch.bincount(bundle.test.y).tolist() == [2, 2, 2]
    pool = torch.cat([bundle.train.y, bundle.val.y])
    assert torch.bincount(pool).tolist() == [6, 6, 6]
    # flat colours survive the resize; class 1 ("dog") of the test split is (40, 195, 100)+2i
    dog = bundle.test.x[bundle.test.y == 1]
    assert dog[0, :, 0, 0].tolist() == [40, 195, 100]
    assert torch.all(dog[0] == dog[0][:, :1, :1])
    # mean/std per channel from the train folder, in [0, 1] units
    train = torch.cat([bundle.train.x, bundle.val.x]).float() / 255
    assert bundle.mean == pytest.approx(train.mean(dim=(0, 2, 3)).tolist(), abs=1e-6)
    assert bundle.std == pytest.approx(train.std(dim=(0, 2, 3), unbiased=False).tolist(), abs=1e-5)
    assert bundle.hflip and bundle.crop_padding == 4
    xb, yb = next(iter(make_loader(bundle, "train", 8, shuffle=True, augment=True)))
    assert xb.shape == (8, 3, 32, 32) and xb.dtype == torch.float32 and yb.shape == (8,)


def test_imagefolder_image_size_and_test_subset_of_classes(tmp_path: Path) -> None:
    root = tmp_path / "sized"
    _image_folder(root / "train", {"a": 4, "b": 4, "c": 4}, size=(30, 10))
    _image_folder(root / "test", {"c": 3})  # test may hold fewer classes
    bundle = load_dataset("imagefolder", data_dir=str(root), image_size=16, val_fraction=0.25)
    assert bundle.train.x.shape[1:] == (3, 16, 16) and bundle.image_size == 16
    assert bundle.num_classes == 3 and bundle.test.y.tolist() == [2, 2, 2]
    assert bundle.crop_padding == 2
    same = load_dataset("imagefolder", data_dir=str(root), image_size=16, val_fraction=0.25)
    assert torch.equal(same.train.x, bundle.train.x) and torch.equal(same.val.y, bundle.val.y)


def test_image_size_is_only_for_resizable_datasets() -> None:
    assert load_dataset("digits", image_size=32).image_size == 32  # its own size is fine
    with pytest.raises(GapruneError, match="fixed image size of 32.*image_size=64"):
        load_dataset("digits", image_size=64)
    with pytest.raises(GapruneError, match="image_size=0"):
        load_dataset("digits", image_size=0)


def test_imagefolder_missing_or_empty_folders_raise(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(GapruneError, match="no 'train' folder") as info:
        load_dataset("imagefolder", data_dir=str(missing))
    assert str(missing / "train") in str(info.value) and "\n" not in str(info.value)

    no_test = tmp_path / "no_test"
    _image_folder(no_test / "train", {"a": 3, "b": 3})
    with pytest.raises(GapruneError, match="no 'test' folder") as info:
        load_dataset("imagefolder", data_dir=str(no_test))
    assert str(no_test / "test") in str(info.value)

    empty = tmp_path / "empty"
    (empty / "train" / "a").mkdir(parents=True)
    (empty / "test").mkdir()
    with pytest.raises(GapruneError, match="holds no images") as info:
        load_dataset("imagefolder", data_dir=str(empty))
    assert str(empty / "train") in str(info.value)

    stray = tmp_path / "stray"
    _image_folder(stray / "train", {"a": 3, "b": 3})
    _image_folder(stray / "test", {"a": 1, "zebra": 1})
    with pytest.raises(GapruneError, match="test classes not in .*zebra"):
        load_dataset("imagefolder", data_dir=str(stray))

    gap = tmp_path / "gap"
    _image_folder(gap / "train", {"a": 3})
    (gap / "train" / "b").mkdir()
    _image_folder(gap / "test", {"a": 1})
    with pytest.raises(GapruneError, match="without images.*: b"):
        load_dataset("imagefolder", data_dir=str(gap))

    broken = tmp_path / "broken"
    _image_folder(broken / "train", {"a": 3, "b": 3})
    _image_folder(broken / "test", {"a": 1})
    (broken / "train" / "a" / "bad.png").write_bytes(b"not a png")
    with pytest.raises(GapruneError, match="cannot read image .*bad.png"):
        load_dataset("imagefolder", data_dir=str(broken))

    with pytest.raises(GapruneError, match="nothing to download"):
        load_dataset("imagefolder", data_dir=str(broken), download=True)
