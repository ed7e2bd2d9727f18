"""The example app (examples/gunicorn_app/app.py) with the chaos runs' client settings.

Gunicorn's ``--chdir examples/gunicorn_app`` puts the example on ``sys.path``. The
example configures the default client from the environment; configuring again
replaces it (the first one never queued anything) with more attempts and shorter
waits, so that a 25 % failure rate loses nothing (see ``support.CHAOS_CLIENT``).
"""

from __future__ import annotations

from app import app  # type: ignore[import-not-found]  # examples/gunicorn_app/app.py

import klime_mp
from tests.reliability.support import CHAOS_CLIENT

klime_mp.configure(**CHAOS_CLIENT)

__all__ = ["app"]
