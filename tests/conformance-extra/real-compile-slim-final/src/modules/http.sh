# http
serve() { echo "serving on $1"; }
