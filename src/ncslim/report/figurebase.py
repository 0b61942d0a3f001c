"""What every figure of ``ncslim report`` shares: matplotlib set up for files, the checked
reading of a run's record, and the saving of a PNG that carries ``Software: ncslim report``
(:data:`SOFTWARE`), by which a later report knows the file as its own to replace."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from ..util.files import atomic_path  # noqa: E402
from ..util.regular import NotAFileError  # noqa: E402

DPI = 130
SOFTWARE = "ncslim report"  # the PNG text chunk "Software" of every figure: a report's own file
Rows = list[dict[str, Any]]
Records = list[dict[str, Any]]


@dataclass(frozen=True)
class Figure:
    """One figure a report will write: ``out / name``, drawn by ``draw(path)`` from data read
    and checked already."""

    key: str
    name: str
    draw: Callable[[Path], Path]


def results_path(row: dict[str, Any]) -> Path:
    return Path(row["_dir"]) / "results.json"


def checked(row: dict[str, Any], compute: Callable[[], Any]) -> Any:
    """``compute()``, the parts of the row's results.json a figure draws; a part that is not
    what ncslim writes is one line naming that results.json."""
    try:
        return compute()
    except (NotAFileError, FileNotFoundError):
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError,
            ZeroDivisionError) as err:
        raise ValueError(f"{results_path(row)}: not what ncslim writes ({type(err).__name__}: "
                         f"{err}); remove it or rerun that run") from None


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def save_figure(fig: Any, path: Path, legend_rows: int = 0) -> Path:
    """Write the figure atomically (a killed report leaves the previous file whole)."""
    if legend_rows:
        fig.tight_layout(rect=(0, 0.045 * legend_rows, 1, 1))
    else:
        fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=DPI, format=path.suffix.lstrip(".") or "png",
                        metadata={"Software": SOFTWARE})
    finally:
        plt.close(fig)
    return path
