"""Everything that runs ONE task on ONE node.

This package imports nothing from ``cluster`` and nothing from Ray: a task runner can be driven by the
Ray actor in ``cluster.task_actor`` or directly (the tests drive it in-process).
"""
