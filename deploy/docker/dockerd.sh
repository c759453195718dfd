#!/usr/bin/env bash
# Hearth's own dockerd (no systemd needed): installs docker.io with apt if missing, starts dockerd
# with its own data root, exec root, pidfile, socket and bridge, and builds the base image.
#   deploy/docker/dockerd.sh start        # prints {"socket": …, "docker_host": "unix://…", …}
#   deploy/docker/dockerd.sh base-image   # start + hearth/debian:bookworm (debootstrap, cached)
#   deploy/docker/dockerd.sh models-image # start + base + hearth/llamacpp-cpu (the CPU test engine)
#   deploy/docker/dockerd.sh stop|status
# HEARTH_DOCKER_ROOT picks the engine root (default ~/.cache/hearth/docker).
set -euo pipefail
cd "$(dirname "$0")/../.."
case "${1:-start}" in
  models-image) python3 -m cluster.cli docker base-image >/dev/null && python3 -m cluster.cli model build-image ;;
  *) exec python3 -m cluster.cli docker "${1:-start}" ;;
esac
