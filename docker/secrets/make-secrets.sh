#!/bin/sh
# Random secrets for docker/compose.yaml, made once: ./secrets/make-secrets.sh (from docker/).
# The files are readable by the containers' users (their uids differ from yours); the
# directory is yours only, so nobody else on the host can read them.
set -eu
cd "$(dirname "$0")"
chmod 0700 .
for name in turn_secret metrics_token grafana_admin_password; do
  if [ ! -s "$name" ]; then
    (umask 0222; openssl rand -base64 33 | tr -d '\n' > "$name")
    chmod 0444 "$name"
  fi
done
if [ ! -f ../.env ]; then
  (umask 0077; printf 'REDIS_PASSWORD=%s\n' "$(openssl rand -hex 24)" > ../.env)
fi
echo "secrets in $(pwd); REDIS_PASSWORD in $(cd .. && pwd)/.env"
