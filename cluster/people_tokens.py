"""Per-person tokens: ``hearth token add NAME --role …`` makes one, the web page and the API accept it.

A person's token names who acts (the ``who`` of their answers and decisions) and carries a role's
rights. Only a SHA-256 of each token is kept, in ``<state_dir>/people.json`` (0600, replaced
atomically), so reading the file does not give anyone a token; the token itself is printed once.

Roles (each includes the one before):

* ``reader``   — sees tasks, events, nodes and the inbox;
* ``member``   — also submits PRDs, answers questions and approves or rejects checkpoints (a
  decision still needs the person among the project's ``approvers`` when hearth.toml lists any);
* ``operator`` — also cancels, restarts and changes priorities.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
import time
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict

PEOPLE_FILE = "people.json"
CHANNEL = "web"
"""The channel a person's token speaks on: a project's ``approvers`` list them as ``web:NAME`` (or NAME)."""
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


class Role(StrEnum):
    reader = "reader"
    member = "member"
    operator = "operator"


ROLE_RIGHTS: dict[Role, tuple[str, ...]] = {
    Role.reader: ("read", "nodes"),
    Role.member: ("read", "nodes", "submit", "answer", "decide"),
    Role.operator: ("read", "nodes", "submit", "answer", "decide", "cancel", "restart", "priority"),
}


class PersonToken(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    """Who this token speaks for; the ``who`` of their answers and decisions."""
    role: Role
    """What they may do (see the module docstring)."""
    sha256: str
    """Hex SHA-256 of the token; the token itself is never stored."""
    created_at: float
    """When it was made (seconds since the epoch)."""


class PeopleError(ValueError):
    """A bad name, an unknown role, or a person who already has (or has no) token."""


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _path(state_dir: Path) -> Path:
    return state_dir / PEOPLE_FILE


def load(state_dir: Path) -> list[PersonToken]:
    """Everyone with a token (an absent file: nobody)."""
    path = _path(state_dir)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    return [PersonToken.model_validate(item) for item in raw]


def _save(state_dir: Path, people: list[PersonToken]) -> None:
    """Write the whole list to a private temporary file, then rename it over the old one."""
    path = _path(state_dir)
    tmp = path.with_name(f".{PEOPLE_FILE}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump([p.model_dump(mode="json") for p in people], handle, indent=1)
    os.replace(tmp, path)


def add(state_dir: Path, name: str, role: str) -> str:
    """Make a token for ``name`` with ``role``; returns the token (shown once, never stored)."""
    if not NAME_PATTERN.match(name):
        raise PeopleError(f"{name!r} is not a usable name: letters, digits, '.', '_', '@' or '-', up to 64")
    try:
        chosen = Role(role)
    except ValueError:
        raise PeopleError(f"unknown role {role!r} (roles: {', '.join(r.value for r in Role)})") from None
    people = load(state_dir)
    if any(p.name == name for p in people):
        raise PeopleError(f"{name} already has a token; `hearth token remove {name}` first to replace it")
    token = secrets.token_urlsafe(32)
    people.append(PersonToken(name=name, role=chosen, sha256=_digest(token), created_at=time.time()))
    _save(state_dir, people)
    return token


def remove(state_dir: Path, name: str) -> None:
    people = load(state_dir)
    kept = [p for p in people if p.name != name]
    if len(kept) == len(people):
        raise PeopleError(f"{name} has no token")
    _save(state_dir, kept)


def find(state_dir: Path, token: str) -> PersonToken | None:
    """The person whose token this is, compared in constant time per entry; None for no one."""
    presented = _digest(token)
    found = None
    with contextlib.suppress(ValueError):
        for person in load(state_dir):
            if hmac.compare_digest(person.sha256, presented):
                found = person
    return found
