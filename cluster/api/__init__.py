"""The FastAPI sidecar: thin routes over the scheduler actor and a read-only view of the store.

Every route needs a bearer token (the OpenAPI document stays public). Two tokens, two roles:

* the **admin** token (``<state_dir>/token``): every right;
* the **plugin** token (``<state_dir>/plugin-token``, 0600, made on first start), which the
  OpenClaw plugin uses: it may ``read``, ``submit``, ``answer`` and ``decide``, never ``cancel``,
  ``restart``, change ``priority`` or see or touch ``nodes`` (403 naming the missing right). A
  plugin's decision must come from one of the project's ``approvers`` (channel user ids) when
  hearth.toml lists any.

A submit naming a model by URL (``openai:<url>#<model>``) needs the ``endpoint`` right, which only
the admin token holds (``auth.require_endpoint_right`` says why); catalogue models need only ``submit``.

Writes go to the scheduler (the store's only writer of tasks and events); reads (task lists, event
streams) go straight to SQLite, read-only. The event stream is server-sent events, resumable with
``Last-Event-ID`` (the per-task event number). With a gateway configured
(``<state_dir>/openclaw.json`` + ``gateway-token``), the sidecar also runs the chat delivery loop
(cluster/openclaw.py), the one writer of the outbox's delivery columns.

Decisions and answers are idempotent per checkpoint/question (``checkpoint``/``question`` = the
event's seq, as the chat buttons and tags carry it): repeating the same decision for a checkpoint
that was already decided that way answers 200 with ``"duplicate": true`` and acts no more; a
different decision, or one for a task that no longer waits, is 409 with the task's state.

Layout (routers over services, dstack's shape): ``app`` (``create_app``, the router list, errors → HTTP by
type), ``auth`` (tokens, rights), ``deps`` (the store and the scheduler, as dependencies), ``schemas``
(request bodies), ``routes/*`` (about ten lines a route), ``services/*`` (what routes call). The
scheduler is reached through ``cluster/scheduler_client.py``. Run it with ``python -m cluster.api``
(``hearth up`` does).
"""


from cluster.api.app import create_app
from cluster.api.auth import PLUGIN_TOKEN_FILE

__all__ = ["PLUGIN_TOKEN_FILE", "create_app"]
