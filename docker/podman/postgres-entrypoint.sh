#!/bin/sh
# The official postgres image's first start, for postgres.Containerfile: on an empty PGDATA,
# make the cluster with POSTGRES_USER as its superuser and POSTGRES_PASSWORD as its password,
# then POSTGRES_DB; accept password logins from other containers; then run the command.
set -eu
: "${POSTGRES_PASSWORD:?is not set: give the postgres service POSTGRES_PASSWORD}"
user=${POSTGRES_USER:-postgres}
db=${POSTGRES_DB:-$user}
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    pwfile=$(mktemp)
    printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
    initdb -D "$PGDATA" -U "$user" --pwfile="$pwfile" -E UTF8 --locale=C.UTF-8 \
        --auth-local=trust --auth-host=scram-sha-256 > /dev/null
    rm -f "$pwfile"
    echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
    echo "listen_addresses = '*'" >> "$PGDATA/postgresql.conf"
    if [ "$db" != postgres ]; then
        # Over the Unix socket only, so nothing connects before the database exists.
        pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start > /dev/null
        createdb -U "$user" "$db"
        pg_ctl -D "$PGDATA" -m fast -w stop > /dev/null
    fi
    echo "postgres-entrypoint: made the cluster in $PGDATA (user $user, database $db)"
fi
exec "$@"
