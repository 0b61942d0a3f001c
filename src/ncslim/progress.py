"""Moved to :mod:`ncslim.util.progress` (issue 26); this name stays for one release."""

import sys

from .util import progress as _moved

sys.modules[__name__] = _moved
