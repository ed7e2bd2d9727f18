"""Klime is configured once, when Django has loaded its apps (``AppConfig.ready()``).

``klime_mp.configure()`` validates the settings and starts no thread and opens no
socket, so ``ready()`` may run in Gunicorn's master (``--preload``) or in each worker:
every process starts its own sender on its first event. Views then call the
module-level ``klime_mp.identify/group/track``.
"""

from __future__ import annotations

from django.apps import AppConfig
from django.conf import settings

import klime_mp


class WorkspaceConfig(AppConfig):
    name = "workspace"

    def ready(self) -> None:
        klime_mp.configure(write_key=settings.KLIME_WRITE_KEY, endpoint=settings.KLIME_ENDPOINT)
