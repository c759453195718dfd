"""Where a task runs and how its life goes: the Ray-free half of the scheduler.

* ``states``   — the task lifecycle: one table of allowed transitions, one ``transition()``;
* ``endings``  — why an attempt ended → the task's next state and whether to retry;
* ``types``    — the pydantic types the policy reads (``Snapshot``) and answers (``Decisions``);
* ``snapshot`` — builds a ``Snapshot`` from store rows, Ray's node table and node inventories;
* ``policy``   — ``decide(snapshot) -> Decisions``: pure, no Ray, no I/O, no clock;
* ``cycle`` / ``preemption`` — the working state of one ``decide()`` and its victim search.

``cluster/scheduler.py`` (the Ray actor) gathers, calls these, applies and journals.
"""
