"""The OpenAPI 3.1 description of every livedoc route, served at /api/openapi.json.

One entry in ROUTES per (method, path): adding a route to the app is adding one `_op(...)` here, and
tests/test_openapi.py fails until the two agree. Paths use OpenAPI's `{name}` for Flask's `<name>`.
"""

from __future__ import annotations

from typing import Any

HTML = {"text/html": {"schema": {"type": "string"}}}
SSE: dict = {"text/event-stream": {}}  # events, retry: lines and comments; see the README
OBJECT = {"application/json": {"schema": {"type": "object"}}}
TEXT = {"text/plain": {"schema": {"type": "string"}}}


def _json(ref: str) -> dict:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}


_ERROR_TEXT = {
    400: "The request is not valid (bad parameter, bad upload, missing CSRF token).",
    401: "No session and no valid API token.",
    403: "Logged in, but not allowed (or the transport is off, or the Origin is foreign).",
    404: "Absent, or not the caller's: the two are never told apart.",
    405: "Method not allowed.",
    409: "The document is not in a state that allows this.",
    413: "The upload is too large, or over the storage quota.",
    415: "Not a PDF, PNG, JPEG or UTF-8 text file.",
    429: "A rate limit, stream cap or quota was hit.",
    503: "Redis is briefly unreachable.",
    507: "The server's storage is full: nothing of the upload was kept.",
}
RETRY_AFTER = {"Retry-After": {"schema": {"type": "string", "pattern": "^[0-9]+$"}}}


def _error(status: int, html: bool) -> dict:
    resp: dict[str, Any] = {"description": _ERROR_TEXT[status], "content": HTML if html else _json("Error")}
    if status in (429, 503):
        resp["headers"] = RETRY_AFTER
    return resp


def _param(name: str, where: str = "path", schema: dict | None = None) -> dict:
    required = where == "path" or name in WS_HEADERS
    return {"name": name, "in": where, "required": required, "schema": schema or {"type": "string"}}


WS_HEADERS = ("Upgrade", "Connection", "Sec-WebSocket-Version", "Sec-WebSocket-Key")


DOC_ID = _param("doc_id")
# Seconds, written in at most 20 characters (longer spellings are refused); longer waits are capped.
WAIT = {"type": "number", "minimum": 0, "maximum": 3600, "multipleOf": 0.5}
# Up to MAX_DOCS_PER_STREAM (50) document ids, comma-separated.
DOC_LIST = {"type": "string", "pattern": "^[0-9a-f]{32}(,[0-9a-f]{32}){0,49}$"}


def _op(
    method: str,
    path: str,
    summary: str,
    ok: dict[int, dict],
    errors: tuple[int, ...] = (),
    *,
    params: tuple[dict, ...] = (),
    body: dict | None = None,
    html: bool = False,
    public: bool = False,
) -> tuple[str, str, dict]:
    """One operation: its successful answers, the error statuses it may give, its inputs."""
    responses = {str(k): v for k, v in ok.items()}
    codes = set(errors) | {503}
    if not public:
        codes.add(401)
    for code in sorted(codes):
        if html and code == 401:
            continue  # HTML routes send anonymous visitors to the login page (302) instead
        responses[str(code)] = _error(code, html)
    if html and not public:
        responses.setdefault(
            "302",
            {
                "description": "Not logged in: to the login page.",
                "headers": {"Location": {"schema": {"type": "string"}}},
            },
        )
    operation: dict[str, Any] = {"summary": summary, "responses": responses}
    if params:
        operation["parameters"] = list(params)
    if body is not None:
        operation["requestBody"] = body
    if public:
        operation["security"] = []
    return method.lower(), path, operation


def _upload_body() -> dict:
    return {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "contentMediaType": "application/octet-stream"},
                        "csrf_token": {"type": "string"},
                    },
                }
            }
        },
    }


def _form(*fields: str) -> dict:
    return {
        "required": True,
        "content": {
            "application/x-www-form-urlencoded": {
                "schema": {"type": "object", "properties": {f: {"type": "string"} for f in fields}}
            }
        },
    }


REDIRECT = {"description": "Done: to the next page.", "headers": {"Location": {"schema": {"type": "string"}}}}

ROUTES: list[tuple[str, str, dict]] = [
    # -- API ----------------------------------------------------------------------------------------
    _op(
        "GET",
        "/api/openapi.json",
        "This description.",
        {200: {"description": "OpenAPI 3.1", "content": OBJECT}},
        public=True,
    ),
    _op(
        "GET",
        "/api/me",
        "The caller and their usage against each quota.",
        {200: {"description": "The caller", "content": _json("Me")}},
    ),
    _op(
        "GET",
        "/api/documents",
        "The caller's documents with their progress.",
        {
            200: {
                "description": "Documents",
                "content": _json("DocumentList"),
                "headers": {"X-Livedoc-Mode": {"schema": {"type": "string"}}},
            }
        },
    ),
    _op(
        "POST",
        "/api/documents",
        "Upload a document (multipart field `file`) and queue its conversion.",
        {
            201: {
                "description": "Stored and queued",
                "content": _json("Document"),
                "headers": {"Location": {"schema": {"type": "string"}}},
            }
        },
        (400, 413, 415, 429, 507),
        body=_upload_body(),
    ),
    _op(
        "GET",
        "/api/documents/{doc_id}",
        "One document: progress, page sizes, the ready pages, outline.",
        {200: {"description": "The document", "content": _json("DocumentPages")}},
        (404,),
        params=(DOC_ID,),
    ),
    _op(
        "DELETE",
        "/api/documents/{doc_id}",
        "Delete a document: its conversion stops, its streams end.",
        {204: {"description": "Deleted"}},
        (400, 404),
        params=(DOC_ID,),
    ),
    _op(
        "GET",
        "/api/documents/{doc_id}/search",
        "Find a phrase in the pages that are ready (within a time budget: `truncated` and "
        "`searched_pages` say when it stopped early).",
        {200: {"description": "Hits", "content": _json("Search")}},
        (400, 404, 429),
        params=(DOC_ID, _param("q", "query", {"type": "string", "maxLength": 200})),
    ),
    _op(
        "PUT",
        "/api/documents/{doc_id}/position",
        "Remember the page being read.",
        {204: {"description": "Remembered"}},
        (400, 404),
        params=(DOC_ID,),
        body={
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["page"],
                        "properties": {"page": {"type": "integer", "minimum": 1}},
                    }
                }
            },
        },
    ),
    _op(
        "POST",
        "/api/documents/{doc_id}/retry",
        "Queue a new attempt of a failed, retryable conversion.",
        {202: {"description": "Queued again", "content": _json("Document")}},
        (400, 404, 409, 429),
        params=(DOC_ID,),
    ),
    _op(
        "GET",
        "/api/documents/{doc_id}/events",
        "SSE stream of the document's progress.",
        {
            200: {"description": "text/event-stream, ends after the terminal event", "content": SSE},
            204: {"description": "SSE is off: use the transport named by X-Livedoc-Mode"},
        },
        (400, 404, 429),
        params=(DOC_ID, _param("Last-Event-ID", "header")),
    ),
    _op(
        "GET",
        "/api/documents/{doc_id}/status",
        "Poll (no `wait`) or long-poll the document's progress.",
        {
            200: {
                "description": "The progress",
                "content": _json("Status"),
                "headers": {"X-Livedoc-Mode": {"schema": {"type": "string"}}},
            }
        },
        (400, 404, 429),
        params=(
            DOC_ID,
            _param("after", "query", {"type": "integer", "minimum": 0, "maximum": 2**53}),
            _param("wait", "query", WAIT),
        ),
    ),
    _op(
        "GET",
        "/api/events",
        "One SSE stream for many documents (or every unfinished one).",
        {
            200: {"description": "text/event-stream", "content": SSE},
            204: {"description": "Nothing to watch, or SSE is off"},
        },
        (400, 404, 429),
        params=(_param("docs", "query", DOC_LIST), _param("cursor", "query")),
    ),
    _op(
        "GET",
        "/api/ws",
        "WebSocket transport (when WEBSOCKET_ENABLED); Origin must be the app's own.",
        {101: {"description": "Switching protocols"}},
        (400, 403, 429),
        params=(
            _param("Upgrade", "header", {"enum": ["websocket"]}),
            _param("Connection", "header", {"enum": ["Upgrade"]}),
            _param("Sec-WebSocket-Version", "header", {"enum": ["13"]}),
            _param("Sec-WebSocket-Key", "header", {"type": "string", "pattern": "^[A-Za-z0-9+/]{22}==$"}),
            _param("Origin", "header"),
        ),
    ),
    _op(
        "GET",
        "/api/realtime/stats",
        "Connections over every web host (admins).",
        {200: {"description": "Stats", "content": OBJECT}},
        (403,),
    ),
    _op(
        "GET",
        "/metrics",
        "Prometheus metrics (admins, or the read-only METRICS_TOKEN).",
        {200: {"description": "Prometheus text format", "content": TEXT}},
        (403,),
    ),
    # -- HTML ---------------------------------------------------------------------------------------
    _op(
        "GET",
        "/",
        "Home: to the document list, or to the login page.",
        {302: REDIRECT},
        html=True,
        public=True,
    ),
    _op(
        "GET",
        "/login",
        "The login page.",
        {200: {"description": "The form", "content": HTML}, 302: REDIRECT},
        html=True,
        public=True,
    ),
    _op(
        "POST",
        "/login",
        "Log in.",
        {302: REDIRECT},
        (400, 401, 429),
        html=True,
        public=True,
        body=_form("username", "password", "csrf_token"),
    ),
    _op(
        "POST", "/logout", "Log out everywhere.", {302: REDIRECT}, (400,), html=True, body=_form("csrf_token")
    ),
    _op(
        "GET",
        "/documents",
        "My documents and the upload form.",
        {200: {"description": "The list", "content": HTML}},
        html=True,
    ),
    _op(
        "POST",
        "/documents",
        "The upload form.",
        {303: REDIRECT},
        (400, 413, 415, 429, 507),
        html=True,
        body=_upload_body(),
    ),
    _op(
        "GET",
        "/documents/{doc_id}",
        "The viewer.",
        {200: {"description": "The viewer", "content": HTML}},
        (404,),
        html=True,
        params=(DOC_ID,),
    ),
    _op(
        "GET",
        "/documents/{doc_id}/download",
        "The original upload, as an attachment.",
        {
            200: {
                "description": "The original",
                "content": {"application/octet-stream": {"schema": {"type": "string"}}},
            },
            302: REDIRECT,
            304: {"description": "Not modified"},
        },
        (404,),
        html=True,
        params=(DOC_ID,),
    ),
    _op(
        "POST",
        "/documents/{doc_id}/delete",
        "The delete button.",
        {303: REDIRECT},
        (400, 404),
        html=True,
        params=(DOC_ID,),
        body=_form("csrf_token"),
    ),
    _op(
        "GET",
        "/documents/{doc_id}/files/{attempt}/{name}",
        "One file of a page that is ready.",
        {
            200: {
                "description": "A page image, thumbnail, text, text layer or sharper rendition",
                "content": {
                    "image/jpeg": {"schema": {"type": "string"}},
                    "text/plain": {"schema": {"type": "string"}},
                    "application/json": {"schema": {"type": "object"}},
                },
            },
            302: REDIRECT,
            304: {"description": "Not modified"},
        },
        (404,),
        html=True,
        params=(DOC_ID, _param("attempt"), _param("name")),
    ),
    _op(
        "POST",
        "/documents/{doc_id}/retry",
        "The retry button.",
        {303: REDIRECT},
        (400, 404, 409, 429),
        html=True,
        params=(DOC_ID,),
        body=_form("csrf_token"),
    ),
    _op(
        "GET",
        "/admin/",
        "Operators' page: flags and stats (admins).",
        {200: {"description": "The page", "content": HTML}},
        (403,),
        html=True,
    ),
    _op(
        "POST",
        "/admin/realtime",
        "Switch the real-time mode on every host (admins).",
        {303: REDIRECT},
        (400, 403),
        html=True,
        body=_form("mode", "switches", "websocket", "push", "csrf_token"),
    ),
]

_PROGRESS = {
    "type": "object",
    "required": ["seq", "state", "stage", "percent", "page", "pages", "attempt"],
    "properties": {
        "seq": {"type": "integer", "minimum": 0},
        "state": {"enum": ["queued", "running", "complete", "failed"]},
        "stage": {"type": "string"},
        "percent": {"type": "number", "minimum": 0, "maximum": 100},
        "page": {"type": "integer", "minimum": 0},
        "pages": {"type": "integer", "minimum": 0},
        "ready": {"type": "integer", "minimum": 0},
        "message": {"type": ["string", "null"]},
        "error": {
            "oneOf": [
                {"type": "null"},
                {
                    "type": "object",
                    "required": ["code", "message", "retryable"],
                    "properties": {
                        "code": {"type": ["string", "null"]},
                        "message": {"type": ["string", "null"]},
                        "retryable": {"type": "boolean"},
                    },
                },
            ]
        },
        "attempt": {"type": "integer", "minimum": 1},
        "updated_at": {"type": "number"},
    },
}
_QUOTA_ENTRY = {
    "type": "object",
    "required": ["used", "limit", "remaining"],
    "properties": {k: {"type": "integer", "minimum": 0} for k in ("used", "limit", "remaining")},
}
_QUOTA = {
    "type": "object",
    "required": ["name", "used", "limit", "remaining"],
    "properties": {"name": {"type": "string"}, **_QUOTA_ENTRY["properties"]},
}
SCHEMAS = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "additionalProperties": False,
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "additionalProperties": False,
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}, "quota": _QUOTA},
            }
        },
    },
    "Progress": _PROGRESS,
    "Status": {
        "allOf": [
            {"$ref": "#/components/schemas/Progress"},
            {
                "type": "object",
                "required": ["document_id"],
                "properties": {"document_id": {"type": "string"}},
            },
        ]
    },
    "Document": {
        "type": "object",
        "required": [
            "id",
            "filename",
            "kind",
            "size",
            "created_at",
            "progress",
            "status_url",
            "events_url",
            "viewer_url",
        ],
        "properties": {
            "id": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
            "filename": {"type": "string"},
            "kind": {"enum": ["pdf", "image", "text", "office"]},
            "size": {"type": "integer", "minimum": 0},
            "created_at": {"type": "string"},
            "progress": {"$ref": "#/components/schemas/Progress"},
            "status_url": {"type": "string"},
            "events_url": {"type": "string"},
            "viewer_url": {"type": "string"},
            "pages": {"type": "array", "items": {"type": "object"}},
        },
    },
    "DocumentPages": {
        "allOf": [
            {"$ref": "#/components/schemas/Document"},
            {
                "type": "object",
                "required": ["sizes", "pages", "outline", "files_url", "last_page"],
                "properties": {
                    "sizes": {
                        "type": "array",
                        "items": {
                            "type": "array",
                            "items": {"type": "integer"},
                            "minItems": 2,
                            "maxItems": 2,
                        },
                    },
                    "pages": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["n", "width", "height", "image", "thumb", "text"],
                        },
                    },
                    "outline": {
                        "type": "array",
                        "items": {"type": "object", "required": ["title", "page", "children"]},
                    },
                    "files_url": {"type": ["string", "null"]},
                    "last_page": {"type": "integer", "minimum": 0},
                },
            },
        ]
    },
    "Search": {
        "type": "object",
        "required": ["query", "hits", "searched_pages", "pages", "complete"],
        "properties": {
            "hits": {"type": "array", "items": {"type": "object", "required": ["page", "snippet", "rects"]}},
            "searched_pages": {"type": "integer", "minimum": 0},
            "pages": {"type": "integer"},
            "complete": {"type": "boolean"},
            "truncated": {"type": "boolean"},
        },
    },
    "DocumentList": {
        "type": "object",
        "required": ["documents"],
        "properties": {"documents": {"type": "array", "items": {"$ref": "#/components/schemas/Document"}}},
    },
    "Me": {
        "type": "object",
        "required": ["username", "is_admin", "usage"],
        "properties": {
            "username": {"type": "string"},
            "is_admin": {"type": "boolean"},
            "usage": {
                "type": "object",
                "required": ["documents", "stored_bytes", "conversions_in_flight"],
                "properties": {
                    k: _QUOTA_ENTRY for k in ("documents", "stored_bytes", "conversions_in_flight")
                },
            },
        },
    },
}


def spec() -> dict:
    """The OpenAPI document."""
    paths: dict[str, dict] = {}
    for method, path, operation in ROUTES:
        paths.setdefault(path, {})[method] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "livedoc",
            "version": "1",
            "description": "Uploads converted into pages, with live progress. Errors are "
            '{"error": {"code", "message"}}.',
        },
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "session": {"type": "apiKey", "in": "cookie", "name": "session"},
            },
        },
        "security": [{"bearer": []}, {"session": []}],
    }
