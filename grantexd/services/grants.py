"""Reading grants; revocation lives in ``revocation``."""

from __future__ import annotations

from grantexd.errors import NotFound
from grantexd.services.context import Services
from grantexd.store import grants as grant_store
from grantexd.store.developers import Developer
from grantexd.store.grants import Grant, GrantFilter


async def list_grants(
    services: Services, developer: Developer, filters: GrantFilter, limit: int | None, offset: int
) -> list[Grant]:
    return await grant_store.list_grants(services.db, developer.id, filters, limit, offset)


async def get_grant(services: Services, developer: Developer, grant_id: str) -> Grant:
    grant = await grant_store.find_grant(services.db, developer.id, grant_id)
    if grant is None:
        raise NotFound("Grant not found")
    return grant
