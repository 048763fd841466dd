#!/bin/bash
# First start of the compose PostgreSQL (docker-entrypoint-initdb.d): the services' role `chat`
# (not a superuser; CREATEROLE because migration 0002 creates the read-only chat_reporting role)
# and its database. `chat-worker migrate` (service `migrate`) then applies the schema as `chat`.
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres -v pw="$CHAT_PG_PASSWORD" <<'EOSQL'
CREATE ROLE chat LOGIN CREATEROLE PASSWORD :'pw';
CREATE DATABASE chat OWNER chat;
EOSQL
