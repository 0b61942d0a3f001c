"""The readers of the official file formats, by dataset: CIFAR pickles (archive or folder,
:mod:`.cifar`), SVHN .mat (:mod:`.svhn`), Fashion-MNIST IDX (:mod:`.idx`)."""

from .cifar import _load_cifar
from .idx import _load_fashion
from .svhn import _load_svhn

_LOADERS = {"cifar10": _load_cifar, "cifar100": _load_cifar, "svhn": _load_svhn,
            "fashion-mnist": _load_fashion}
