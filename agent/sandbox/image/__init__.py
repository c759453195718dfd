"""The guest image of the qemu sandbox backend, built from Debian packages only.

``build_guest_image()`` makes, from the machine's configured Debian mirror (whatever apt uses):

* ``vmlinux``: the uncompressed kernel ELF out of Debian's ``linux-image-*-amd64`` package. QEMU
  boots it through its PVH note; under TCG that saves the ~5 s the in-guest XZ decompression of
  the bzImage costs (see shared/research/microvm.md).
* ``initramfs.img``: a gzip'd newc cpio holding a static busybox and the virtio/ext4 modules; its
  ``/init`` loads them and switch_roots into the root disk.
* ``base.qcow2``: an ext4 root filesystem made by ``debootstrap --variant=minbase`` with the
  packages of ``deploy/guest-image/recipe.toml`` (git, python3, make, gcc, qemu-guest-agent…)
  and ``/usr/local/sbin/hearth-exec`` (deploy/guest-image/hearth-exec.c, compiled static in the
  chroot): PID 1 (mounts, task cgroup limits, qemu-ga on virtio-serial) and the exec/sync helper.

The result is cached under ``platformdirs.user_data_dir("hearth")/images/<recipe-hash>/``; the
hash covers the recipe file, the helper's C source, the initramfs script (``BUILD_VERSION``) and
the resolved kernel package version, so an unchanged recipe is never rebuilt; the two newest images
are kept, older ones are deleted after a build. Run it as ``hearth image build``.

Modules: ``cache`` (ImageInfo, the cached images), ``initramfs``, ``build``.
"""

from agent.sandbox.image.build import apt_mirror, build_guest_image, ensure_host_tools, resolve_kernel
from agent.sandbox.image.cache import ImageBuildError, ImageInfo, find_guest_image, images_dir

__all__ = ["ImageBuildError", "ImageInfo", "apt_mirror", "build_guest_image", "ensure_host_tools",
           "find_guest_image", "images_dir", "resolve_kernel"]
