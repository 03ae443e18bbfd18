say "main $1"
