#!/bin/sh
# Stand-in for the official envoyproxy/envoy image's entrypoint, with the same behaviour: arguments
# that start with '-' are Envoy's, $loglevel adds --log-level, and a container started as root runs
# Envoy as the unprivileged `envoy` user unless ENVOY_UID=0 (setpriv here, su-exec there).
set -e

if [ "${1#-}" != "$1" ]; then
    set -- envoy "$@"
fi

if [ "$1" = envoy ] && [ -n "${loglevel:-}" ]; then
    set -- "$@" --log-level "$loglevel"
fi

if [ "${ENVOY_UID:-}" != 0 ] && [ "$(id -u)" = 0 ]; then
    uid="${ENVOY_UID:-$(id -u envoy)}"
    gid="${ENVOY_GID:-$(id -g envoy)}"
    # So that the envoy user can write to the container's log.
    chown "$uid:$gid" /dev/stdout /dev/stderr 2>/dev/null || true
    exec setpriv --reuid="$uid" --regid="$gid" --clear-groups "$@"
fi
exec "$@"
