# logging
log() { echo "[log] $*"; }
