"""Who is looking at the page: tokens → identities, identities → cookie sessions, CSRF per session.

A person logs in once with a token (the cluster's API token, or their own from ``hearth token add``);
the page then carries only an opaque session id in an HttpOnly, SameSite=Strict cookie, so the token
never appears in a URL, a page or a script. The plugin token cannot log in: it belongs to the OpenClaw
plugin, which acts for chat users it names itself.

Sessions live in the sidecar's memory: restarting the sidecar logs everyone out (nothing is lost but
the login). A session of a person whose token was removed ends at their next request.

Every state-changing form carries the session's CSRF token (a hidden field, or the ``X-CSRF-Token``
header for scripted requests), compared in constant time; SameSite=Strict keeps the cookie off
cross-site requests as a second wall.
"""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from cluster import people_tokens

COOKIE = "hearth_session"
ADMIN_RIGHTS = ("read", "nodes", "submit", "answer", "decide", "cancel", "restart", "priority")


class Identity(BaseModel):
    """Someone who logged in: the name their decisions carry and what they may do."""

    model_config = ConfigDict(frozen=True)

    name: str
    role: str
    rights: tuple[str, ...]
    cluster_admin: bool = False
    """Logged in with the cluster's API token: every right, and (as on the API) not limited to a
    project's approvers."""
    token_sha256: str = ""
    """For a person's token: its digest, so a removed token ends the session."""


class PluginTokenRefused(ValueError):
    """The OpenClaw plugin's token was offered at the login form."""


class Authenticator:
    """Recognises the cluster's tokens and the people's tokens (re-read at each check)."""

    def __init__(self, state_dir: Path, admin_token: str, plugin_token: str | None) -> None:
        self.state_dir = state_dir
        self._admin = admin_token.encode()
        self._plugin = plugin_token.encode() if plugin_token else None

    def identify(self, token: str) -> Identity | None:
        presented = token.strip().encode()
        if not presented:
            return None
        if self._plugin is not None and hmac.compare_digest(presented, self._plugin):
            raise PluginTokenRefused("the OpenClaw plugin's token cannot log in; use the API token or your own "
                                     "(`hearth token add NAME --role member`)")
        if hmac.compare_digest(presented, self._admin):
            return Identity(name="admin", role="admin", rights=ADMIN_RIGHTS, cluster_admin=True)
        person = people_tokens.find(self.state_dir, presented.decode())
        if person is None:
            return None
        return Identity(name=person.name, role=person.role.value, rights=people_tokens.ROLE_RIGHTS[person.role],
                        token_sha256=person.sha256)

    def still_valid(self, identity: Identity) -> bool:
        if identity.cluster_admin:
            return True
        return any(p.sha256 == identity.token_sha256 for p in people_tokens.load(self.state_dir))


@dataclass
class Session:
    id: str
    identity: Identity
    csrf: str
    created_at: float
    seen_at: float = field(default=0.0)
    flash: list[tuple[str, str]] = field(default_factory=list)
    """(kind, text) notes shown once on the next page: 'ok' after an action, 'error' when refused."""


class Sessions:
    """Open sessions by id; each expires ``idle_s`` after its last request and ``max_s`` after login."""

    def __init__(self, idle_s: float = 8 * 3600, max_s: float = 7 * 24 * 3600) -> None:
        self.idle_s = idle_s
        self.max_s = max_s
        self._open: dict[str, Session] = {}

    def create(self, identity: Identity) -> Session:
        now = time.time()
        session = Session(id=secrets.token_urlsafe(32), identity=identity, csrf=secrets.token_urlsafe(32),
                          created_at=now, seen_at=now)
        self._open[session.id] = session
        return session

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        session = self._open.get(session_id)
        now = time.time()
        if session is None:
            return None
        if now - session.seen_at > self.idle_s or now - session.created_at > self.max_s:
            self._open.pop(session_id, None)
            return None
        session.seen_at = now
        return session

    def drop(self, session_id: str | None) -> None:
        if session_id:
            self._open.pop(session_id, None)


def csrf_ok(session: Session, presented: str | None) -> bool:
    return bool(presented) and hmac.compare_digest(session.csrf.encode(), str(presented).encode())
