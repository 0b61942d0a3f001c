"""Run the ncslim CLI and SIGKILL this very process at a chosen point (used by crash tests).

    python tests/killer.py POINT AT [RANK] -- ncslim-arguments...

POINT is ``step`` (the AT-th training loss), ``eval`` (the AT-th evaluation) or ``save`` (the
AT-th rename of a fully written temporary file, i.e. between the write and the rename). Under
torchrun, only the process whose RANK matches dies (default: every process).
"""

from __future__ import annotations

import os
import signal
import sys

import ncslim.models.files as io
import ncslim.run.train as T
from ncslim.cli import main


def run() -> int:
    argv = sys.argv[1:]
    split = argv.index("--")
    point, at, *rank = argv[:split]
    count = [0]
    armed = not rank or os.environ.get("RANK", "0") == rank[0]

    def hit() -> None:
        count[0] += 1
        if armed and count[0] == int(at):
            os.kill(os.getpid(), signal.SIGKILL)

    if point == "step":
        real_ce = T.F.cross_entropy

        def ce(*args, **kwargs):
            if "reduction" not in kwargs:
                hit()
            return real_ce(*args, **kwargs)

        T.F.cross_entropy = ce
    elif point == "eval":
        real_eval = T.evaluate

        def evaluate(*args, **kwargs):
            hit()
            return real_eval(*args, **kwargs)

        T.evaluate = evaluate
    elif point == "save":
        real_replace = io.os.replace

        def replace(src, dst):
            hit()
            return real_replace(src, dst)

        io.os.replace = replace
    else:
        sys.exit(f"unknown kill point {point!r}")
    return main(argv[split + 1:])


if __name__ == "__main__":
    sys.exit(run())
