"""A small Flask app instrumented with klime_mp: sign in, join an organisation, create
reports. Served by Gunicorn with several workers::

    gunicorn -c python:klime_mp.gunicorn_conf -w 3 --preload 'app:create_app()'

The Klime client is created once, in the app factory, and kept on the app
(``app.extensions["klime"]``); views reach it through ``current_app``. Creating it
starts no thread and opens no socket, so the factory may run in Gunicorn's master
(``--preload``): each worker starts its own sender on its first event, and klime_mp's
Gunicorn hooks send what a worker still holds when it stops.
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask, abort, current_app, jsonify, request, session

from klime_mp import KlimeClient


def create_app(config: dict[str, Any] | None = None) -> Flask:
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=os.environ.get("FLASK_SECRET_KEY", "dev-only-secret"),
        KLIME_WRITE_KEY=os.environ.get("KLIME_WRITE_KEY"),
        KLIME_ENDPOINT=os.environ.get("KLIME_ENDPOINT"),  # None: https://i.klime.com
    )
    app.config.update(config or {})
    app.extensions["klime"] = KlimeClient(
        write_key=app.config["KLIME_WRITE_KEY"], endpoint=app.config["KLIME_ENDPOINT"]
    )
    app.add_url_rule("/healthz", view_func=healthz)
    app.add_url_rule("/login", view_func=login, methods=["POST"])
    app.add_url_rule("/orgs/<org_id>/join", view_func=join_org, methods=["POST"])
    app.add_url_rule("/reports", view_func=create_report, methods=["POST"])
    return app


def klime() -> KlimeClient:
    client: KlimeClient = current_app.extensions["klime"]
    return client


def healthz() -> Any:
    return jsonify(status="ok")  # not tracked: health checks are not user activity


def login() -> Any:
    body = request.get_json(force=True)
    user_id = body["user_id"]  # a real app checks a password here
    session["user_id"] = user_id
    klime().identify(user_id, {"email": body["email"], "name": body["name"]})
    klime().track("Signed In", {"method": "password"}, user_id=user_id)
    return jsonify(user_id=user_id)


def join_org(org_id: str) -> Any:
    user_id = _signed_in_user()
    body = request.get_json(force=True)
    session["org_id"] = org_id
    klime().group(org_id, {"name": body["org_name"]}, user_id=user_id)
    klime().track("Organization Joined", {"role": "member"}, user_id=user_id, group_id=org_id)
    return jsonify(org_id=org_id)


def create_report() -> Any:
    user_id = _signed_in_user()
    body = request.get_json(force=True)
    properties = {"report_type": body.get("report_type", "revenue")}
    klime().track("Report Generated", properties, user_id=user_id, group_id=session.get("org_id"))
    return jsonify(status="created"), 201


def _signed_in_user() -> str:
    user_id = session.get("user_id")
    if not isinstance(user_id, str):
        abort(401)
    return user_id
