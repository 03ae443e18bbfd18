say() { echo "lib: $*"; }
