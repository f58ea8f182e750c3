"""The client's real address and scheme: forwarded headers are trusted for exactly TRUSTED_PROXIES
hops and ignored without it; over HTTPS every cookie is Secure and HSTS is sent.

Rate limits (flask-limiter keys on `request.remote_addr`), audit lines and cookie decisions all read
what ProxyFix puts in the WSGI environment, so they see the client, never the proxy.
"""

from __future__ import annotations

from flask import Flask, Response, current_app, has_request_context, request
from flask.sessions import SecureCookieSessionInterface
from werkzeug.middleware.proxy_fix import ProxyFix


class SchemeAwareSessions(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, with the cookie Secure whenever the request came over HTTPS."""

    def get_cookie_secure(self, app: Flask) -> bool:
        """Secure when configured so, or when the client's real scheme is https."""
        return super().get_cookie_secure(app) or (has_request_context() and request.is_secure)


def init_app(app: Flask) -> None:
    """Wrap the WSGI app in ProxyFix when proxies are trusted; secure cookies and HSTS over HTTPS."""
    hops = app.config["TRUSTED_PROXIES"]
    if hops < 0:
        raise ValueError("TRUSTED_PROXIES must be 0 or more")
    if hops:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops)
    app.session_interface = SchemeAwareSessions()
    # The session cookie is written after the after_request hooks run, hence its own interface;
    # this hook covers every other cookie (flask-login's remember cookie).
    app.after_request(_secure_transport)


def _secure_transport(resp: Response) -> Response:
    if not request.is_secure:
        return resp
    resp.headers.setdefault(
        "Strict-Transport-Security", f"max-age={current_app.config['HSTS_MAX_AGE']}; includeSubDomains"
    )
    cookies = resp.headers.getlist("Set-Cookie")
    if cookies:
        del resp.headers["Set-Cookie"]
        for cookie in cookies:
            secure = any(part.strip().lower() == "secure" for part in cookie.split(";")[1:])
            resp.headers.add("Set-Cookie", cookie if secure else cookie + "; Secure")
    return resp
