#!/bin/sh
set -e
for f in /docker-entrypoint.d/*; do case "$f" in *.sh) sh "$f" ;; *.envsh) . "$f" ;; esac; done
exec "$@"
