#!/usr/bin/env bash
# Log in to an EFS server with nothing but curl, OpenSSL 3 and coreutils (docs/protocol.md).
# Prints the token on stdout; everything else goes to stderr.
#
#   EFS_URL    server base URL, e.g. https://127.0.0.1:8443            (required)
#   EFS_USER   user name                                               (required)
#   EFS_KEY    the user's Ed25519 private key, PEM                     (required)
#              (openssl genpkey -algorithm ed25519 -out key.pem)
#   EFS_FS     filesystem to log in to; needed when the user has several (optional)
#   EFS_SERVER_ID  the server identity you expect ("Server identity: efs-…" at start-up);
#              when set, a server announcing another identity is refused (optional)
#   CURL_OPTS  extra curl options, split on spaces, e.g. "--cacert cert.pem" (optional)
#
# Exit status: 0 with the token printed; 1 on a refusal or a malformed answer (the server's
# JSON error is shown on stderr); 2 on a usage error.
set -euo pipefail

usage() { echo "login-curl-openssl.sh: $*" >&2; exit 2; }
[ -n "${EFS_URL:-}" ] || usage "set EFS_URL, e.g. https://127.0.0.1:8443"
[ -n "${EFS_USER:-}" ] || usage "set EFS_USER to the user name"
[ -n "${EFS_KEY:-}" ] || usage "set EFS_KEY to the user's PEM Ed25519 private key"
[ -r "$EFS_KEY" ] || usage "cannot read EFS_KEY=$EFS_KEY"
# OpenSSL reads PEM (PKCS#8) Ed25519 keys, not OpenSSH's format, and ssh-keygen does not
# convert an Ed25519 key to PEM (`-m PKCS8` leaves it in OpenSSH's format).
if grep -q 'BEGIN OPENSSH PRIVATE KEY' "$EFS_KEY"; then
    usage "EFS_KEY=$EFS_KEY is an OpenSSH key, which openssl cannot read (and ssh-keygen does not convert Ed25519 keys to PEM).
  With this key, take the token from efs, which reads OpenSSH keys and ssh-agent: TOKEN=\$(efs token NAME), NAME being a remote added with efs remote add.
  Or make a PEM key, openssl genpkey -algorithm ed25519 -out key.pem, and have the operator register its public half (openssl pkey -in key.pem -pubout > pub.pem): efsctl create-user USER --fs FS --pubkey pub.pem.
  (efsctl create-user without --pubkey writes USER_ed25519.pem itself: use that one.)"
fi
EFS_FS="${EFS_FS:-}"
# User and filesystem names are put into JSON as they are: keep them to safe characters.
printf '%s' "$EFS_USER" | grep -Eqx '[A-Za-z0-9._-]{1,64}' \
    || usage "EFS_USER must be 1 to 64 characters of A-Z a-z 0-9 . _ -"
if [ -n "$EFS_FS" ]; then
    printf '%s' "$EFS_FS" | grep -Eqx '[A-Za-z0-9._-]{1,255}' \
        || usage "EFS_FS must be characters of A-Z a-z 0-9 . _ -"
fi
read -r -a curl_opts <<< "${CURL_OPTS:-}"
url="${EFS_URL%/}"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# base64url without padding, as the protocol writes every binary value.
b64url() { base64 -w0 | tr '+/' '-_' | tr -d '='; }

# The value of a string field of a flat JSON object (EFS values never contain quotes).
json_str() { sed -n 's/.*"'"$1"'"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p'; }

# POST a JSON body; print the answer, or show the error and fail.
post() {
    local path="$1" body="$2" out status
    out="$tmp/answer.json"
    local rc=0
    status="$(curl -sS "${curl_opts[@]}" -o "$out" -w '%{http_code}' \
        -H 'Content-Type: application/json' --data-binary "$body" "$url$path")" || rc=$?
    case "$rc" in
        0) ;;
        60|83|90|91)
            echo "login-curl-openssl.sh: curl could not verify the server's certificate (curl exit $rc, above): for a self-signed one set CURL_OPTS=\"--cacert DATA/system/tls-cert.pem\"" >&2
            exit 1 ;;
        58|77)
            echo "login-curl-openssl.sh: curl could not use a certificate or key file of CURL_OPTS (curl exit $rc, above)" >&2
            exit 1 ;;
        35|56)
            echo "login-curl-openssl.sh: the TLS connection to $url failed (curl exit $rc, above); a server started with --client-ca needs a client certificate: CURL_OPTS=\"--cert C.pem --key K.pem ...\"" >&2
            exit 1 ;;
        *)
            echo "login-curl-openssl.sh: cannot reach $url$path (curl exit $rc, above)" >&2
            exit 1 ;;
    esac
    if [ "$status" != 200 ]; then
        echo "login-curl-openssl.sh: $path answered HTTP $status: $(cat "$out")" >&2
        exit 1
    fi
    cat "$out"
}

# 1. Challenge.
challenge="$(post /_efs/auth/challenge "{\"user\":\"$EFS_USER\"}")"
nonce="$(printf '%s' "$challenge" | json_str nonce)"
server="$(printf '%s' "$challenge" | json_str server)"
[ -n "$nonce" ] && [ -n "$server" ] \
    || { echo "login-curl-openssl.sh: unexpected challenge: $challenge" >&2; exit 1; }
if [ -n "${EFS_SERVER_ID:-}" ] && [ "$server" != "$EFS_SERVER_ID" ]; then
    echo "login-curl-openssl.sh: the server says it is $server, expected $EFS_SERVER_ID" >&2
    exit 1
fi

# 2. Sign "efs-auth-v1" LF server LF user LF nonce (no trailing newline), raw Ed25519.
printf 'efs-auth-v1\n%s\n%s\n%s' "$server" "$EFS_USER" "$nonce" > "$tmp/msg.bin"
openssl pkeyutl -sign -inkey "$EFS_KEY" -rawin -in "$tmp/msg.bin" -out "$tmp/sig.bin" 2> "$tmp/openssl.err" \
    || { echo "login-curl-openssl.sh: openssl could not sign with EFS_KEY=$EFS_KEY (an Ed25519 private key in PEM is needed): $(head -c 300 "$tmp/openssl.err")" >&2; exit 1; }
signature="$(b64url < "$tmp/sig.bin")"

# 3. Trade the signature for a token.
body="{\"user\":\"$EFS_USER\",\"nonce\":\"$nonce\",\"signature\":\"$signature\""
[ -z "$EFS_FS" ] || body="$body,\"fs\":\"$EFS_FS\""
answer="$(post /_efs/auth/token "$body}")"
token="$(printf '%s' "$answer" | json_str token)"
[ -n "$token" ] || { echo "login-curl-openssl.sh: unexpected answer: $answer" >&2; exit 1; }
printf '%s\n' "$token"
