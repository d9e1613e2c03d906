"""PostgreSQL and Redis: the only package that touches asyncpg, redis or trio-asyncio."""
