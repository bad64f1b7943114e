#!/usr/bin/env bash
# Development TLS for the PTT server, with nothing but openssl:
#
#   make-dev-cert.sh OUT_DIR [EXTRA_NAME_OR_IP ...]
#
# creates in OUT_DIR, if missing, a local certificate authority (ca.key, ca.crt; 10 years) and
# a server certificate signed by it (server.key, server.crt; 1 year) valid for localhost,
# 127.0.0.1, ::1, this machine's host name (and NAME.local for mDNS) and every LAN IPv4/IPv6
# address it has, plus any extra names or addresses given. Phones and browsers on the same
# network trust the server once ca.crt is installed on them (see certs/README.md).
#
# Why a CA rather than one self-signed certificate: browsers need a trust anchor to allow
# microphone access (getUserMedia needs a secure context), and a CA installed once keeps
# working when the server certificate is renewed or reissued for a new address.
#
# Idempotent: run it again and nothing changes, unless the server certificate is missing, ends
# within 30 days, does not match its key, or does not cover one of the wanted names/addresses
# (e.g. the machine got a new DHCP address); then only the server certificate is reissued,
# by the same CA. A server certificate not issued by OUT_DIR's CA (one you put there yourself)
# is never touched.
set -euo pipefail

if [[ $# -lt 1 || $1 == -h || $1 == --help ]]; then
    echo "usage: $0 OUT_DIR [EXTRA_NAME_OR_IP ...]" >&2
    exit 2
fi
out=$1
shift
command -v openssl >/dev/null || { echo "make-dev-cert: openssl is required" >&2; exit 1; }

umask 077 # private keys are created readable by their owner only
mkdir -p "$out"
ca_key=$out/ca.key ca_crt=$out/ca.crt
srv_key=$out/server.key srv_crt=$out/server.crt

# -- the names and addresses the server certificate must cover --------------------------------
host=$(hostname 2>/dev/null || uname -n)
fqdn=$(hostname -f 2>/dev/null || true)

is_ipv4() { [[ $1 =~ ^([0-9]{1,3}\.){3}[0-9]{1,3}$ ]]; }
is_ipv6() { [[ $1 == *:* && $1 =~ ^[0-9A-Fa-f:.]+$ ]]; }
is_dns() {
    [[ ${#1} -le 253 && $1 =~ ^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$ ]]
}

lan_addresses() {
    # hostname -I lists every configured address except loopback and IPv6 link-local (whose
    # zone index a certificate cannot name); `ip` is the fallback, ifconfig the last resort.
    { hostname -I 2>/dev/null || true; } | tr ' ' '\n'
    if command -v ip >/dev/null; then
        ip -o addr show scope global 2>/dev/null | awk '{print $4}' | cut -d/ -f1
    elif command -v ifconfig >/dev/null; then
        ifconfig 2>/dev/null | awk '$1 == "inet" || $1 == "inet6" {print $2}' | cut -d% -f1
    fi
}

lower() { printf '%s' "$1" | tr '[:upper:]' '[:lower:]'; }
ips=(127.0.0.1 ::1)
dns=(localhost)
# (Plain arrays and string matching: this also runs under macOS's old bash 3.2.)
add_ip() {
    local a
    a=$(lower "$1")
    case " ${ips[*]} " in *" $a "*) ;; *) ips+=("$a") ;; esac
}
add_dns() {
    local d
    d=$(lower "$1")
    case " ${dns[*]} " in *" $d "*) ;; *) dns+=("$d") ;; esac
}
while read -r a; do
    case $(lower "$a") in "" | 127.* | ::1 | fe80:*) continue ;; esac
    if is_ipv4 "$a" || is_ipv6 "$a"; then add_ip "$a"; fi
done < <(lan_addresses)
for name in "$host" "$fqdn"; do
    if [[ -n $name ]] && is_dns "$name"; then
        add_dns "$name"
        [[ $name != *.* ]] && add_dns "$name.local"
    fi
done
for extra in "$@"; do
    if is_ipv4 "$extra" || is_ipv6 "$extra"; then
        add_ip "$extra"
    elif is_dns "$extra"; then
        add_dns "$extra"
    else
        echo "make-dev-cert: ignoring '$extra' (neither a host name nor an IP address)" >&2
    fi
done

# -- a certificate someone else issued is left alone ------------------------------------------
if [[ -s $srv_crt && -s $srv_key ]]; then
    if [[ ! -s $ca_crt ]] || ! openssl verify -no_check_time -CAfile "$ca_crt" "$srv_crt" \
        >/dev/null 2>&1; then
        echo "make-dev-cert: $srv_crt was not issued by $ca_crt; leaving it alone" >&2
        exit 0
    fi
fi

tmp=$(mktemp -d "$out/.make-dev-cert.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# One config file for both certificates, so no system openssl.cnf defaults leak in (and the
# same script works with OpenSSL 1.1.1 and 3.x).
{
    echo "[req]"
    echo "distinguished_name = dn"
    echo "prompt = no"
    echo "[dn]"
    echo "CN = $host"
    echo "[v3_ca]"
    echo "basicConstraints = critical, CA:TRUE, pathlen:0"
    echo "keyUsage = critical, keyCertSign, cRLSign"
    echo "subjectKeyIdentifier = hash"
    echo "[v3_server]"
    echo "basicConstraints = critical, CA:FALSE"
    echo "keyUsage = critical, digitalSignature"
    echo "extendedKeyUsage = serverAuth"
    echo "subjectKeyIdentifier = hash"
    echo "authorityKeyIdentifier = keyid:always"
    echo "subjectAltName = @alt"
    echo "[alt]"
    i=0
    for d in "${dns[@]}"; do i=$((i + 1)); echo "DNS.$i = $d"; done
    i=0
    for a in "${ips[@]}"; do i=$((i + 1)); echo "IP.$i = $a"; done
} >"$tmp/openssl.cnf"

new_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
serial() { echo "0x$(openssl rand -hex 16)"; }

# -- the CA -------------------------------------------------------------------------------------
if [[ ! -s $ca_key || ! -s $ca_crt ]]; then
    new_key "$tmp/ca.key"
    openssl req -x509 -new -key "$tmp/ca.key" -sha256 -days 3650 -set_serial "$(serial)" \
        -config "$tmp/openssl.cnf" -extensions v3_ca \
        -subj "/O=PTT development/CN=PTT development CA ($host)" -out "$tmp/ca.crt"
    chmod 644 "$tmp/ca.crt"
    mv -f "$tmp/ca.key" "$ca_key"
    mv -f "$tmp/ca.crt" "$ca_crt"
    rm -f "$srv_crt" # issued by a CA that is gone
    echo "make-dev-cert: created CA $ca_crt (install it on phones and browsers)" >&2
fi

# -- the server certificate ---------------------------------------------------------------------
reason=""
if [[ ! -s $srv_key || ! -s $srv_crt ]]; then
    reason="none yet"
elif ! openssl x509 -in "$srv_crt" -noout -checkend $((30 * 86400)) >/dev/null; then
    reason="expires within 30 days"
elif [[ $(openssl x509 -in "$srv_crt" -noout -pubkey) != $(openssl pkey -in "$srv_key" -pubout) ]]
then
    reason="does not match its key"
else
    for a in "${ips[@]}"; do
        if ! openssl x509 -in "$srv_crt" -noout -checkip "$a" | grep -q "does match"; then
            reason="does not cover $a"
            break
        fi
    done
    if [[ -z $reason ]]; then
        for d in "${dns[@]}"; do
            if ! openssl x509 -in "$srv_crt" -noout -checkhost "$d" | grep -q "does match"; then
                reason="does not cover $d"
                break
            fi
        done
    fi
fi

if [[ -n $reason ]]; then
    [[ -s $srv_key ]] && cp -p "$srv_key" "$tmp/server.key" || new_key "$tmp/server.key"
    openssl req -new -key "$tmp/server.key" -sha256 -config "$tmp/openssl.cnf" \
        -out "$tmp/server.csr"
    openssl x509 -req -in "$tmp/server.csr" -CA "$ca_crt" -CAkey "$ca_key" -sha256 \
        -set_serial "$(serial)" -days 365 -extfile "$tmp/openssl.cnf" -extensions v3_server \
        -out "$tmp/server.crt" 2>/dev/null
    chmod 644 "$tmp/server.crt"
    mv -f "$tmp/server.key" "$srv_key"
    mv -f "$tmp/server.crt" "$srv_crt"
    echo "make-dev-cert: issued $srv_crt ($reason) for: ${dns[*]} ${ips[*]}" >&2
fi
