"""``hearth token add|list|remove``: per-person tokens for the web page and the API (cluster/people_tokens.py).

They are kept in the head's state directory, so run these on the head (where ``hearth up`` ran).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from cluster import local

if TYPE_CHECKING:
    from cluster.people_tokens import PeopleError

token_app = typer.Typer(help="Per-person tokens: log in to the web page, call the API as yourself.",
                        no_args_is_help=True)
console = Console()
err = Console(stderr=True)


def _refuse(exc: PeopleError) -> None:
    err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


@token_app.command("add")
def add(name: str, role: Annotated[str, typer.Option(help="reader | member | operator")] = "member") -> None:
    """Make NAME a token with ROLE and print it (once: only its hash is kept)."""
    from cluster import people_tokens  # here: it loads pydantic, which client commands need not

    try:
        token = people_tokens.add(local.state_dir(), name, role)
    except people_tokens.PeopleError as exc:
        _refuse(exc)
        return
    err.print(f"token for {name} ({role}); give it to them, it is not shown again:")
    console.print(token, highlight=False, soft_wrap=True)


@token_app.command("list")
def list_tokens() -> None:
    """Who has a token, with which role."""
    from cluster import people_tokens  # here: it loads pydantic, which client commands need not

    table = Table("name", "role", "made")
    for person in people_tokens.load(local.state_dir()):
        made = time.strftime("%Y-%m-%d %H:%M", time.localtime(person.created_at))
        table.add_row(person.name, person.role.value, made)
    console.print(table)


@token_app.command("remove")
def remove(name: str) -> None:
    """Take NAME's token away; their open page sessions end at their next click."""
    from cluster import people_tokens  # here: it loads pydantic, which client commands need not

    try:
        people_tokens.remove(local.state_dir(), name)
    except people_tokens.PeopleError as exc:
        _refuse(exc)
        return
    console.print(f"removed {name}'s token")
