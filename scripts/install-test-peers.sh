#!/usr/bin/env bash
# Installs the real SMTP peers and servers the tests start (Debian packages).
#
# It checks capabilities, not just commands: each peer the tests use AND each thing a test needs from
# it (swaks that can do STARTTLS, slapd with its schema files, promtool, smtp-sink and smtp-source…).
# Whatever is missing is installed; running it again when everything works does nothing (no apt-get).
# After installing, every capability is checked again: one still missing is a failure naming the
# Debian package, so CI fails loudly instead of skipping a test.
#
# Needs root (or sudo). `--check` only reports (exit 1 when something is missing).
set -euo pipefail

# capability | Debian package(s) that provide it | shell test
CAPS=(
  "smtp-sink (accept-everything backend)|postfix|test -x /usr/sbin/smtp-sink"
  "smtp-source (load generator)|postfix|test -x /usr/sbin/smtp-source"
  "a private Postfix instance (postfix, postconf, postqueue)|postfix|test -x /usr/sbin/postfix && test -x /usr/sbin/postconf && test -x /usr/sbin/postqueue"
  "swaks (SMTP client)|swaks|command -v swaks"
  "swaks with TLS (--tls; Perl's Net::SSLeay and IO::Socket::SSL)|swaks libnet-ssleay-perl libio-socket-ssl-perl|swaks --support 2>/dev/null | grep -qx '=== TLS supported'"
  "swaks with AUTH PLAIN/LOGIN|swaks|swaks --support 2>/dev/null | grep -qx '=== Basic AUTH supported'"
  "redis-server|redis-server|command -v redis-server"
  "haproxy|haproxy|command -v haproxy || test -x /usr/sbin/haproxy"
  "slapd|slapd|test -x /usr/sbin/slapd"
  "slapd schemas (core, cosine, inetorgperson)|slapd|test -f /etc/ldap/schema/core.schema && test -f /etc/ldap/schema/cosine.schema && test -f /etc/ldap/schema/inetorgperson.schema"
  "slapd back_mdb module|slapd|ls /usr/lib/ldap/back_mdb* >/dev/null 2>&1"
  "ldapadd (ldap-utils)|ldap-utils|test -x /usr/bin/ldapadd"
  "promtool|prometheus|command -v promtool"
  "prometheus (a real scraper)|prometheus|command -v prometheus"
  "openssl (s_client, certificates)|openssl|command -v openssl"
  "docker-compose 1.29 (config checks of deploy/compose)|docker-compose|docker-compose version >/dev/null 2>&1"
  "rbldnsd (a real DNSBL server for the DNS list tests)|rbldnsd|test -x /usr/sbin/rbldnsd && id rbldns"
  "postgrey (a real Postfix policy service: greylisting)|postgrey|test -x /usr/sbin/postgrey && id postgrey && perl -MBerkeleyDB -MNet::Server -e1"
  "chromium that renders a page headless (the web console's browser tests)|chromium|d=\$(mktemp -d) && timeout 60 chromium --headless --no-sandbox --disable-gpu --user-data-dir=\"\$d\" --dump-dom about:blank 2>/dev/null | grep -q '<html'; r=\$?; rm -rf \"\$d\"; exit \$r"
)

check_only=0
[ "${1:-}" = "--check" ] && check_only=1

missing_pkgs=()
missing_caps=()
probe() {
  missing_pkgs=()
  missing_caps=()
  local entry name pkgs test
  for entry in "${CAPS[@]}"; do
    IFS='|' read -r name pkgs test <<<"$entry"
    if ! bash -c "$test" >/dev/null 2>&1; then
      missing_caps+=("$name [Debian: $pkgs]")
      for p in $pkgs; do
        case " ${missing_pkgs[*]-} " in *" $p "*) ;; *) missing_pkgs+=("$p") ;; esac
      done
    fi
  done
}

probe
if [ ${#missing_caps[@]} -eq 0 ]; then
  echo "test peers: all present"
  exit 0
fi
printf 'test peers: missing %s\n' "${missing_caps[@]}"
if [ "$check_only" -eq 1 ]; then exit 1; fi

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "test peers: installing ${missing_pkgs[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# --no-install-recommends keeps the machine small; every capability a test needs is listed above
# and checked again below, so nothing relies on a recommended package being pulled in by chance.
# --reinstall repairs a package whose files were removed by hand.
$SUDO apt-get install -y -qq --no-install-recommends "${missing_pkgs[@]}" >/dev/null
probe
if [ ${#missing_caps[@]} -gt 0 ]; then
  $SUDO apt-get install -y -qq --no-install-recommends --reinstall "${missing_pkgs[@]}" >/dev/null
  probe
fi
# Installing must not leave daemons on the machine's ports; tests start private instances.
for svc in postfix redis-server slapd haproxy prometheus rbldnsd postgrey; do
  $SUDO systemctl stop "$svc" >/dev/null 2>&1 || $SUDO service "$svc" stop >/dev/null 2>&1 || true
done
if [ ${#missing_caps[@]} -gt 0 ]; then
  printf 'test peers: STILL MISSING after install: %s\n' "${missing_caps[@]}" >&2
  exit 1
fi
echo "test peers: installed"
