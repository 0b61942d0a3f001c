"""Image folders as a dataset (ncslim.data.folder): layout, conversion, split, cache, errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import ncslim
from ncslim.cli import main
from ncslim.config import load_config
from ncslim.data import DataError, augment_pad, batches, load_dataset, scan_folder
from ncslim.data import decode as D
from ncslim.data.folder import channel_stats
from ncslim.models.files import ModelFileError

Image = pytest.importorskip("PIL.Image")

RED, BLUE = (255, 0, 0), (0, 0, 255)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    """Every test gets its own empty cache folder."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "ncslim" / "folders"


def save(path: Path, array: np.ndarray, mode: str | None = None, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)
    image.save(path, **kwargs)
    return path


def noise(seed: int, shape: tuple[int, ...] = (20, 30, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def make_folder(root: Path, classes=("cat", "dog"), train: int = 6, val: int = 2,
                held: str | None = "val") -> Path:
    """PNG and JPEG noise: ``train`` images per class in root/train, ``val`` in root/<held>."""
    seed = 0
    for split, count in (("train", train), (held, val)):
        if split is None:
            continue
        for name in classes:
            for i in range(count):
                seed += 1
                save(root / split / name / f"{i}.{'png' if i % 2 else 'jpg'}", noise(seed))
    return root


def solid(out: np.ndarray, colour: tuple[int, int, int], tolerance: int = 0) -> bool:
    """Whether every pixel of ``[3, H, W]`` ``out`` is ``colour`` (within ``tolerance``)."""
    return bool((np.abs(out.reshape(3, -1).T.astype(int) - np.asarray(colour)) <= tolerance).all())


def one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


# ----------------------------------------------------------------------------- layout


def test_classes_files_and_what_is_skipped(tmp_path):
    root = make_folder(tmp_path / "d", classes=("zebra", "ant", "bee"), train=3, val=1)
    save(root / "train" / "ant" / "deeper" / "nested.png", noise(99))  # any depth counts
    save(root / "train" / "bee" / "LOUD.JPG", noise(96), format="JPEG")  # any case
    save(root / "train" / "ant" / ".hidden" / "x.png", noise(98))
    save(root / "train" / "ant" / ".x.png", noise(97))
    (root / "train" / "ant" / "notes.txt").write_text("not an image")
    (root / "train" / "ant" / "labels.csv").write_text("nor this")
    (root / "train" / "ant" / "features.h5").write_bytes(b"\x89HDF\r\n\x1a\n")  # Pillow: a stub
    (root / "train" / ".git").mkdir()  # a hidden folder is no class
    layout = scan_folder(root)
    assert layout.classes == ("ant", "bee", "zebra")
    assert layout.test_split == "val/" and layout.skipped == 3
    by_path = {f.path: f.label for f in layout.train}
    assert len(by_path) == 11 and by_path["train/ant/deeper/nested.png"] == 0
    assert by_path["train/bee/LOUD.JPG"] == 1
    assert by_path["train/zebra/0.jpg"] == 2 and not any(".x" in p for p in by_path)
    assert sorted(f.path for f in layout.test) == [f"val/{c}/0.jpg" for c in ("ant", "bee",
                                                                              "zebra")]
    assert {f.label for f in layout.test} == {0, 1, 2}


def test_val_may_lack_a_class_and_test_is_the_fallback(tmp_path):
    root = make_folder(tmp_path / "d", held="test")
    (root / "test" / "dog").rename(tmp_path / "gone")
    layout = scan_folder(root)
    assert layout.test_split == "test/" and {f.label for f in layout.test} == {0}
    make_folder(tmp_path / "both", held="val")
    make_folder(tmp_path / "both", held="test", train=0, val=1)
    assert scan_folder(tmp_path / "both").test_split == "val/"  # val/ first; test/ left alone


def test_held_out_split_is_stratified_fixed_and_stable(tmp_path):
    root = tmp_path / "d"
    counts = {"a": 20, "b": 2, "c": 1, "d": 35}
    for name, count in counts.items():
        for i in range(count):
            save(root / "train" / name / f"{i:02d}.png", noise(i, (4, 4, 3)))
    layout = scan_folder(root)
    held = {name: sorted(f.path for f in layout.test if f.label == label)
            for label, name in enumerate(layout.classes)}
    assert {k: len(v) for k, v in held.items()} == {"a": 2, "b": 1, "c": 0, "d": 4}
    assert len(layout.train) == sum(counts.values()) - 7
    assert not {f.path for f in layout.train} & {f.path for f in layout.test}
    assert "10% of each class of train/ held out" in layout.test_split
    again = scan_folder(root)
    assert again.train == layout.train and again.test == layout.test  # same split, same order
    save(root / "train" / "d" / "new.png", noise(1, (4, 4, 3)))  # 36 images: still 4 held out
    moved = {f.path for f in scan_folder(root).test} ^ {f.path for f in layout.test}
    assert moved <= {"train/d/new.png"} | set(held["d"])
    assert len(moved) <= 2  # at most the new file took the place of one


def test_class_folders_directly_in_data_dir(tmp_path):
    for name in ("x", "y"):
        for i in range(10):
            save(tmp_path / "flat" / name / f"{i}.png", noise(i, (4, 4, 3)))
    layout = scan_folder(tmp_path / "flat")
    assert layout.classes == ("x", "y") and len(layout.test) == 2
    assert layout.train[0].path.split("/")[0] in ("x", "y")
    assert "of the folder held out" in layout.test_split


@pytest.mark.parametrize("problem, words", [
    ("missing", "no such folder"),
    ("no classes", "no class folders"),
    ("empty class", "train/dog: the class folder holds no images"),
    ("val class not in train", "val/bird: class 'bird' is not a class of the training set"),
    ("val without train", "has val/ but no train/"),
    ("one image per class", "no test images"),
])
def test_layout_problems_are_one_line(tmp_path, problem, words):
    root = tmp_path / "d"
    if problem != "missing":
        make_folder(root, train=1 if problem == "one image per class" else 3,
                    held=None if problem == "one image per class" else "val")
    if problem == "no classes":
        for sub in (root / "train").iterdir():
            for f in sub.iterdir():
                f.rename(root / "train" / f"{sub.name}{f.name}")
            sub.rmdir()
    elif problem == "empty class":
        for f in (root / "train" / "dog").iterdir():
            f.unlink()
        (root / "train" / "dog" / "readme.txt").write_text("no images here")
    elif problem == "val class not in train":
        save(root / "val" / "bird" / "0.png", noise(0))
    elif problem == "val without train":
        (root / "train").rename(tmp_path / "elsewhere")
    with pytest.raises(DataError, match=words) as err:
        load_dataset("folder", root)
    one_line(err)


def test_loading_needs_a_data_dir_and_takes_no_download(tmp_path):
    with pytest.raises(DataError, match="give --data-dir") as err:
        load_dataset("folder")
    one_line(err)
    with pytest.raises(DataError, match="leave --download out"):
        load_dataset("folder", make_folder(tmp_path / "d"), download=True)
    with pytest.raises(DataError, match=r"cifar10 images are 32x32; --input-size"):
        load_dataset("cifar10", tmp_path, input_size=64)
    with pytest.raises(DataError, match=r"--input-size must be an integer in \[8, 1024\]"):
        load_dataset("folder", tmp_path / "d", input_size=7)


def test_a_broken_training_image_names_the_file(tmp_path):
    root = make_folder(tmp_path / "d")
    (root / "train" / "dog" / "3.png").write_bytes(b"not an image at all")
    with pytest.raises(DataError, match="train/dog/3.png: cannot be read as an image") as err:
        load_dataset("folder", root)
    one_line(err)


# ----------------------------------------------------------------------------- loading, cache


def test_loaded_tensors_labels_and_statistics(tmp_path):
    root = make_folder(tmp_path / "d", classes=("b", "a", "c"), train=5, val=2)
    data = load_dataset("folder", root, input_size=12)
    assert data.train_images.shape == (15, 3, 12, 12) and data.train_images.dtype == torch.uint8
    assert data.test_images.shape == (6, 3, 12, 12) and data.train_labels.dtype == torch.int64
    info = data.info
    assert (info.name, info.num_classes, info.in_channels, info.image_size) == ("folder", 3, 3, 12)
    assert info.classes == ("a", "b", "c") and info.augment
    layout = scan_folder(root)
    for i, f in enumerate(layout.train):  # row i is file i of the stored order, decoded
        assert data.train_labels[i] == f.label
        assert np.array_equal(data.train_images[i].numpy(),
                              D.decode_image(str(root / f.path), 12))
    pixels = data.train_images.numpy().astype(np.float64) / 255
    assert info.mean == pytest.approx(pixels.mean(axis=(0, 2, 3)), abs=1e-12)
    assert info.std == pytest.approx(pixels.std(axis=(0, 2, 3)), abs=1e-12)


def test_channel_stats_floor_a_constant_channel():
    images = torch.zeros(4, 3, 5, 5, dtype=torch.uint8)
    images[:, 0] = 255
    mean, std = channel_stats(images)
    assert mean == [1.0, 0.0, 0.0] and std == [1 / 255] * 3


def test_limits_sample_every_class(tmp_path):
    root = make_folder(tmp_path / "d", classes=("a", "b", "c"), train=8, val=4)
    data = load_dataset("folder", root, limit_train=9, limit_test=6)
    assert len(data.train_labels) == 9 and len(data.test_labels) == 6
    assert set(data.train_labels.tolist()) == {0, 1, 2}
    full = load_dataset("folder", root)
    assert torch.equal(data.train_images, full.train_images[:9])
    assert data.info == full.info  # the statistics are those of every training image


def counting(monkeypatch) -> list[str]:
    calls: list[str] = []
    real = D.decode_image

    def count(path, size):
        calls.append(path)
        return real(path, size)

    monkeypatch.setattr(D, "decode_image", count)
    return calls


def test_second_load_reads_the_cache(tmp_path, monkeypatch, cache):
    root = make_folder(tmp_path / "d")
    calls = counting(monkeypatch)
    first = load_dataset("folder", root)
    assert len(calls) == 16 and len(list(cache.glob("*.pt"))) == 1
    second = load_dataset("folder", root)
    assert len(calls) == 16  # nothing decoded
    assert second.info == first.info
    for name in ("train_images", "train_labels", "test_images", "test_labels"):
        assert torch.equal(getattr(second, name), getattr(first, name))


@pytest.mark.parametrize("change", ["mtime", "content", "new file", "size S"])
def test_the_cache_follows_the_files_and_s(tmp_path, monkeypatch, cache, change):
    root = make_folder(tmp_path / "d")
    calls = counting(monkeypatch)
    first = load_dataset("folder", root)
    target = root / "train" / "cat" / "1.png"
    size = None
    if change == "mtime":
        stat = target.stat()
        os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    elif change == "content":
        save(target, noise(1234, (25, 25, 3)))
    elif change == "new file":
        save(root / "val" / "dog" / "9.png", noise(7))
    else:
        size = 16
    second = load_dataset("folder", root, input_size=size)
    assert len(calls) > 16 and len(list(cache.glob("*.pt"))) == 2
    if change == "content":
        row = [f.path for f in scan_folder(root).train].index("train/cat/1.png")
        assert not torch.equal(second.train_images[row], first.train_images[row])
    if change == "size S":
        assert second.train_images.shape[-1] == 16


def test_a_damaged_cache_is_rebuilt(tmp_path, monkeypatch, cache, caplog):
    root = make_folder(tmp_path / "d")
    first = load_dataset("folder", root)
    (path,) = cache.glob("*.pt")
    calls = counting(monkeypatch)
    caplog.set_level("WARNING", logger="ncslim")
    payload = torch.load(path, weights_only=True)
    damages = {
        "truncated": lambda: path.write_bytes(path.read_bytes()[:100]),
        "garbage": lambda: path.write_bytes(b"\x00" * 64),
        "wrong shape": lambda: torch.save({**payload, "train_images": payload["train_images"][1:]},
                                          path),
        "wrong dtype": lambda: torch.save(
            {**payload, "test_images": payload["test_images"].float()}, path),
        "bad std": lambda: torch.save({**payload, "std": [0.0, 0.1, 0.1]}, path),
    }
    for name, damage in damages.items():
        damage()
        again = load_dataset("folder", root)
        assert torch.equal(again.train_images, first.train_images), name
        assert again.info == first.info, name
        assert "is damaged" in caplog.text, name
        caplog.clear()
        assert torch.load(path, weights_only=True)["train_images"].shape[0] == 12  # rewritten
    assert len(calls) == 16 * len(damages)


def test_an_unwritable_cache_is_only_a_warning(tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder would go")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    caplog.set_level("WARNING", logger="ncslim")
    data = load_dataset("folder", make_folder(tmp_path / "d"))
    assert len(data.train_labels) == 12 and "cannot write the image cache" in caplog.text


# ----------------------------------------------------------------------------- batches, size


def test_other_sizes_batch_with_a_proportional_padding(tmp_path):
    assert [augment_pad(s) for s in (8, 16, 32, 48, 64, 224)] == [1, 2, 4, 6, 8, 28]
    root = make_folder(tmp_path / "d", train=10, val=1)
    data = load_dataset("folder", root, input_size=64)
    ones = torch.full((200, 3, 64, 64), 255, dtype=torch.uint8)
    gen = torch.Generator().manual_seed(0)
    x, _ = next(iter(batches(ones, torch.zeros(200, dtype=torch.long), 200, info=data.info,
                             train=True, generator=gen)))
    assert x.shape == (200, 3, 64, 64)
    zero_rows = (x[:, 0, :, 32] < x.max() - 1e-3).sum(dim=1)  # padding shows as dark rows
    assert zero_rows.max() == 8 and zero_rows.float().mean() > 2
    x, y = next(iter(batches(data.test_images, data.test_labels, 4, info=data.info,
                             train=False)))
    assert x.shape == (2, 3, 64, 64) and x.dtype == torch.float32


# ----------------------------------------------------------------------------- config, records


def test_config_checks_input_size_and_download():
    assert load_config(None, {"dataset": "folder", "input_size": 64}).input_size == 64
    assert load_config(None, {"dataset": "cifar10", "input_size": 32}).input_size == 32
    for values, words in [({"dataset": "cifar10", "input_size": 64}, "cifar10 images are 32x32"),
                          ({"dataset": "folder", "input_size": 2000}, r"\[8, 1024\]"),
                          ({"dataset": "folder", "input_size": 32.0}, "must be an integer"),
                          ({"dataset": "folder", "download": True}, "leave --download out")]:
        with pytest.raises(ValueError, match=words):
            load_config(None, values)


def test_model_files_hold_bounded_class_lists(tmp_path):
    model = ncslim.build_model("vgg", 3, width=0.125, depth=11)
    model.trained_on = {"dataset": "folder", "input_size": 32, "classes": ["a", "b", "c"],
                        "test_split": "val/"}
    ncslim.save_model(model, tmp_path / "m.pt")
    assert ncslim.load_model(tmp_path / "m.pt").trained_on == model.trained_on
    for classes in (["a", 3], ["x" * 256], ["a"] * 10_001, [], "abc"):
        model.trained_on = {"dataset": "folder", "classes": classes}
        ncslim.save_model(model, tmp_path / "bad.pt")
        with pytest.raises(ModelFileError, match="'trained_on' must name the dataset"):
            ncslim.load_model(tmp_path / "bad.pt")
    model.trained_on = {"dataset": "folder", "other": ["a"]}  # lists only for the class names
    ncslim.save_model(model, tmp_path / "bad.pt")
    with pytest.raises(ModelFileError):
        ncslim.load_model(tmp_path / "bad.pt")


TINY = ["--arch", "vgg", "--depth", "11", "--width", "0.125", "--epochs", "1",
        "--finetune-epochs", "1", "--batch-size", "8", "--device", "cpu", "--latency-threads", "1"]


def test_run_on_a_folder_records_the_classes(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("ncslim.models.measure._time_one", lambda model, x: 1e-3)
    root = make_folder(tmp_path / "d", classes=("cat", "dog", "frog"), train=8, val=2)
    out = tmp_path / "run"
    assert main(["run", "--dataset", "folder", "--data-dir", str(root), "--input-size", "32",
                 *TINY, "--out", str(out)]) == 0
    for name in ("train/model.pt", "pruned.pt", "final.pt"):
        record = ncslim.load_model(out / name).trained_on
        assert record["dataset"] == "folder" and record["input_size"] == 32, name
        assert record["classes"] == ["cat", "dog", "frog"] and record["test_split"] == "val/"
    config = json.loads((out / "config.json").read_text())["config"]
    assert config["dataset"] == "folder" and config["input_size"] == 32
    capsys.readouterr()
    assert main(["info", "--checkpoint", str(out / "final.pt"), "--batch-size", "2"]) == 0
    assert "trained on folder (32x32; classes: cat, dog, frog)" in capsys.readouterr().out
    # fine-tuning on a folder with other classes is refused, naming the first that differs
    other = make_folder(tmp_path / "other", classes=("ant", "dog", "frog"), train=8, val=2)
    assert main(["finetune", "--checkpoint", str(out / "final.pt"), "--data-dir", str(other),
                 "--epochs", "1", "--batch-size", "8", "--device", "cpu",
                 "--out", str(tmp_path / "ft")]) == 2
    err = capsys.readouterr().err
    assert "trained on other classes: its class 0 is 'cat', the folder's is 'ant'" in err
    assert not (tmp_path / "ft").exists()


@pytest.mark.parametrize("model", [["--arch", "resnet", "--depth", "11", "--width", "0.125"],
                                   ["--model", "foldermodels:tiny"]])
def test_run_at_another_size_builds_the_model_for_it(tmp_path, capsys, monkeypatch, model):
    """--input-size 24: the reference family (or the user's model) takes 24x24 images, the
    model files record it, and a folder of another size is refused when fine-tuning."""
    pytest.importorskip("torch_pruning")
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "foldermodels.py").write_text(
        "from torch import nn\n\n\ndef tiny(num_classes, in_channels):\n"
        "    return nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.BatchNorm2d(8),\n"
        "                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),\n"
        "                         nn.Linear(8, num_classes))\n")
    monkeypatch.syspath_prepend(str(tmp_path / "code"))
    monkeypatch.setattr("ncslim.models.measure._time_one", lambda model, x: 1e-3)
    root = make_folder(tmp_path / "d", classes=("cat", "dog"), train=8, val=2)
    out = tmp_path / "run"
    tiny = [flag for flag in TINY if flag not in ("--arch", "vgg", "--depth", "11", "--width",
                                                  "0.125")]
    assert main(["run", "--dataset", "folder", "--data-dir", str(root), "--input-size", "24",
                 *model, *tiny, "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    trust = "foldermodels" if "--model" in model else None  # a file naming a module: consent
    final = ncslim.load_model(out / "final.pt", trust_code=trust)
    assert final.input_size == 24 and final.input_shape() == (3, 24, 24)
    assert results["flops"]["pruned"] == ncslim.count_flops(final, (3, 24, 24))
    consent = ["--trust-model-code", trust] if trust else []
    assert main(["finetune", "--checkpoint", str(out / "final.pt"), *consent, "--data-dir",
                 str(root), "--input-size", "32", "--epochs", "1", "--batch-size", "8",
                 "--device", "cpu", "--out", str(tmp_path / "ft")]) == 2
    assert "a model for 24x24 images, but folder has 32x32" in capsys.readouterr().err
