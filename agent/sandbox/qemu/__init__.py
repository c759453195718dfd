"""QEMU micro-VM sandbox: one VM per sandbox, commands through the QEMU guest agent.

Modules: ``machine`` (the QEMU process, its command line, stale run dirs), ``guest_agent`` (QMP
and qemu-ga channels), ``helper`` (the guest exec helper's output), ``sync`` (the workspace sync
codec), ``sandbox`` (``QemuSandbox``).

* Boot once per sandbox (per attempt), never per step. Real KVM (``-M microvm -enable-kvm``) is
  used only when ``kvm_intel`` or ``kvm_amd`` is loaded; a ``/dev/kvm`` from ``kvm_pvm`` (nested,
  emulates stock kernels) does not count. Otherwise TCG with ``-M pc`` (``-M microvm`` hangs under
  TCG). The choice is in ``self.accel`` and logged.
* The disk is a qcow2 overlay over the cached base image (``hearth image build``), so ``savevm``
  / ``loadvm`` give whole-machine snapshots (RAM, processes and disk).
* Commands go through qemu-ga over virtio-serial: one ``guest-exec`` (with capture) of the
  guest's static helper ``hearth-exec run`` (deploy/guest-image/hearth-exec.c) plus
  ``guest-exec-status`` polls. The helper runs ``bash -c`` in the ``/sys/fs/cgroup/hearth``
  cgroup (memory, pids and cpu caps) with stdout/stderr in files under ``/run/hearth``, which the
  host tails with ``guest-file-read`` while it runs (that is the streaming: qemu-ga's own capture
  only hands output over once the process has exited). A timeout kills the cgroup
  (``cgroup.kill``), not the VM.
* The workspace is synced, not shared (docs/sandboxes.md has the 9p measurements): before each
  command the host's changes since the last sync go in as sync records through the agent's file
  API (and every ~0.3 s while a command runs); after it the helper reports what the command
  changed (ctime newer than its stamp) in the same captured output, so when ``exec`` returns the
  host workspace matches the guest's ``/workspace``. ``read_file`` / ``write_file`` work on the
  host copy with ``resolve_inside``.
* ``cleanup_stale`` (run at every construction) kills QEMUs and deletes overlays left by dead
  owners; a VM that dies mid-command raises ``SandboxCrashed`` with the last output.
"""

from agent.sandbox.qemu.machine import QEMU_BIN, cleanup_stale, default_state_dir, detect_accel
from agent.sandbox.qemu.sandbox import QemuSandbox
from agent.sandbox.qemu.sync import apply_guest_changes, decode_records, encode_records, scan_workspace

__all__ = ["QEMU_BIN", "QemuSandbox", "apply_guest_changes", "cleanup_stale", "decode_records",
           "default_state_dir", "detect_accel", "encode_records", "scan_workspace"]
