"""The OpenAPI description is true to the app: every route is in it, and it holds no route the app lacks."""

from __future__ import annotations

import re

from livedoc import openapi

# Not livedoc's API: static files and the third-party RQ dashboard mounted at /rq.
NOT_DESCRIBED = ("/static/", "/rq/", "/rq")


def _app_routes(app) -> set[tuple[str, str]]:
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith(NOT_DESCRIBED):
            continue
        path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            routes.add((method.lower(), path))
    return routes


def _spec_routes(spec: dict) -> set[tuple[str, str]]:
    return {(method, path) for path, ops in spec["paths"].items() for method in ops}


def test_every_route_is_described_and_nothing_else(app, client):
    resp = client.get("/api/openapi.json")
    assert resp.status_code == 200 and resp.mimetype == "application/json"
    spec = resp.get_json()
    assert spec["openapi"] == "3.1.0"
    app_routes, spec_routes = _app_routes(app), _spec_routes(spec)
    assert app_routes - spec_routes == set(), "routes missing from livedoc/openapi.py"
    assert spec_routes - app_routes == set(), "livedoc/openapi.py describes routes the app lacks"
    assert ("get", "/api/documents/{doc_id}/status") in spec_routes


def test_every_operation_declares_its_path_parameters_and_no_500():
    for path, ops in openapi.spec()["paths"].items():
        params = set(re.findall(r"{([a-z_]+)}", path))
        for method, op in ops.items():
            declared = {p["name"] for p in op.get("parameters", ()) if p["in"] == "path"}
            assert declared == params, (method, path)
            assert "500" not in op["responses"], (method, path)
            assert all(re.fullmatch(r"[1-5][0-9][0-9]", code) for code in op["responses"]), (method, path)
