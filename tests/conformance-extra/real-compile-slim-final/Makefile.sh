#!/bin/sh
set -e
version="$1"
mkdir -p dist
{
  echo '#!/bin/sh'
  sed -e "s/@VERSION@/${version}/g" -e 's/@NAME@/demo-app/g' src/main.sh.in
  for m in src/modules/*.sh; do
    echo "# module: $(basename "$m" .sh)"
    grep -v '^#' "$m"
  done
} > dist/app
wc -l dist/app | awk '{print $1}' > dist/lines
