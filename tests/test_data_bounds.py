"""Untrusted data files cost bounded memory and time: damaged headers, compression bombs,
oversized members, links, and SVHN .mat files checked before scipy reads them."""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import struct
import subprocess
import sys
import tarfile
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from datafiles import (
    IDX_NAMES,
    cifar_members,
    isolated,  # noqa: F401  (autouse: no test sees the real data or network)
    make_fashion,
    md5,
    write_members,
    write_tar,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ncslim
from ncslim import data as D
from ncslim.data import DataError, load_dataset
from ncslim.data import catalog as C
from ncslim.data import cifar as cifar_reader
from ncslim.data import idx as idx_reader
from ncslim.data.idx import _read_idx


def test_cifar_archive_members_never_reach_the_file_system(tmp_path, monkeypatch):
    """Path traversal, absolute paths and links in an archive: nothing is extracted, ever."""
    members, _ = cifar_members("cifar10", 2, 0)
    hostile = {"../escaped.txt": b"x", f"{tmp_path}/absolute.txt": b"x", **members}
    folder = tmp_path / "data" / "deep"
    path = write_tar(folder / "cifar-10-python.tar.gz", hostile)
    with tarfile.open(path, "r:gz") as tar:
        names = tar.getnames()
    assert "../escaped.txt" in names
    monkeypatch.setitem(D.MD5, "cifar10", {"cifar-10-python.tar.gz": md5(path.read_bytes())})
    data = load_dataset("cifar10", folder)
    assert data.train_images.shape[0] == 10
    assert not (folder.parent / "escaped.txt").exists()
    assert not (tmp_path / "absolute.txt").exists()
    assert sorted(p.name for p in folder.iterdir()) == ["cifar-10-python.tar.gz"]


def test_a_link_in_place_of_a_cifar_batch_is_refused(tmp_path, monkeypatch):
    members, _ = cifar_members("cifar10", 2, 0)
    target = "cifar-10-batches-py/data_batch_1"
    del members[target]
    path = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for member, raw in members.items():
            info = tarfile.TarInfo(member)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
        link = tarfile.TarInfo(target)
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    monkeypatch.setitem(D.MD5, "cifar10", {"cifar-10-python.tar.gz": md5(path.read_bytes())})
    with pytest.raises(DataError, match="lacks cifar-10-batches-py/data_batch_1: not the official"):
        load_dataset("cifar10", tmp_path)


# ----------------------------------------------------------------------------- bounded cost
# Untrusted files cost bounded memory and time: headers are checked before data is read, and
# decompression stops where the header's promise (or a sane limit) ends.

IDX_OFFICIAL = {3: "train-images-idx3-ubyte.gz", 1: "t10k-labels-idx1-ubyte.gz"}
IDX_FAULTS = {  # fault -> what its message says (verify=False)
    "header-cut": "IDX header: the file is truncated",
    "data-cut": "the file is truncated",
    "trailing": "the file is corrupt: it holds more than its header promises",
    "dims": "not a Fashion-MNIST file",
}
MAX_DIM = 2**32 - 1


def idx_header(ndim: int, dims: tuple[int, ...]) -> bytes:
    return bytes([0, 0, 0x08, ndim]) + struct.pack(f">{ndim}I", *dims)


@st.composite
def damaged_idx(draw: st.DrawFn) -> tuple[int, bytes, bytes, str]:
    """``(ndim, intact content, damaged content, fault)`` of a small Fashion-MNIST IDX file."""
    ndim = draw(st.sampled_from([3, 1]))
    n, seed = draw(st.integers(0, 4)), draw(st.integers(0, 2**32 - 1))
    item = (28, 28) if ndim == 3 else ()
    size = n * (784 if ndim == 3 else 1)
    data = np.random.default_rng(seed).integers(0, 10 if ndim == 1 else 256, size, np.uint8)
    intact = idx_header(ndim, (n, *item)) + data.tobytes()
    fault = draw(st.sampled_from(sorted(IDX_FAULTS)))
    if fault in ("header-cut", "data-cut"):
        head = len(idx_header(ndim, (n, *item)))
        if fault == "data-cut" and size == 0:
            fault = "header-cut"
        cut = (draw(st.integers(0, head - 1)) if fault == "header-cut"
               else draw(st.integers(head, len(intact) - 1)))
        return ndim, intact, intact[:cut], fault
    if fault == "trailing":
        return ndim, intact, intact + draw(st.binary(min_size=1, max_size=3000)), fault
    huge = st.integers(idx_reader._IDX_MAX_ITEMS + 1, MAX_DIM)
    if ndim == 1:
        dims: tuple[int, ...] = (draw(huge),)
    else:  # too many images, or images that are not 28x28 (any number of them)
        shape = st.tuples(st.integers(0, MAX_DIM), st.integers(0, MAX_DIM))
        dims = draw(st.one_of(st.tuples(huge, st.just((28, 28))),
                              st.tuples(st.integers(0, MAX_DIM),
                                        shape.filter(lambda s: s != (28, 28)))))
        dims = (dims[0], *dims[1])
    return ndim, intact, idx_header(ndim, dims) + draw(st.binary(max_size=3000)), fault


@settings(deadline=None, max_examples=150,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=damaged_idx(), gz=st.booleans())
def test_idx_files_that_break_their_header_are_one_line(tmp_path, monkeypatch, case, gz):
    """Cut in the header or the data, data past the header's promise, dimensions that are not
    N x 28 x 28 (or N labels) with N at most 2,000,000: a one-line DataError naming the file and
    the fix, a checksum mismatch first when checksums are on; the intact file reads exactly."""
    ndim, intact, damaged, fault = case
    official = IDX_OFFICIAL[ndim]
    path = tmp_path / (official if gz else official.removesuffix(".gz"))
    monkeypatch.setitem(D.MD5, "fashion-mnist", {**D.MD5["fashion-mnist"], official: md5(intact)})
    path.write_bytes(gzip.compress(intact) if gz else intact)
    array = _read_idx("fashion-mnist", path, official, ndim, True)
    assert array.tobytes() == intact[4 + 4 * ndim:] and array.shape[1:] == (28, 28)[:ndim - 1]
    path.write_bytes(gzip.compress(damaged) if gz else damaged)
    for verify in (True, False):
        with pytest.raises(DataError) as err:
            _read_idx("fashion-mnist", path, official, ndim, verify)
        msg = str(err.value)
        assert "\n" not in msg and msg.startswith(f"fashion-mnist: {path}")
        assert msg.endswith("delete it and download again (--download)")
        assert ("checksum mismatch (decompressed md5" if verify else IDX_FAULTS[fault]) in msg


ZEROS_MEMBER = 64 << 20  # one gzip member of zeros; a bomb repeats it


def write_bomb(path: Path, head: bytes, gib: int) -> Path:
    """``head`` and then ``gib`` GiB of zeros, gzipped into a few MB, in about a second.

    The zeros are streamed through ``gzip.GzipFile`` in 4 MiB chunks into one 64 MiB member,
    which is then written ``16 * gib`` times: several members are one gzip stream to every
    reader (RFC 1952), and nothing the size of the content is ever held in memory.
    """
    zeros, chunk = io.BytesIO(), bytes(4 << 20)
    with gzip.GzipFile(fileobj=zeros, mode="wb", compresslevel=9, mtime=0) as gz:
        for _ in range(ZEROS_MEMBER // len(chunk)):
            gz.write(chunk)
    with open(path, "wb") as out:
        out.write(gzip.compress(head, mtime=0))
        for _ in range(gib * (1 << 30) // ZEROS_MEMBER):
            out.write(zeros.getbuffer())
    with gzip.open(path) as gz:  # the stream goes on past the first member of zeros
        got = sum(len(gz.read(1 << 20)) for _ in range((len(head) + ZEROS_MEMBER >> 20) + 2))
    assert got > len(head) + ZEROS_MEMBER
    return path


BOMB_SCRIPT = r"""
import json, re, sys, time
from ncslim.data import DataError, load_dataset
out = []
for name, folder, verify in json.loads(sys.argv[1]):
    start = time.perf_counter()
    try:
        load_dataset(name, folder, verify=verify)
        message = "loaded"
    except DataError as err:
        message = str(err)
    out.append((message, time.perf_counter() - start))
peak_kib = int(re.search(r"VmHWM:\s+(\d+) kB", open("/proc/self/status").read())[1])
print(json.dumps({"results": out, "maxrss": peak_kib * 1024}))
"""


def test_compression_bombs_cost_bounded_memory_and_time(tmp_path, monkeypatch):
    """A 4 GB gzip bomb behind an IDX header promising ten images, and a CIFAR archive whose
    tar is followed by 4 GB of zeros: each refused in one line naming the file, in a fresh
    process whose peak RSS (torch included) stays under 1 GiB; the IDX bomb is decompressed no
    further than the 64 MiB limit, the archive no further than its 1 GiB limit."""
    fashion = tmp_path / "fashion"
    fashion.mkdir()
    bomb = write_bomb(fashion / "train-images-idx3-ubyte.gz", idx_header(3, (10, 28, 28)), 4)
    for name in IDX_NAMES[1:]:
        (fashion / f"{name}.gz").write_bytes(b"")  # never read: the bomb is read first
    tar = tmp_path / "tar" / "cifar-10-python.tar.gz"
    write_tar(tar, cifar_members("cifar10", 2, 0)[0])
    (tmp_path / "cifar").mkdir()
    cifar = write_bomb(tmp_path / "cifar" / tar.name, gzip.decompress(tar.read_bytes()), 4)
    runs = [("fashion-mnist", str(fashion), True), ("fashion-mnist", str(fashion), False),
            ("cifar10", str(cifar.parent), False)]
    src = str(Path(ncslim.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [src, *filter(None, [os.environ.get("PYTHONPATH")])])}
    # the script reports VmHWM, its own peak (ru_maxrss would carry pytest's across exec)
    done = subprocess.run([sys.executable, "-c", BOMB_SCRIPT, json.dumps(runs)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["maxrss"] < 1 << 30
    (idx_on, idx_off, archive) = report["results"]
    for (message, seconds), path in ((idx_on, bomb), (idx_off, bomb), (archive, cifar)):
        assert "\n" not in message and message.endswith("(--download)")
        assert str(path) in message and seconds < 60
    for message, _ in (idx_on, idx_off):
        got = int(re.search(r"over (\d+) data bytes for IDX dimensions 10x28x28", message)[1])
        assert got <= C._IDX_MAX_CONTENT + (1 << 20)
        assert "more than its header promises" in message
    assert f"decompresses to over {cifar_reader._CIFAR_MAX_TOTAL:,} bytes" in archive[0]


def tar_header(name: str, size: int, fmt: int, kind: bytes = tarfile.REGTYPE) -> bytes:
    """A tar header claiming ``size`` bytes, without them."""
    info = tarfile.TarInfo(name)
    info.size, info.type = size, kind
    return info.tobuf(format=fmt)


CIFAR_NAMES = ["cifar-10-batches-py/data_batch_1", "cifar-10-batches-py/readme.html",
               "cifar-10-batches-py/" + "x" * 150, "././@LongLink"]


@settings(deadline=None, max_examples=60,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(size=st.integers(cifar_reader._CIFAR_MAX_MEMBER + 1, 2**40),
       name=st.sampled_from(CIFAR_NAMES), fmt=st.sampled_from([tarfile.GNU_FORMAT,
                                                              tarfile.PAX_FORMAT]),
       first=st.booleans(), tail=st.integers(0, 5000))
def test_cifar_member_claiming_too_much_is_refused_unread(tmp_path, monkeypatch, size, name,
                                                           fmt, first, tail):
    """A member whose header (ustar, GNU base-256 or pax) claims over 256 MiB, wanted or not, a
    long name, or a GNU long-name header itself claiming that much: refused from the header, with
    the data it claims absent, with and without checksums."""
    before = b"" if first else tar_header("cifar-10-batches-py/batches.meta", 0, fmt)
    kind = tarfile.GNUTYPE_LONGNAME if name == "././@LongLink" else tarfile.REGTYPE
    fmt = tarfile.GNU_FORMAT if kind == tarfile.GNUTYPE_LONGNAME else fmt
    path = tmp_path / "cifar-10-python.tar.gz"
    path.write_bytes(gzip.compress(before + tar_header(name, size, fmt, kind) + bytes(tail)))
    monkeypatch.setitem(D.MD5, "cifar10", {path.name: md5(path.read_bytes())})
    for verify in (True, False):
        with pytest.raises(DataError) as err:
            load_dataset("cifar10", tmp_path, verify=verify)
        msg = str(err.value)
        assert "\n" not in msg and msg.startswith(f"cifar10: {path}: member ")
        assert f"claims {size:,} bytes, more than any CIFAR archive member" in msg
        assert msg.endswith("not the official archive; delete it and download again (--download)")


def test_cifar_archive_limits_on_members_and_total(tmp_path, monkeypatch):
    members, _ = cifar_members("cifar10", 2, 0)
    path = tmp_path / "cifar-10-python.tar.gz"

    def refused(what: str) -> None:
        monkeypatch.setitem(D.MD5, "cifar10", {path.name: md5(path.read_bytes())})
        for verify in (True, False):
            with pytest.raises(DataError, match=re.escape(f"cifar10: {path}")) as err:
                load_dataset("cifar10", tmp_path, verify=verify)
            assert what in str(err.value) and "\n" not in str(err.value)

    write_tar(path, {**members, **{f"pad/{i}": b"" for i in range(1001)}})
    refused("over 1,000 members, more than any CIFAR archive: not the official archive")
    write_tar(path, members)
    assert load_dataset("cifar10", tmp_path, verify=False).train_images.shape[0] == 10
    monkeypatch.setattr(cifar_reader, "_CIFAR_MAX_TOTAL", 1 << 20)  # 2 MiB of zeros after the tar
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes()) + bytes(2 << 20)))
    refused(f"decompresses to over {1 << 20:,} bytes, more than any CIFAR archive holds")


def test_an_oversized_file_in_an_extracted_cifar_folder_is_refused_unread(tmp_path):
    write_members(tmp_path, cifar_members("cifar10", 2, 0)[0])
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    os.truncate(batch, cifar_reader._CIFAR_MAX_MEMBER + 1)  # sparse: nothing is written
    with pytest.raises(DataError) as err:
        load_dataset("cifar10", tmp_path)
    most = cifar_reader._CIFAR_MAX_MEMBER
    assert str(err.value) == (f"cifar10: {batch}: {most + 1:,} bytes, more "
                              f"than a CIFAR batch holds (at most {most:,}):"
                              f" not an official CIFAR file; delete it and download again "
                              f"(--download)")


def test_a_downloaded_gzip_bomb_fails_verification_and_is_not_kept(tmp_path, monkeypatch,
                                                                    mirror):
    make_fashion(mirror, monkeypatch=monkeypatch)
    bomb = mirror / "train-images-idx3-ubyte.gz"
    with gzip.GzipFile(bomb, "wb", compresslevel=1) as gz:  # 65 MiB of content
        gz.write(idx_header(3, (1, 28, 28)))
        for _ in range(65):
            gz.write(bytes(1 << 20))
    with pytest.raises(DataError) as err:
        D.download_dataset("fashion-mnist", tmp_path / "fm")
    assert (f"failed verification: checksum mismatch (md5 of over "
            f"{C._IDX_MAX_CONTENT:,} decompressed bytes, expected") in str(err.value)
    assert list((tmp_path / "fm").iterdir()) == []


def _mat_variable(name: str, value: np.ndarray) -> bytes:
    """One variable of a MATLAB 5 file as scipy writes it (its tag and body), uncompressed."""
    from scipy.io import savemat

    buffer = io.BytesIO()
    savemat(buffer, {name: value}, do_compression=False)
    return buffer.getvalue()[128:]


def _mat_file(*variables: bytes) -> bytes:
    from scipy.io import savemat

    buffer = io.BytesIO()
    savemat(buffer, {})
    return buffer.getvalue()[:128] + b"".join(variables)


def _compressed(variable: bytes, trailing_zeros: int = 0) -> bytes:
    deflate = zlib.compressobj(9)
    body = deflate.compress(variable)
    for _ in range(trailing_zeros >> 24):
        body += deflate.compress(bytes(1 << 24))
    body += deflate.flush()
    return struct.pack("<II", 15, len(body)) + body  # compressed elements are not padded


@pytest.mark.parametrize("fault", ["bomb", "huge X", "28x28 X", "y of another shape",
                                   "claims more than the file", "no y", "not a mat file"])
def test_an_svhn_mat_file_is_checked_from_its_headers_before_scipy_reads_it(tmp_path, fault):
    from ncslim.data.matfile import check_svhn_mat

    x = np.zeros((32, 32, 3, 10), np.uint8)
    y = _compressed(_mat_variable("y", np.ones((10, 1), np.uint8)))
    variables = {
        "bomb": [_compressed(_mat_variable("X", x), trailing_zeros=256 << 20), y],
        "huge X": [_compressed(_mat_variable("X", x).replace(
            struct.pack("<4i", 32, 32, 3, 10), struct.pack("<4i", 32, 32, 3, 10**9))), y],
        "28x28 X": [_compressed(_mat_variable("X", np.zeros((28, 28, 3, 10), np.uint8))), y],
        "y of another shape": [_compressed(_mat_variable("X", x)),
                               _compressed(_mat_variable("y", np.ones((10, 2), np.uint8)))],
        "claims more than the file": [_mat_variable("X", x)[:8].replace(
            struct.pack("<I", len(_mat_variable("X", x)) - 8), struct.pack("<I", 10**9)), y],
        "no y": [_compressed(_mat_variable("X", x))],
        "not a mat file": [],
    }[fault]
    path = tmp_path / "train_32x32.mat"
    path.write_bytes(b"garbage" if fault == "not a mat file" else _mat_file(*variables))
    messages = {"bomb": "variable X inflates past the 30,776 bytes its header promises",
                "huge X": "variable X has dimensions 32x32x3x1000000000, not SVHN's",
                "28x28 X": "variable X has dimensions 28x28x3x10, not SVHN's",
                "y of another shape": "variable y has dimensions 10x2, not SVHN's",
                "claims more than the file": "a variable claims 1,000,000,000 bytes, more than "
                                             "the file holds",
                "no y": "lacks y", "not a mat file": "not a MATLAB 5 .mat file"}
    started = time.perf_counter()
    with pytest.raises(DataError, match=f"svhn: {re.escape(str(path))} is not a readable MATLAB "
                                        f".mat file \\({re.escape(messages[fault])}"):
        check_svhn_mat("svhn", path)
    assert time.perf_counter() - started < 2  # the bomb is never inflated to its end
    good = _mat_file(_compressed(_mat_variable("X", x)), y)
    path.write_bytes(good)
    check_svhn_mat("svhn", path)
