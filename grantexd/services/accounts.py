"""Developer accounts: signup, API-key authentication, settings and key rotation."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from grantexd.crypto.hashing import new_api_key, sha256_hex
from grantexd.crypto.ids import new_id
from grantexd.errors import BadRequest, Conflict, NotFound, Unauthorized, UniqueViolation
from grantexd.logging import get_logger
from grantexd.services.context import Services
from grantexd.store import developers
from grantexd.store.developers import Developer, Mode

log = get_logger()

_EMAIL = re.compile(r"^[^\s@]+@[^\s@]+\.[^\s@]+$")
_BEARER = re.compile(r"^Bearer[ \t]+(\S+)$", re.IGNORECASE)


@dataclass(frozen=True)
class SignupResult:
    developer: Developer
    api_key: str


def validate_signup(body: dict[str, object]) -> tuple[str, str | None, Mode]:
    name = body.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        raise BadRequest("name must be 1 to 200 characters")
    mode = body.get("mode", "live")
    if mode is None:
        mode = "live"
    if mode not in ("live", "sandbox"):
        raise BadRequest("mode must be live or sandbox")
    email = body.get("email")
    normalized_email: str | None = None
    if email is not None:
        if not isinstance(email, str):
            raise BadRequest("email must be a valid address")
        normalized_email = email.strip().lower()
        if not 1 <= len(normalized_email) <= 254 or not _EMAIL.match(normalized_email):
            raise BadRequest("email must be a valid address")
    return name.strip(), normalized_email, mode  # type: ignore[return-value]


async def sign_up(services: Services, name: str, email: str | None, mode: Mode) -> SignupResult:
    api_key = new_api_key(mode)
    try:
        developer = await developers.insert_developer(
            services.db, new_id("dev"), sha256_hex(api_key), name, email, mode
        )
    except UniqueViolation:
        raise Conflict("A developer with this email already exists") from None
    log.info("developer.created", developerId=developer.id, mode=mode)
    return SignupResult(developer=developer, api_key=api_key)


async def authenticate(services: Services, authorization: str | None) -> Developer:
    """Find the developer whose API key is the bearer token; raise Unauthorized otherwise."""
    match = _BEARER.match(authorization or "")
    if match is None:
        raise Unauthorized("Missing or invalid Authorization header")
    key = match.group(1)
    if not 16 <= len(key) <= 512:
        raise Unauthorized("Invalid API key")
    developer = await developers.find_developer_by_key_hash(services.db, sha256_hex(key))
    if developer is None:
        raise Unauthorized("Invalid API key")
    return developer


async def get_developer(services: Services, developer_id: str) -> Developer:
    developer = await developers.find_developer(services.db, developer_id)
    if developer is None:
        raise NotFound("Developer not found")
    return developer


async def update_settings(services: Services, developer_id: str, body: dict[str, object]) -> None:
    if "fidoRequired" not in body and "fidoRpName" not in body:
        raise BadRequest("No fields to update")
    fido_required = body.get("fidoRequired")
    if "fidoRequired" in body and not isinstance(fido_required, bool):
        raise BadRequest("fidoRequired must be a boolean")
    fido_rp_name = body.get("fidoRpName")
    if "fidoRpName" in body:
        if not isinstance(fido_rp_name, str) or not fido_rp_name.strip() or len(fido_rp_name) > 100:
            raise BadRequest("fidoRpName must be 1 to 100 characters")
        fido_rp_name = fido_rp_name.strip()
    updated = await developers.update_developer_settings(
        services.db,
        developer_id,
        fido_required if isinstance(fido_required, bool) else None,
        fido_rp_name if isinstance(fido_rp_name, str) else None,
    )
    if not updated:
        raise NotFound("Developer not found")


async def rotate_api_key(services: Services, developer: Developer, authorization: str | None) -> tuple[str, datetime]:
    """Replace the key the request authenticated with; a concurrent rotation that won first
    makes this one fail with 401, because the presented key no longer exists."""
    match = _BEARER.match(authorization or "")
    if match is None:
        raise Unauthorized("Missing or invalid Authorization header")
    api_key = new_api_key(developer.mode)
    if not await developers.replace_api_key_hash(
        services.db, developer.id, sha256_hex(match.group(1)), sha256_hex(api_key)
    ):
        raise Unauthorized("Invalid API key")
    log.info("developer.api_key.rotated", developerId=developer.id)
    return api_key, services.now()


async def seed_developers(services: Services) -> None:
    """Create the developers for SEED_API_KEY and SEED_SANDBOX_KEY unless they already exist."""
    seeds: list[tuple[str, Mode, str]] = []
    if services.config.seed_api_key is not None:
        seeds.append((services.config.seed_api_key.reveal(), "live", "Seeded live developer"))
    if services.config.seed_sandbox_key is not None:
        seeds.append((services.config.seed_sandbox_key.reveal(), "sandbox", "Seeded sandbox developer"))
    for key, mode, name in seeds:
        created = await developers.ensure_seed_developer(services.db, new_id("dev"), sha256_hex(key), name, mode)
        log.info("developer.seeded", mode=mode, created=created)
