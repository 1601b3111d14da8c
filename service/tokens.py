"""Small keyword-only data functions for API tokens. Only a token's SHA-256 is stored: tokens are
32 random bytes, so a fast hash is enough (no password stretching needed) and a leaked table
yields no usable token."""

import hashlib
import hmac
import secrets
import uuid

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from service.tables import ApiToken

SCOPES = ("jobs:read", "jobs:write", "ops")
PREFIX = "gj_"
WEBHOOK_SECRET_PREFIX = "whsec_"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(
    session: Session,
    *,
    name: str,
    scopes: list[str],
    roots: list[str] | None = None,
    max_active_jobs: int | None = None,
    max_active_files: int | None = None,
) -> tuple[ApiToken, str]:
    """A new token; the secret is returned here and never again (its webhook signing secret is kept:
    ``token.webhook_secret``). ``roots``: the folders its jobs
    may read (checked by the caller: service.confinement.checked_token_roots); None: the service's."""
    unknown = set(scopes) - set(SCOPES)
    if unknown or not scopes:
        raise ValueError(f"scopes must be some of {list(SCOPES)}, not {sorted(unknown) or scopes}")
    for limit in (max_active_jobs, max_active_files):
        if limit is not None and limit < 1:
            raise ValueError("quotas must be at least 1")
    secret = PREFIX + secrets.token_urlsafe(32)
    token = ApiToken(
        id=uuid.uuid4(),
        name=name,
        token_hash=token_hash(secret),
        scopes=sorted(set(scopes)),
        roots=roots or None,
        max_active_jobs=max_active_jobs,
        max_active_files=max_active_files,
        webhook_secret=WEBHOOK_SECRET_PREFIX + secrets.token_urlsafe(32),
    )
    session.add(token)
    session.flush()
    return token, secret


def find_token(session: Session, *, secret: str) -> ApiToken | None:
    """The live token with this secret, compared in constant time."""
    digest = token_hash(secret)
    token = session.scalar(select(ApiToken).where(ApiToken.token_hash == digest))
    if token is None or not hmac.compare_digest(token.token_hash, digest) or token.revoked_at is not None:
        return None
    return token


def revoke_token(session: Session, *, token_id: uuid.UUID) -> bool:
    revoked = session.scalar(
        update(ApiToken)
        .where(ApiToken.id == token_id, ApiToken.revoked_at.is_(None))
        .values(revoked_at=func.now())
        .returning(ApiToken.id)
    )
    return revoked is not None


def get_token(session: Session, *, token_id: uuid.UUID | None) -> ApiToken | None:
    return session.get(ApiToken, token_id) if token_id is not None else None


def quotas_of(token: ApiToken | None, *, default_jobs: int, default_files: int) -> tuple[int, int]:
    """(jobs, files) the token's owner may have queued or running: the token's own, else the defaults
    (GROCERY_TOKEN_MAX_ACTIVE_JOBS / _FILES)."""
    jobs = token.max_active_jobs if token is not None and token.max_active_jobs else default_jobs
    files = token.max_active_files if token is not None and token.max_active_files else default_files
    return jobs, files


def list_tokens(session: Session) -> list[ApiToken]:
    return list(session.scalars(select(ApiToken).order_by(ApiToken.created_at)))
