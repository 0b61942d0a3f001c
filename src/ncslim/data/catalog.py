"""What ncslim knows about each dataset: shape, official files, md5 and where it is looked for."""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path


class DataError(ValueError):
    """A dataset that cannot be found, fetched or read; the message says how to fix it."""


@dataclass(frozen=True)
class DatasetInfo:
    """What a model and the batch pipeline need to know about a dataset."""

    name: str
    num_classes: int
    in_channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: bool  # zero-pad + random crop + random horizontal flip when training
    image_size: int = 32
    classes: tuple[str, ...] = ()  # folder datasets: the class names, label i is classes[i]
    test_split: str = ""  # folder datasets: where the test images come from, in words
    # folder datasets: a digest of the classes and every file's path, label, size and mtime; a
    # resumed run must see the same (ncslim.run.rundir)
    fingerprint: str = ""


_CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
_CIFAR_STD = (0.2023, 0.1994, 0.2010)

DATASETS: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo("cifar10", 10, 3, _CIFAR_MEAN, _CIFAR_STD, augment=True),
    "cifar100": DatasetInfo("cifar100", 100, 3, _CIFAR_MEAN, _CIFAR_STD, augment=True),
    "svhn": DatasetInfo(
        "svhn", 10, 3, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), augment=False
    ),
    # mean/std of the 60000 train images zero-padded to 32x32, / 255 (tests recompute them)
    "fashion-mnist": DatasetInfo("fashion-mnist", 10, 1, (0.2190,), (0.3318,), augment=False),
}

# Official file names, their md5 (Fashion-MNIST: md5 of the decompressed IDX content) and the
# download base URL. Tests patch MD5 with the checksums of their tiny files.
_IDX = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
MD5: dict[str, dict[str, str]] = {
    "cifar10": {"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"},
    "cifar100": {"cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85"},
    "svhn": {
        "train_32x32.mat": "e26dedcc434d2e4c54c9b2d4a06d8373",
        "test_32x32.mat": "eb5a983be6a315427106f1b164d9cef3",
        "extra_32x32.mat": "a93ce644f1a588dc4d68dda5feec44a7",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte.gz": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte.gz": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte.gz": "15d484375f8d13e6eb1aabb0c3f46965",
    },
}
URLS: dict[str, str] = {
    "cifar10": "https://www.cs.toronto.edu/~kriz",
    "cifar100": "https://www.cs.toronto.edu/~kriz",
    "svhn": "http://ufldl.stanford.edu/housenumbers",
    "fashion-mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com",
}
# No official IDX file decompresses to more (train-images: 47,040,016 bytes), so no content
# longer than this can match an official md5: it bounds what a damaged IDX file or a download
# costs to decompress.
_IDX_MAX_CONTENT = 64 << 20
# CIFAR archive layout: folder inside the archive, train members, test members, label key.
_CIFAR = {
    "cifar10": ("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)),
                ("test_batch",), "labels"),
    "cifar100": ("cifar-100-python", ("train",), ("test",), "fine_labels"),
}
DEBIAN_ROOT = Path("/usr/share/datasets")
DEBIAN_PACKAGES = {"fashion-mnist": "dataset-fashion-mnist"}
_FIX = "delete it and download again (--download)"


def cache_root() -> Path:
    """``${XDG_CACHE_HOME:-~/.cache}/ncslim``, read at each call."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "ncslim"


FOLDER = "folder"  # a folder of image files, one subfolder per class (ncslim.data.folder)


def dataset_names() -> list[str]:
    """The names :func:`load_dataset` accepts: the built-in datasets, then ``folder``."""
    return [*DATASETS, FOLDER]


def _info(name: str) -> DatasetInfo:
    if name in DATASETS:
        return DATASETS[name]
    close = difflib.get_close_matches(str(name), dataset_names(), n=2, cutoff=0.5)
    hint = f" (did you mean {' or '.join(close)}?)" if close else ""
    if name == FOLDER:
        raise DataError(f"{FOLDER}: an image folder has no fixed files or search folders; "
                        f"read it with load_dataset({FOLDER!r}, DIR)")
    raise DataError(f"unknown dataset {name!r}{hint}; known: {', '.join(dataset_names())}")


def candidate_dirs(name: str, data_dir: str | Path | None = None) -> list[Path]:
    """The folders searched for ``name``'s files, in order (see the module docstring). A
    ``data_dir`` given is the only place searched: a copy elsewhere is never read instead."""
    _info(name)
    dirs: list[Path] = []
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        return [root, root / name]
    env = os.environ.get("NCSLIM_DATA", "")
    if env:
        dirs.append(Path(env).expanduser() / name)
    dirs += [Path(DEBIAN_ROOT) / name, cache_root() / name]
    return list(dict.fromkeys(dirs))


def _one_line(err: BaseException | str) -> str:
    return " ".join(str(err).split()) or type(err).__name__
