"""Moved to :mod:`ncslim.util.escape` (issue 26); this name stays for one release."""

import sys

from .util import escape as _moved

sys.modules[__name__] = _moved
