#!/bin/sh
# toy package manager: "downloads" into /var/cache/pkg, installs into /usr/local
set -e
[ "$1" = install ] || exit 2
shift
mkdir -p /var/lib/pkg/db /usr/local/lib /usr/local/share/licenses
for p in "$@"; do
  if [ -f "/var/cache/pkg/$p.pkg" ]; then
    echo "$p: cache hit" >> /var/lib/pkg/log
  else
    cp "/srv/repo/$p.pkg" "/var/cache/pkg/$p.pkg"
    echo "$p: downloaded" >> /var/lib/pkg/log
  fi
  name=$(sed -n 's/^lib=//p' "/var/cache/pkg/$p.pkg")
  echo "$p" > "/usr/local/lib/$name"
  sed -n 's/^license=//p' "/var/cache/pkg/$p.pkg" > "/usr/local/share/licenses/$p"
  touch "/var/lib/pkg/db/$p"
done
