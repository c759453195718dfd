"""Bearer tokens and the rights they carry: ``need("submit")`` is a route's dependency.

Besides the admin and plugin tokens, a person's own token (``hearth token add NAME --role …``,
cluster/people_tokens.py) carries its role's rights and speaks as NAME.

The token is checked before anything else about a request: ``refusal`` lets the app answer 401/403
for a request whose body could not even be parsed (FastAPI reads the body before it runs
dependencies), so a caller without a token learns nothing about what the API accepts.
"""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import Depends, HTTPException, Request
from fastapi.dependencies.models import Dependant
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict

from cluster import people_tokens

RIGHTS = ("read", "submit", "answer", "decide", "cancel", "restart", "priority", "nodes", "endpoint")
PLUGIN_RIGHTS = ("read", "submit", "answer", "decide")
PLUGIN_TOKEN_FILE = "plugin-token"
CHALLENGE = {"WWW-Authenticate": "Bearer"}

bearer = HTTPBearer(auto_error=False, description="The admin token (<state_dir>/token) or the plugin token")
"""Declares the bearer scheme in the OpenAPI document; ``caller`` does the checking itself."""


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


def identify(request: Request, presented: str | None) -> Caller:
    """Who presents this bearer token (every token is compared, in constant time); else 401."""
    found = None
    for who, secret in request.app.state.tokens:
        if presented is not None and hmac.compare_digest(presented.encode(), secret):
            found = who
    if found is None and presented:
        person = people_tokens.find(request.app.state.store_path.parent, presented)
        if person is not None:
            found = Caller(role=person.role.value, rights=people_tokens.ROLE_RIGHTS[person.role], person=person.name)
    if found is None:
        raise HTTPException(status_code=401, detail="missing or wrong bearer token", headers=CHALLENGE)
    return found


def caller(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Caller:
    return identify(request, credentials.credentials if credentials else None)


def check_right(who: Caller, right: str) -> Caller:
    if right not in who.rights:
        has = ", ".join(who.rights)
        raise HTTPException(status_code=403, detail=f"the {who.role} token lacks the '{right}' right (it has: {has})")
    return who


def require_endpoint_right(who: Caller, model: str | None) -> None:
    """A model named by URL (``openai:<url>``) needs the ``endpoint`` right, which only the admin
    token holds: the worker node would connect wherever the URL says (any host its network
    reaches), and whoever answers there writes every command the task's steps run. Catalogue
    models (``docker:``, ``embedded:``, ``scripted:``) and the project's own hearth.toml model need
    no more than ``submit``."""
    if model is not None and model.partition(":")[0] == "openai" and "endpoint" not in who.rights:
        raise HTTPException(status_code=403, detail=(
            f"the {who.role} token lacks the 'endpoint' right, which a model given by URL ({model!r}) "
            "needs: it would make a node connect there and let that server drive the task. Name a "
            "catalogue model (docker:<name> from models.toml, embedded:<name>) or set the project's "
            "model in hearth.toml"))


def need(right: str) -> Any:
    """A dependency: the caller, if their token carries ``right`` (else 403 naming what it has)."""
    def check(who: Caller = Depends(caller)) -> Caller:
        return check_right(who, right)
    check.hearth_right = right  # type: ignore[attr-defined]  # read back by ``refusal``
    return Depends(check)


def _rights(dependant: Dependant) -> list[str]:
    found = [r] if (r := getattr(dependant.call, "hearth_right", None)) else []
    return found + [right for sub in dependant.dependencies for right in _rights(sub)]


def refusal(request: Request) -> HTTPException | None:
    """What the route's token checks say about ``request`` (None: they pass), run outside FastAPI's
    dependency solving: for requests refused before it (a body that is not JSON)."""
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None:
        return None
    rights = _rights(dependant)
    if not rights:
        return None
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    try:
        who = identify(request, presented if scheme.lower() == "bearer" else None)
        for right in rights:
            check_right(who, right)
    except HTTPException as exc:
        return exc
    return None
