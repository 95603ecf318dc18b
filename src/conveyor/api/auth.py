"""Who is calling: the `principal` dependency every protected route uses, and the token routes."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from conveyor.api.deps import json_response, path_id, runtime
from conveyor.auth.principal import Principal
from conveyor.auth.tokens import make_scope
from conveyor.errors import ForbiddenError, UnauthorizedError
from conveyor.runtime import Runtime

router = APIRouter(tags=["auth"])
_PRINCIPAL = "conveyor.principal"


async def principal(request: Request) -> Principal:
    """The authenticated caller (401 without a valid token). Async: a plain `def` would run in a thread."""
    found: Principal | None = request.scope.get(_PRINCIPAL)
    if found is None:
        rt: Runtime = request.app.state.runtime
        found = await rt.auth.authenticate(request.headers.get("authorization"), request.query_params.get("userId"))
        if found.api_key_id is not None:
            # Per key and per process (see `RateLimiter`): one key over its limit never slows another.
            rt.auth.keys.admit(found.api_key_id, rt.settings.keys.rate_limit_per_min)
        request.scope[_PRINCIPAL] = found
    return found


class TokenRequest(BaseModel):
    """What `POST /api/v1/auth/token` issues: Omnitool's `/generateJwtToken <action> <subject> <expires_in>`."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    action: str = Field("exec", max_length=64, description="e.g. `exec` to run recipes, `manage` for everything.")
    subject: str = Field("Workflow", max_length=64, description="e.g. `Workflow`, or `all`.")
    expires_in: int = Field(
        3_600_000, alias="expiresIn", gt=0, le=2**53, description="Lifetime in milliseconds, as Omnitool's."
    )
    recipes: list[str] = Field(default_factory=list, max_length=1000, description="Recipe ids the token may run.")


def _basic_credentials(header: str | None) -> tuple[str, str] | None:
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        name, sep, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        raise UnauthorizedError("Basic credentials are not base64 of `user:password`") from None
    if not sep:
        raise UnauthorizedError("Basic credentials are not base64 of `user:password`")
    return name, password


@router.post("/api/v1/auth/token", status_code=201, summary="Issue a JWT (Basic user:password, or a manage-all token)")
async def issue_token(body: TokenRequest, request: Request, rt: Runtime = Depends(runtime)) -> Response:
    header = request.headers.get("authorization")
    basic = _basic_credentials(header)
    caller: Principal | None = None
    if basic is not None:
        user = await rt.auth.check_password(*basic)
    else:
        caller = await principal(request)
        if caller.api_key_id is not None:
            # A JWT minted by a key would outlive the key's revocation: keys do not issue tokens.
            raise ForbiddenError("issuing tokens needs a password (Basic) or a JWT with `manage all`, not an API key")
        if not caller.unlimited_manager:
            # A narrower token must not mint a wider one: only a full `manage all` token (or a password) issues.
            raise ForbiddenError("issuing tokens needs a password (Basic) or a token with `manage all`")
        user = await rt.auth.get_user(caller.user_id)
    scope = make_scope(body.action, body.subject, body.recipes)
    issued = await rt.auth.issue_token(user, [scope], body.expires_in, parent=caller)
    return json_response(
        {
            "token": issued.token,
            "tokenId": issued.token_id,
            "userId": issued.user_id,
            "expiresAt": issued.expires_at_ms,
            "scopes": [s.to_claim() for s in issued.scopes],
        },
        201,
    )


@router.delete("/api/v1/auth/tokens/{token_id}", status_code=204, summary="Revoke a token by its tokenId")
async def revoke_token(token_id: str, me: Principal = Depends(principal), rt: Runtime = Depends(runtime)) -> Response:
    await rt.auth.revoke_token(path_id("token", token_id), by=me)
    return Response(status_code=204)


@router.get("/api/v1/auth/me", summary="The caller: user and the token's scopes")
async def whoami(me: Principal = Depends(principal)) -> dict[str, Any]:
    return {
        "userId": me.user_id,
        "name": me.user_name,
        "isAdmin": me.is_admin,
        "orgId": me.org_id,
        "tokenId": me.token_id,
        "scopes": [s.to_claim() for s in me.scopes],
    }
