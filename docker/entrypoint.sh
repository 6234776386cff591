#!/bin/sh
# efs-entrypoint: starts efs-server in the EFS container image (see docs/docker.md).
#
#   (no args, or options)  efs-server --data $EFS_DATA --listen $EFS_LISTEN
#                             --key-part file:<each key-part secret> [--key-part passphrase]
#                             [--tls-cert ... --tls-key ...] <the options given>
#   efsctl ARGS...         the admin tool (EFS_DATA set; key-part secrets passed along)
#   efs ARGS...            the client
#
# Environment:
#   EFS_DATA                 data dir (default /efs)
#   EFS_LISTEN               address:port (default 0.0.0.0:8443)
#   EFS_TLS_NAME             names clients use, for the generated certificate (read by
#                            efs-server itself: comma-separated DNS names or addresses)
#   EFS_SECRETS_DIR          where Docker secrets are mounted (default /run/secrets)
#   EFS_KEY_PART_FILES       space-separated key-part files, in order (default: every
#                            $EFS_SECRETS_DIR/efs_key_part* in sorted, C-locale order)
#   EFS_PASSPHRASE           adds `--key-part passphrase` (after the file parts)
#   EFS_PASSPHRASE_FILE      file whose contents become EFS_PASSPHRASE (a Docker secret)
#   EFS_ALLOW_GENERATED_KEY  1: with no key part at all, generate one in
#                            EFS_GENERATED_KEY_FILE (default $EFS_DATA.keypart). It lives
#                            next to the data, inside the container: for trials only.
set -eu

me=efs-entrypoint
die() {
    echo "$me: $*" >&2
    exit 1
}

EFS_DATA=${EFS_DATA:-/efs}
EFS_LISTEN=${EFS_LISTEN:-0.0.0.0:8443}
export EFS_DATA EFS_LISTEN
secrets=${EFS_SECRETS_DIR:-/run/secrets}

# Which program: the server (default), or efsctl / efs.
prog=efs-server
case "${1-}" in
    efsctl | efs | efs-server)
        prog=$1
        shift
        ;;
esac

if [ "$prog" = efs ]; then
    exec efs "$@"
fi

# Does the caller already give key parts on the command line?
user_parts=0
for a in "$@"; do
    case "$a" in
        --key-part | --key-part=*) user_parts=1 ;;
    esac
done

# The passphrase secret.
if [ -n "${EFS_PASSPHRASE_FILE-}" ]; then
    [ -r "$EFS_PASSPHRASE_FILE" ] ||
        die "EFS_PASSPHRASE_FILE=$EFS_PASSPHRASE_FILE does not exist or is not readable"
    EFS_PASSPHRASE=$(cat "$EFS_PASSPHRASE_FILE")
    [ -n "$EFS_PASSPHRASE" ] || die "EFS_PASSPHRASE_FILE=$EFS_PASSPHRASE_FILE is empty"
    export EFS_PASSPHRASE
fi

# Build the options in front of the caller's arguments: append ours, then rotate the
# caller's $n arguments to the end (POSIX sh has one array: "$@").
n=$#
nparts=0
if [ "$prog" = efs-server ]; then
    set -- "$@" --data "$EFS_DATA" --listen "$EFS_LISTEN"
fi

if [ "$user_parts" = 0 ]; then
    if [ -n "${EFS_KEY_PART_FILES-}" ]; then
        set -f # the list is paths, not patterns
        for f in $EFS_KEY_PART_FILES; do
            [ -f "$f" ] && [ -r "$f" ] || die "key part file $f (named in EFS_KEY_PART_FILES) \
does not exist or is not readable. Every key part is required, in the same order at every start: \
without it the data cannot be opened."
            set -- "$@" --key-part "file:$f"
            nparts=$((nparts + 1))
        done
        set +f
    else
        # Sorted by byte value whatever the locale, so the order is the same at every start.
        # (efs_key_part10 sorts before efs_key_part2: use efs_key_part1..9, or pad: 01, 02.)
        for f in $(
            for g in "$secrets"/efs_key_part*; do
                if [ -f "$g" ]; then printf '%s\n' "${g##*/}"; fi
            done | LC_ALL=C sort
        ); do
            [ -r "$secrets/$f" ] || die "key part $secrets/$f is not readable by uid $(id -u): \
give the secret file to uid 10001 (chown 10001 FILE; chmod 400 FILE) on the host"
            set -- "$@" --key-part "file:$secrets/$f"
            nparts=$((nparts + 1))
        done
    fi

    if [ -n "${EFS_PASSPHRASE-}" ]; then
        set -- "$@" --key-part passphrase
        nparts=$((nparts + 1))
    fi

    if [ "$nparts" = 0 ] && [ "$prog" = efs-server ]; then
        genfile=${EFS_GENERATED_KEY_FILE:-$EFS_DATA.keypart}
        if [ "${EFS_ALLOW_GENERATED_KEY-}" = 1 ]; then
            if [ ! -e "$genfile" ]; then
                (umask 077 && head -c 32 /dev/urandom | base64 >"$genfile") ||
                    die "cannot write a generated key part to $genfile"
            fi
            echo "$me: WARNING: using the generated key part $genfile. It lives next to the data" \
                "(inside the container, or its volume): whoever has one has both, and if it is" \
                "lost the data can never be read. For real data, use Docker secrets (docs/docker.md)." >&2
            set -- "$@" --key-part "file:$genfile"
        elif [ ! -e "$EFS_DATA/system/keyparts.json" ]; then
            die "no key part: refusing to initialise $EFS_DATA.
Give at least one key part, from somewhere other than the data volume:
  - a Docker secret named efs_key_part1 (efs_key_part2, ...): mounted as $secrets/efs_key_part1,
    created with: head -c 32 /dev/urandom | base64 > secrets/efs_key_part1
  - or EFS_KEY_PART_FILES=\"/path/one /path/two\" (space-separated, in order)
  - or EFS_PASSPHRASE / EFS_PASSPHRASE_FILE (adds a passphrase part)
Or set EFS_ALLOW_GENERATED_KEY=1 to let a key part be generated in $genfile: it would live
next to the data (inside the container), which defeats the point of key parts; for trials only."
        fi
    fi
fi

# TLS from Docker secrets, when both are there (and not given on the command line).
if [ "$prog" = efs-server ] && [ -f "$secrets/efs_tls_cert" ] && [ -f "$secrets/efs_tls_key" ]; then
    case " $* " in
        *" --tls-cert "* | *" --tls-cert="*) ;;
        *) set -- "$@" --tls-cert "$secrets/efs_tls_cert" --tls-key "$secrets/efs_tls_key" ;;
    esac
fi

while [ "$n" -gt 0 ]; do
    set -- "$@" "$1"
    shift
    n=$((n - 1))
done

exec "$prog" "$@"
