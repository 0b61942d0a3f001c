"""Datasets as uint8 tensors on the training device, batched with on-device augmentation.

Images are read from the official files (CIFAR ``*-python.tar.gz`` pickles, SVHN ``*_32x32.mat``,
Fashion-MNIST IDX) into one ``uint8 [N, C, 32, 32]`` tensor per split; move them to the GPU once
with :meth:`ImageData.to`. :func:`batches` then shuffles, pads-and-crops, flips and normalises a
whole batch at a time on that device: no per-sample Python, no float copy of the whole set.

    >>> import torch
    >>> from ncslim.data import DATASETS, batches
    >>> info = DATASETS["cifar10"]
    >>> images = torch.full((10, 3, 32, 32), 128, dtype=torch.uint8)
    >>> labels = torch.arange(10)
    >>> gen = torch.Generator().manual_seed(0)
    >>> out = list(batches(images, labels, 4, info=info, train=True, generator=gen))
    >>> [tuple(x.shape) for x, _ in out], out[0][0].dtype
    ([(4, 3, 32, 32), (4, 3, 32, 32), (2, 3, 32, 32)], torch.float32)
    >>> sorted(torch.cat([y for _, y in out]).tolist()) == list(range(10))
    True

Loading real data (here Debian's Fashion-MNIST, if installed)::

    >>> data = load_dataset("fashion-mnist").to("cuda")  # doctest: +SKIP
    >>> gen = torch.Generator("cuda").manual_seed(0)  # doctest: +SKIP
    >>> for x, y in batches(data.train_images, data.train_labels, 64,  # doctest: +SKIP
    ...                     info=data.info, train=True, generator=gen):
    ...     pass

Where data is looked for, in order (:func:`candidate_dirs`):

1. ``data_dir`` itself (the files directly in it), then ``data_dir/<name>``; a ``data_dir``
   given is the only place searched (the data not there is an error, not a system copy read in
   its place);
2. without ``data_dir``: ``$NCSLIM_DATA/<name>``: ``NCSLIM_DATA`` is a root with one subfolder
   per dataset (the files themselves are not looked for in the root: MNIST and Fashion-MNIST
   share file names);
3. ``/usr/share/datasets/<name>`` (Debian's ``dataset-*`` packages);
4. ``${XDG_CACHE_HOME:-~/.cache}/ncslim/<name>``, where ``download=True`` puts the files when no
   ``data_dir`` is given.

Every file found is checked against its official md5 (``verify=False`` skips it; for
Fashion-MNIST the md5 is that of the decompressed IDX content, so recompressed copies pass).
An already-extracted ``cifar-10-batches-py/`` (or ``cifar-100-python/``) folder is accepted too,
without a checksum (none is published per batch). Archives are never extracted to disk, and the
CIFAR pickles are read with an unpickler that only builds numpy arrays and plain containers:
a crafted file cannot run code. ``$NCSLIM_DOWNLOAD_URL`` replaces the download base URL (a
mirror serving ``<base>/<filename>``). Every failure raises :class:`DataError` with a one-line
message saying what is wrong, where, and how to fix it.

Files cost bounded memory and time, whatever they claim. An IDX file (gzipped or not) is
streamed: its header is read first and its dimensions checked (N x 28 x 28 images or N labels,
N at most 2,000,000), then exactly the bytes it promises; data beyond them or short of them is
refused, and decompression stops there (a damaged file is read on to 64 MiB at most, more than
any official IDX file holds, only to name a broken gzip stream or a checksum mismatch first).
A CIFAR archive member whose tar header claims over 256 MiB is refused before it is read, as
is an archive of over 1,000 members or one decompressing to over 1 GiB; an extracted batch file
over 256 MiB is refused unread. SVHN ``.mat`` files are read whole by scipy, without such limits.

**Your own images**: ``load_dataset("folder", "D", input_size=S)`` reads ``D/train/<class>/*``
and ``D/val/<class>/*`` (or holds 10 % of each class out), decodes every image once, in parallel,
to RGB S x S, and caches the result (:mod:`ncslim.data.folder` states every rule);
:func:`scan_folder` lists the classes and files without decoding anything.

Normalisation: CIFAR and SVHN use the usual per-channel mean/std; Fashion-MNIST (zero-padded from
28x28 to 32x32 so that every architecture keeps its 32x32 geometry) uses the mean/std of its padded
train set, ``0.2190 / 0.3318``. Augmentation (CIFAR only, as in the paper): zero-pad 4, random
32x32 crop, random horizontal flip; SVHN and Fashion-MNIST are not augmented. Image folders
use the mean/std of their training images and the CIFAR augmentation, with a padding in
proportion to the image size (:func:`augment_pad`).

The package, lowest first: ``catalog`` (names, official files, md5, search folders), ``files``
(locating files, checksums, bounded reading), ``formats`` (the CIFAR, SVHN and IDX readers),
``download``, ``decode`` (image files through Pillow), ``foldercache``, ``folder`` (image
folders), ``loading`` (:class:`ImageData`, :func:`load_dataset`) and ``batching``. Tests
redirect the Debian folder through ``ncslim.data.catalog.DEBIAN_ROOT`` (read there, at each call).
"""

from __future__ import annotations

from .batching import PAD as PAD
from .batching import augment_pad, batches
from .catalog import DATASETS, FOLDER, DataError, DatasetInfo, candidate_dirs, dataset_names
from .catalog import MD5 as MD5
from .catalog import URLS as URLS
from .catalog import cache_root as cache_root
from .download import download_dataset
from .folder import MAX_CLASS_NAME, MAX_CLASSES, FolderLayout, ImageFile, scan_folder
from .loading import ImageData, load_dataset

__all__ = [
    "DATASETS",
    "FOLDER",
    "MAX_CLASSES",
    "MAX_CLASS_NAME",
    "DataError",
    "DatasetInfo",
    "FolderLayout",
    "ImageData",
    "ImageFile",
    "augment_pad",
    "batches",
    "candidate_dirs",
    "dataset_names",
    "download_dataset",
    "load_dataset",
    "scan_folder",
]
