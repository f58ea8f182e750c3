"""The API's own description: the OpenAPI document (livedoc/openapi.py) at /api/openapi.json."""

from __future__ import annotations

from flask import Blueprint, jsonify

from livedoc import openapi

bp = Blueprint("apidoc", __name__)


@bp.route("/api/openapi.json")
def openapi_spec():
    """The OpenAPI 3.1 description of every route."""
    return jsonify(openapi.spec())
