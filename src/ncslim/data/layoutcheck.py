"""Checks that an image folder is what the user meant, before any image is read or trained on.

Links can make one folder appear twice: a class folder that links to its parent would train
every other class (and the test set below it) again under a label of its own, one that links to a
val/ class would train the test images. A folder is refused when, through links, it is another
class folder, lies inside one, or holds the data folder, train/ or the test folder.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from .catalog import DataError


def _parts(path: Path) -> tuple[str, ...]:
    return Path(os.path.realpath(path)).parts


def _holds(outer: tuple[str, ...], inner: tuple[str, ...]) -> bool:
    """Whether the real folder ``outer`` is ``inner`` or one of its ancestors."""
    return inner[:len(outer)] == outer


def check_one_place(root: Path, splits: Sequence[Path], folders: Sequence[Path]) -> None:
    """Refuse class ``folders`` (of the training and test ``splits`` below ``root``) that are,
    through links, the same folder as another, inside another, or hold a split or ``root``."""
    if len(splits) == 2 and (_holds(_parts(splits[0]), _parts(splits[1]))
                             or _holds(_parts(splits[1]), _parts(splits[0]))):
        raise DataError(f"{splits[1]} and {splits[0]} are one folder (through a link) or one "
                        f"holds the other: the test images would be trained on; give the test "
                        f"set a folder of its own")
    tops = [(where, _parts(where)) for where in (root, *splits)]
    reals = []
    for folder in folders:
        real = _parts(folder)
        top = next((where for where, parts in tops if _holds(real, parts)), None)
        if top is not None:
            raise DataError(f"{folder}: a link to {os.path.realpath(folder)}, which holds {top}: "
                            f"its images would be trained again under the class "
                            f"{folder.name!r}; remove the link")
        reals.append((real, folder))
    reals.sort()  # an ancestor sorts right before the paths inside it: neighbours suffice
    for (outer, first), (inner, second) in zip(reals, reals[1:]):
        if _holds(outer, inner):
            raise DataError(f"{first} and {second} are one folder (through a link) or one "
                            f"holds the other: their images would get two labels; remove the "
                            f"link or move the images")


def check_out_outside(data_dir: str | os.PathLike, out: str | os.PathLike) -> None:
    """Refuse a run folder ``out`` inside the image folder ``data_dir``: the run's own files
    (its figures are images) would become training data or a class of their own."""
    data, run = _parts(Path(data_dir).expanduser()), _parts(Path(out).expanduser())
    if _holds(data, run):
        raise DataError(f"--out {out} is inside --data-dir {data_dir}: the run's own files "
                        f"would be read as images or as a class; put --out outside it")
