"""Settings of the example site: the smallest Django project that signs users in
(signed-cookie sessions, so it needs no database) and reports to Klime."""

from __future__ import annotations

import os

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "dev-only-secret")
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "klime_site.urls"
WSGI_APPLICATION = "klime_site.wsgi.application"

INSTALLED_APPS = ["workspace.apps.WorkspaceConfig"]
MIDDLEWARE = ["django.contrib.sessions.middleware.SessionMiddleware"]
SESSION_ENGINE = "django.contrib.sessions.backends.signed_cookies"
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True

# Klime: read once by WorkspaceConfig.ready(). Without an endpoint, https://i.klime.com.
KLIME_WRITE_KEY = os.environ.get("KLIME_WRITE_KEY")
KLIME_ENDPOINT = os.environ.get("KLIME_ENDPOINT")
