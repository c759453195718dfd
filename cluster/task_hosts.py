"""The scheduler's pool of warm task hosts (``TaskActor``): which host runs which attempt, which idle.

A host is a detached, named Ray actor pinned to one node (hard affinity). An attempt takes an idle
host on its node, or a new one if none is idle; when the attempt's result is in, the host is idle
again and the next attempt placed there reuses its process (no worker start, no imports). A host
whose attempt is cancelled, or that died, is killed and forgotten: a fresh one replaces it when
needed. Idle hosts live only while tasks are queued (each holds an interpreter with the agent
imported, about 100 MB): once the queue is empty, or their node may no longer get tasks, they go.

The store records each attempt's host name, so a restarted scheduler re-attaches to the hosts still
running attempts (``attach``) and kills every other host it finds (``forget_others``).
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Collection
from typing import Any

import ray

from cluster.inventories import on_node
from cluster.task_actor import HOST_PREFIX, NAMESPACE, TaskActor

log = logging.getLogger("hearth.scheduler")


class Host:
    """One task host as the scheduler knows it: its actor name, node and handle."""

    def __init__(self, name: str, node: str, handle: Any) -> None:
        self.name = name
        self.node = node
        self.handle = handle


class TaskHosts:
    def __init__(self) -> None:
        self.idle: dict[str, list[Host]] = {}
        """node id → its idle hosts, the most recently used last."""
        self.started = 0
        """Hosts started since the scheduler started (each is a new worker process)."""

    def take(self, node: str) -> Host:
        """An idle host on ``node``, or a new one started there."""
        waiting = self.idle.get(node)
        if waiting:
            return waiting.pop()
        name = f"{HOST_PREFIX}{uuid.uuid4().hex[:16]}"
        handle = TaskActor.options(  # type: ignore[attr-defined]
            name=name, namespace=NAMESPACE, lifetime="detached", scheduling_strategy=on_node(node)).remote()
        self.started += 1
        return Host(name, node, handle)

    def give_back(self, host: Host) -> None:
        """``host``'s attempt ended normally: it takes the next attempt on its node."""
        self.idle.setdefault(host.node, []).append(host)

    @staticmethod
    def kill(host: Host) -> None:
        """End the host's process (its attempt with it); a dead host is never given back."""
        with contextlib.suppress(Exception):  # already dead, or its node gone: nothing left to end
            ray.kill(host.handle)

    @staticmethod
    def attach(name: str, node: str) -> Host | None:
        """The running host called ``name`` (a restarted scheduler finding its attempts), or None."""
        try:
            return Host(name, node, ray.get_actor(name, namespace=NAMESPACE))
        except ValueError:
            return None

    def trim(self, queued: int, nodes: Collection[str]) -> None:
        """Kill idle hosts nothing will use: all of them when no task is queued, else those on nodes
        that may no longer get tasks (gone, or refused for their versions)."""
        for node in list(self.idle):
            if queued == 0 or node not in nodes:
                for host in self.idle.pop(node):
                    self.kill(host)

    def forget_others(self, keep: Collection[str]) -> None:
        """Kill every task host whose name is not in ``keep`` (start-up: the attempts it ran are over
        or were never started; an idle one left by the previous scheduler is not known to be idle)."""
        try:
            named = ray.util.list_named_actors(all_namespaces=True)
        except Exception:  # best effort: the host of an attempt nobody tracks only wastes memory
            log.exception("could not list the task hosts")
            return
        for entry in named:
            name = entry["name"]
            if entry["namespace"] == NAMESPACE and name.startswith(HOST_PREFIX) and name not in keep:
                host = self.attach(name, "")
                if host is not None:
                    self.kill(host)
