"""Downloading data sets (against a mirror on 127.0.0.1): into --data-dir or the cache,
verified, and nothing left behind by a failure."""

from __future__ import annotations

import os

import pytest
import torch
from datafiles import (
    IDX_NAMES,
    isolated,  # noqa: F401  (autouse: no test sees the real data or network)
    make_cifar,
    make_fashion,
    make_svhn,
)

from ncslim import data as D
from ncslim.data import DataError, load_dataset


def test_download_into_data_dir_then_load(tmp_path, monkeypatch, mirror):
    expected = make_cifar(mirror, monkeypatch=monkeypatch)
    target = tmp_path / "target"
    data = load_dataset("cifar10", target, download=True)
    assert [p.name for p in target.iterdir()] == ["cifar-10-python.tar.gz"]
    assert torch.equal(data.train_images, torch.from_numpy(expected[0]))
    (mirror / "cifar-10-python.tar.gz").unlink()  # present now: nothing is fetched again
    assert load_dataset("cifar10", target, download=True).test_images.shape[0] == 3


def test_download_into_cache(tmp_path, monkeypatch, mirror):
    make_svhn(mirror, {"train": 3, "test": 2, "extra": 2}, monkeypatch=monkeypatch)
    data = load_dataset("svhn", download=True, include_extra=False)
    cache = tmp_path / "xdg" / "ncslim" / "svhn"
    assert sorted(p.name for p in cache.iterdir()) == ["test_32x32.mat", "train_32x32.mat"]
    assert data.train_images.shape[0] == 3
    assert load_dataset("svhn", download=True).train_images.shape[0] == 5
    assert (cache / "extra_32x32.mat").is_file()


def test_download_fashion_checks_decompressed_md5(tmp_path, monkeypatch, mirror):
    make_fashion(mirror, monkeypatch=monkeypatch)
    D.download_dataset("fashion-mnist", tmp_path / "fm")
    assert sorted(p.name for p in (tmp_path / "fm").iterdir()) == sorted(
        f"{n}.gz" for n in IDX_NAMES)
    assert load_dataset("fashion-mnist", tmp_path / "fm").train_images.shape[0] == 7


def test_download_corrupt_file_leaves_nothing(tmp_path, monkeypatch, mirror):
    make_cifar(mirror, monkeypatch=monkeypatch)
    monkeypatch.setitem(D.MD5, "cifar10", {"cifar-10-python.tar.gz": "0" * 32})
    target = tmp_path / "target"
    with pytest.raises(DataError) as err:
        load_dataset("cifar10", target, download=True)
    assert "checksum mismatch" in str(err.value) and "127.0.0.1" in str(err.value)
    assert list(target.iterdir()) == []


def test_download_404_names_the_url(tmp_path, mirror):
    with pytest.raises(DataError) as err:
        load_dataset("cifar100", tmp_path / "t", download=True)
    url = f"{os.environ['NCSLIM_DOWNLOAD_URL'].rstrip('/')}/cifar-100-python.tar.gz"
    assert f"download of {url} failed: HTTP 404" in str(err.value)
    assert list((tmp_path / "t").iterdir()) == []
