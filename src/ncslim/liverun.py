"""Moved to :mod:`ncslim.util.liverun` (issue 26); this name stays for one release."""

import sys

from .util import liverun as _moved

sys.modules[__name__] = _moved
