"""Moved to :mod:`ncslim.util.regular` (issue 26); this name stays for one release."""

import sys

from .util import regular as _moved

sys.modules[__name__] = _moved
