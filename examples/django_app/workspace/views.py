"""Signing in, joining an organisation, creating reports: each a Klime call where the
user does it. The signed-in user comes from the session, as ``request.user`` would."""

from __future__ import annotations

import json
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

import klime_mp


@require_GET
def healthz(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"status": "ok"})  # not tracked: health checks are not user activity


@csrf_exempt  # a JSON API for the example; a browser form would keep CSRF protection
@require_POST
def login(request: HttpRequest) -> HttpResponse:
    body = _json(request)
    user_id = body["user_id"]  # a real app authenticates here (django.contrib.auth)
    request.session["user_id"] = user_id
    klime_mp.identify(user_id, {"email": body["email"], "name": body["name"]})
    klime_mp.track("Signed In", {"method": "password"}, user_id=user_id)
    return JsonResponse({"user_id": user_id})


@csrf_exempt
@require_POST
def join_org(request: HttpRequest, org_id: str) -> HttpResponse:
    user_id = request.session.get("user_id")
    if user_id is None:
        return JsonResponse({"error": "sign in first"}, status=401)
    request.session["org_id"] = org_id
    klime_mp.group(org_id, {"name": _json(request)["org_name"]}, user_id=user_id)
    klime_mp.track("Organization Joined", {"role": "member"}, user_id=user_id, group_id=org_id)
    return JsonResponse({"org_id": org_id})


@csrf_exempt
@require_POST
def create_report(request: HttpRequest) -> HttpResponse:
    user_id = request.session.get("user_id")
    if user_id is None:
        return JsonResponse({"error": "sign in first"}, status=401)
    properties = {"report_type": _json(request).get("report_type", "revenue")}
    org_id = request.session.get("org_id")
    klime_mp.track("Report Generated", properties, user_id=user_id, group_id=org_id)
    return JsonResponse({"status": "created"}, status=201)


def _json(request: HttpRequest) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(request.body or b"{}")
    return body
