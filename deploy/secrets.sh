#!/bin/sh
# Makes deploy/secrets/: a random admin key, a PostgreSQL password and the database URL that
# carries it, each readable by its owner only. Run once, from the repository's root; it never
# overwrites a secret that exists.
set -eu
umask 077
dir="$(dirname "$0")/secrets"
mkdir -p "$dir"
random() { python3 -c 'import secrets; print(secrets.token_urlsafe(32))'; }
[ -s "$dir/admin_key" ] || random > "$dir/admin_key"
[ -s "$dir/postgres_password" ] || random > "$dir/postgres_password"
if [ ! -s "$dir/database_url" ]; then
    printf 'postgresql://secureig:%s@postgres:5432/secureig\n' "$(cat "$dir/postgres_password")" \
        > "$dir/database_url"
fi
echo "secrets in $dir; the admin key: $dir/admin_key"
