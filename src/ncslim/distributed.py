"""Moved to :mod:`ncslim.util.distributed` (issue 26); this name stays for one release."""

import sys

from .util import distributed as _moved

sys.modules[__name__] = _moved
