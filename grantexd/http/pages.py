"""The HTML pages for end users: consent (``/consent``) and permissions (``/permissions``).

The consent page is rendered on the server and works without JavaScript. Approve and Deny
submit one form back to ``/consent``, which calls the same service functions as the JSON
consent API and then redirects (303) to the request's ``redirectUri``. The permissions page is
a shell whose script, served from ``/static/``, calls the principal API with the session token
from the URL fragment.

Both pages forbid inline script and style through their Content-Security-Policy, and Jinja
autoescaping HTML-escapes every value, because agent names, descriptions and scopes are chosen
by developers.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from cryptography.hazmat.primitives import serialization
from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup
from quart import Blueprint, Response, request
from werkzeug.exceptions import HTTPException
from werkzeug.urls import iri_to_uri

from grantexd.crypto.keys import KeySet, SigningKey
from grantexd.errors import FidoRequired, Gone, GrantexError, NotFound
from grantexd.http.page_text import TEXT, describe_duration, format_date, script_text
from grantexd.http.requests import is_cross_site_post, trusted_origins
from grantexd.http.state import RuntimeState
from grantexd.logging import get_logger
from grantexd.services import authorization
from grantexd.services.context import Services
from grantexd.services.timefmt import parse_duration, to_iso
from grantexd.store.auth_requests import AuthRequest

log = get_logger()

_BASE_POLICY = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'"
_FRAMING_POLICY = "frame-ancestors 'none'; base-uri 'none'"
_PERMISSIONS_CSP = f"{_BASE_POLICY}; connect-src 'self'; form-action 'none'; {_FRAMING_POLICY}"
_MESSAGE_CSP = f"{_BASE_POLICY}; form-action 'none'; {_FRAMING_POLICY}"

_STATIC_FILES = {
    "pages.css": "text/css; charset=utf-8",
    "permissions.js": "text/javascript; charset=utf-8",
    "icon.svg": "image/svg+xml",
}

# A host that a CSP host-source can name: ASCII labels of letters, digits and hyphens.
# IPv6 literals cannot be written in a CSP source expression at all.
_CSP_HOST = re.compile(r"[a-z0-9-]+(?:\.[a-z0-9-]+)*")

_FORM_TOKEN_LABEL = b"grantexd consent form token"


def consent_form_policy(redirect_uri: str | None) -> str:
    """Return the consent page's CSP, whose form-action also admits the redirect target.

    Chromium applies form-action to every redirect that follows a form submission (CSP
    Level 3), so the 303 from ``POST /consent`` to the app's ``redirectUri`` is blocked unless
    that origin is listed. A target that no host-source can name (an IPv6 literal) is admitted
    by its scheme alone; the page's only form still posts to ``'self'``.
    """
    sources = ["'self'"]
    if redirect_uri:
        source = _redirect_source(redirect_uri)
        if source is not None:
            sources.append(source)
    return f"{_BASE_POLICY}; form-action {' '.join(sources)}; {_FRAMING_POLICY}"


def _redirect_source(redirect_uri: str) -> str | None:
    try:
        parts = urlsplit(redirect_uri)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    try:
        host = parts.hostname.encode("idna").decode("ascii").lower()
    except UnicodeError:
        return f"{parts.scheme}:"
    if not _CSP_HOST.fullmatch(host):
        return f"{parts.scheme}:"
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")


def _form_key(key: SigningKey) -> bytes:
    der = key.private_key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return hmac.new(der, _FORM_TOKEN_LABEL, hashlib.sha256).digest()


class ConsentFormTokens:
    """CSRF tokens for the consent form: an HMAC of the auth request id.

    The HMAC key is derived from the RSA signing key, which every instance shares, so any
    instance accepts a token that another one issued. Tokens are checked against every key
    that still verifies, so a key rotation between showing the page and posting it does not
    reject the form. A token is only useful to someone who could read the consent page, and a
    foreign site cannot, since the page has no CORS headers and cannot be framed.
    """

    def __init__(self) -> None:
        self._keys_by_kid: dict[str, bytes] = {}

    def _key(self, key: SigningKey) -> bytes:
        derived = self._keys_by_kid.get(key.kid)
        if derived is None:
            derived = _form_key(key)
            self._keys_by_kid[key.kid] = derived
        return derived

    def _mac(self, key: SigningKey, request_id: str) -> bytes:
        return hmac.new(self._key(key), request_id.encode("utf-8"), hashlib.sha256).digest()

    def issue(self, keys: KeySet, request_id: str) -> str:
        return base64.urlsafe_b64encode(self._mac(keys.active, request_id)).rstrip(b"=").decode("ascii")

    def is_valid(self, keys: KeySet, request_id: str, token: str) -> bool:
        try:
            presented = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except ValueError:
            return False
        candidates = (keys.active, *keys.verifying)
        return any(hmac.compare_digest(presented, self._mac(key, request_id)) for key in candidates)


def add_query_parameters(uri: str, parameters: dict[str, str]) -> str:
    """Set query parameters on a URI as the browser's ``URLSearchParams.set`` does.

    The first existing parameter of the same name takes the new value in place, later ones
    are dropped, and new names are appended, so the app's own parameters are kept.
    """
    parts = urlsplit(uri)
    pairs: list[tuple[str, str]] = []
    placed: set[str] = set()
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name in parameters:
            if name not in placed:
                pairs.append((name, parameters[name]))
                placed.add(name)
            continue
        pairs.append((name, value))
    pairs.extend((name, value) for name, value in parameters.items() if name not in placed)
    return iri_to_uri(urlunsplit(parts._replace(query=urlencode(pairs))))


@dataclass(frozen=True)
class _ScopeLine:
    scope: str
    description: str


def _read_static_files() -> dict[str, bytes]:
    folder = resources.files("grantexd.http") / "static"
    return {name: (folder / name).read_bytes() for name in _STATIC_FILES}


def create_blueprint(services: Services, state: RuntimeState) -> Blueprint:
    blueprint = Blueprint("pages", __name__)
    templates = Environment(
        loader=PackageLoader("grantexd.http", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
    )
    templates.globals["text"] = TEXT
    allowed_origins = trusted_origins(services.config)
    templates.globals["fill"] = lambda template, **values: Markup(template).format(**values)
    static_files = _read_static_files()
    form_tokens = ConsentFormTokens()

    def render(template: str, status: int, policy: str, **context: Any) -> Response:
        body = templates.get_template(template).render(**context)
        response = Response(body, status=status, content_type="text/html; charset=utf-8")
        response.headers["Content-Security-Policy"] = policy
        # The consent URL and the session link are bearer capabilities, so no Referer may carry them.
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    def message_page(
        status: int, title: str, body: str, link_href: str | None = None, link_text: str = TEXT["back_to_request"]
    ) -> Response:
        return render("message.html", status, _MESSAGE_CSP, title=title, body=body, link_href=link_href, link_text=link_text)

    def consent_link(request_id: str) -> str:
        return "/consent?" + urlencode({"req": request_id})

    @blueprint.get("/consent")
    async def show_consent() -> Response:
        request_id = request.args.get("req", "")
        if not request_id:
            return message_page(400, TEXT["missing_request_title"], TEXT["missing_request_body"])
        try:
            details = await authorization.get_consent(services, request_id)
        except NotFound:
            return message_page(404, TEXT["not_found_title"], TEXT["not_found_body"])
        except Gone:
            return message_page(410, TEXT["gone_title"], TEXT["gone_body"])

        view = details.view
        auth_request = view.request
        if view.fido_required and not auth_request.fido_verified:
            # Approve and deny would both be rejected until a WebAuthn check that this page lacks.
            return message_page(403, TEXT["fido_required_title"], TEXT["fido_required_body"])
        # A grant lasts expiresIn from the code exchange, which follows approval within
        # seconds, so now + expiresIn is when access ends if the person approves now.
        duration = parse_duration(auth_request.expires_in)
        if duration is None:
            duration = auth_request.expires_at - auth_request.created_at
        ends_at = services.now() + duration
        expiry_time = Markup('<time datetime="{}">{}</time>').format(to_iso(ends_at), format_date(ends_at))
        return render(
            "consent.html",
            200,
            consent_form_policy(auth_request.redirect_uri),
            title=Markup(TEXT["consent_title"]).format(agent=view.agent_name),
            agent_name=view.agent_name,
            agent_description=view.agent_description,
            agent_did=view.agent_did,
            developer_name=view.developer_name,
            scopes=[
                _ScopeLine(scope=scope, description=description)
                for scope, description in zip(auth_request.scopes, details.scope_descriptions, strict=True)
            ],
            duration_words=describe_duration(duration),
            expiry_time=expiry_time,
            request_id=auth_request.id,
            form_token=form_tokens.issue(services.keys, auth_request.id),
        )

    @blueprint.post("/consent")
    async def decide_consent() -> Response:
        # The form token is readable by anyone who can load the page, so the browser's Origin
        # header is what keeps a page elsewhere from posting a decision.
        if is_cross_site_post(request.headers, allowed_origins):
            origin = request.headers.get("Origin", "")
            log.warning("consent.form.rejected", reason="cross-site request", origin=origin[:200])
            return message_page(403, TEXT["form_rejected_title"], TEXT["form_rejected_body"])
        form = await request.form
        request_id = form.get("req", "")
        token = form.get("csrf_token", "")
        decision = form.get("decision", "")
        if not request_id or not token or not form_tokens.is_valid(services.keys, request_id, token):
            reason = "invalid form token" if request_id and token else "missing request id or form token"
            log.warning("consent.form.rejected", authRequestId=request_id[:64], reason=reason)
            link = consent_link(request_id) if request_id else None
            return message_page(403, TEXT["form_rejected_title"], TEXT["form_rejected_body"], link)
        if decision not in ("approve", "deny"):
            return message_page(
                400, TEXT["invalid_decision_title"], TEXT["invalid_decision_body"], consent_link(request_id)
            )

        try:
            if decision == "approve":
                decided = await authorization.approve_consent(services, request_id)
            else:
                decided = await authorization.deny_consent(services, request_id)
        except FidoRequired:
            return message_page(403, TEXT["fido_required_title"], TEXT["fido_required_body"])
        except (Gone, NotFound):
            return message_page(410, TEXT["gone_title"], TEXT["gone_body"])
        return decision_response(decided, decision)

    def decision_response(decided: AuthRequest, decision: str) -> Response:
        if decided.redirect_uri:
            parameters = {"code": decided.code or ""} if decision == "approve" else {"error": "access_denied"}
            if decided.state:
                parameters["state"] = decided.state
            location = add_query_parameters(decided.redirect_uri, parameters)
            title = TEXT["approved_title"] if decision == "approve" else TEXT["denied_title"]
            response = message_page(303, title, TEXT["redirecting_body"], location, TEXT["continue_to_app"])
            response.headers["Location"] = location
            return response
        if decision == "approve":
            return message_page(200, TEXT["approved_title"], TEXT["approved_body"])
        return message_page(200, TEXT["denied_title"], TEXT["denied_body"])

    @blueprint.get("/permissions")
    async def show_permissions() -> Response:
        return render(
            "permissions.html",
            200,
            _PERMISSIONS_CSP,
            title=TEXT["permissions_title"],
            script_text=script_text(),
        )

    @blueprint.get("/static/<name>")
    async def static_file(name: str) -> Response:
        content = static_files.get(name)
        if content is None:
            return Response("Not found\n", status=404, content_type="text/plain; charset=utf-8")
        return Response(content, status=200, content_type=_STATIC_FILES[name])

    # Errors on these routes get an HTML page instead of the JSON envelope: a person reads it.
    @blueprint.errorhandler(GrantexError)
    async def render_domain_error(error: GrantexError) -> Response:
        if error.status >= 500:
            log.error("request.failed", status=error.status, code=error.code, error=error.message)
            return message_page(error.status, TEXT["unavailable_title"], TEXT["unavailable_body"])
        return message_page(error.status, TEXT["request_failed_title"], error.message)

    @blueprint.errorhandler(HTTPException)
    async def render_http_error(error: HTTPException) -> Response:
        status = error.code or 500
        if status >= 500:
            log.error("request.failed.http", status=status, error=repr(error))
            return message_page(status, TEXT["unexpected_title"], TEXT["unexpected_body"])
        return message_page(status, TEXT["request_failed_title"], error.description or error.name)

    @blueprint.errorhandler(Exception)
    async def render_unexpected_error(error: Exception) -> Response:
        log.error("request.failed.unexpected", error=repr(error), exc_info=error)
        return message_page(500, TEXT["unexpected_title"], TEXT["unexpected_body"])

    return blueprint
