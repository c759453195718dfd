"""Bearer tokens and the rights they carry: ``need("submit")`` is a route's dependency.

Besides the admin and plugin tokens, a person's own token (``hearth token add NAME --role …``,
cluster/people_tokens.py) carries its role's rights and speaks as NAME."""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import Depends, Header, HTTPException, Request
from pydantic import BaseModel, ConfigDict

from cluster import people_tokens

RIGHTS = ("read", "submit", "answer", "decide", "cancel", "restart", "priority", "nodes")
PLUGIN_RIGHTS = ("read", "submit", "answer", "decide")
PLUGIN_TOKEN_FILE = "plugin-token"


class Caller(BaseModel):
    model_config = ConfigDict(frozen=True)
    role: str
    rights: tuple[str, ...]
    person: str = ""
    """For a person's token (``hearth token add``): their name, which their answers and decisions
    carry whatever the request's ``who`` says."""


ADMIN = Caller(role="admin", rights=RIGHTS)
PLUGIN = Caller(role="plugin", rights=PLUGIN_RIGHTS)


def token_table(token: str, plugin_token: str | None) -> list[tuple[Caller, bytes]]:
    tokens = [(ADMIN, token.encode())]
    if plugin_token:
        tokens.append((PLUGIN, plugin_token.encode()))
    return tokens


def caller(request: Request, authorization: str = Header(default="")) -> Caller:
    """Who presents this bearer token (every token is compared, in constant time)."""
    scheme, _, presented = authorization.partition(" ")
    found = None
    for who, secret in request.app.state.tokens:
        if hmac.compare_digest(presented.encode(), secret) and scheme.lower() == "bearer":
            found = who
    if found is None and scheme.lower() == "bearer" and presented:
        person = people_tokens.find(request.app.state.store_path.parent, presented)
        if person is not None:
            found = Caller(role=person.role.value, rights=people_tokens.ROLE_RIGHTS[person.role], person=person.name)
    if found is None:
        raise HTTPException(status_code=401, detail="missing or wrong bearer token")
    return found


def need(right: str) -> Any:
    """A dependency: the caller, if their token carries ``right`` (else 403 naming what it has)."""
    def check(who: Caller = Depends(caller)) -> Caller:
        if right not in who.rights:
            has = ", ".join(who.rights)
            raise HTTPException(status_code=403,
                                detail=f"the {who.role} token lacks the '{right}' right (it has: {has})")
        return who
    return Depends(check)
