# Shell helpers shared by scripts/test.sh, scripts/quickstart.sh and bench/lib.sh (sourced).

# Prints the directory holding PostgreSQL's server binaries: pg_config --bindir, else the newest
# /usr/lib/postgresql/<version>/bin. It must hold initdb and every tool named as an argument.
pg_bindir() {
    local dir tool ok
    for dir in "$(pg_config --bindir 2>/dev/null)" $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5 -n -r); do
        [ -n "$dir" ] && [ -x "$dir/initdb" ] || continue
        ok=1
        for tool in "$@"; do
            [ -x "$dir/$tool" ] || ok=0
        done
        if [ "$ok" = 1 ]; then
            echo "$dir"
            return 0
        fi
    done
    return 1
}
