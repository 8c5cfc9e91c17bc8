#!/bin/bash
# The checks of scripts/system-test, run INSIDE the booted container (systemd
# is PID 1 there), one per call:  bash checks.sh NAME
# A check prints what it saw; its last line is the summary shown by the host.
# Exit 0 = pass. Every wait has a deadline; nothing here leaves the container.
set -uo pipefail

REPO_DIR=/srv/loomd-apt         # the signed repository, bind-mounted read-only
TEST_MODELS=/srv/loomd-models   # $LOOMD_TEST_MODELS of the host, read-only (may be absent)
SPEECH=/srv/loomd-speech        # command.wav made on the host (espeak-ng + sox), read-only
MODELS_DIR=/var/lib/loomd/models
# loomd-assist is not named: loomd recommends it, and apt installs recommends.
PACKAGES="loomd loomd-voice loomd-llm loomd-mcp loomd-homeassistant"
ALL_PACKAGES="loomd loomd-pylibs loomd-voice loomd-llm loomd-mcp loomd-assist loomd-homeassistant"
HTTP_PORT=8765                  # served on the container's own loopback
CONF=/etc/loomd/loomd.toml
STATUS_TIMEOUT=${STATUS_TIMEOUT:-20}

fail() { echo "$*"; exit 1; }
say() { echo "$*"; }

# wait_for SECONDS COMMAND...: poll every 0.2 s until COMMAND succeeds.
wait_for() {
    local deadline=$(( $(date +%s) + $1 )); shift
    until "$@" >/dev/null 2>&1; do
        [ "$(date +%s)" -lt $deadline ] || return 1
        sleep 0.2
    done
}

prop() { systemctl show -p "$1" --value loomd.service; }

# The daemon's main pid, only if it is a real process of loomd.service.
main_pid() {
    local pid
    pid=$(prop MainPID)
    case $pid in ''|*[!0-9]*) return 1 ;; esac
    [ "$pid" -gt 1 ] || return 1
    grep -q 'loomd.service' "/proc/$pid/cgroup" 2>/dev/null || return 1
    echo "$pid"
}

is_active() { [ "$(systemctl is-active loomd.service)" = active ]; }

wait_active() {
    wait_for "${1:-30}" is_active || fail "loomd.service is $(systemctl is-active loomd.service) after ${1:-30}s: $(journalctl -u loomd -n 5 -o cat --no-pager | tr '\n' '|')"
}

as_user() { local u=$1; shift; setpriv --reuid="$u" --regid="$u" --init-groups env HOME="/home/$u" "$@"; }

status_json() { loomctl --timeout 5 status --json; }

json_field() { python3 -c 'import json, sys; print(json.load(sys.stdin)["daemon"][sys.argv[1]])' "$1"; }

cursor() { journalctl --show-cursor -n 0 -q 2>/dev/null | sed -n 's/^-- cursor: //p'; }
journal_since() { journalctl -u loomd.service --after-cursor="$1" -o cat --no-pager; }

# Set daemon.device_id in the config, keeping everything else.
set_device_id() {
    python3 - "$CONF" "$1" <<'EOF'
import re, sys
path, value = sys.argv[1], sys.argv[2]
text = open(path).read()
line = f'device_id = "{value}"'
head = re.search(r"^\[daemon\][^\n]*\n", text, re.M)
new, n = re.subn(r'^#?\s*device_id\s*=.*$', line, text, count=1, flags=re.M)
if n == 0:
    new = text[: head.end()] + line + "\n" + text[head.end():] if head else text + f"\n[daemon]\n{line}\n"
open(path, "w").write(new)
EOF
}

# --- 1. apt install loomd loomd-voice loomd-llm loomd-mcp by name from the signed repository
check_install() {
    install -m 0644 "$REPO_DIR/loomd-archive-keyring.gpg" /usr/share/keyrings/
    # The container has no network but loopback: only our repository.
    rm -f /etc/apt/sources.list /etc/apt/sources.list.d/*
    cat > /etc/apt/sources.list.d/loomd.sources <<EOF
Types: deb
URIs: http://127.0.0.1:$HTTP_PORT/
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/loomd-archive-keyring.gpg
EOF
    systemd-run --quiet --unit=loomd-apt-http --property=DynamicUser=yes \
        /usr/bin/python3 -m http.server "$HTTP_PORT" --bind 127.0.0.1 --directory "$REPO_DIR" \
        || fail "could not start the repository's HTTP server"
    wait_for 10 python3 -c "import socket; socket.create_connection(('127.0.0.1', $HTTP_PORT), 1)" \
        || fail "repository HTTP server not listening on 127.0.0.1:$HTTP_PORT"
    apt-get update -q 2>&1 | tail -n 3
    # apt keeps an InRelease only once its signature checked out.
    ls /var/lib/apt/lists/127.0.0.1*_InRelease >/dev/null 2>&1 \
        || fail "apt-get update did not accept the signed InRelease"
    local t0 t1 version origin p got
    t0=$(date +%s)
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q $PACKAGES > /tmp/apt-install.log 2>&1 \
        || { tail -n 15 /tmp/apt-install.log; fail "apt-get install $PACKAGES failed"; }
    t1=$(date +%s)
    version=$(dpkg-query -W -f '${Version}' loomd) || fail "loomd not installed"
    for p in $ALL_PACKAGES; do
        got=$(dpkg-query -W -f '${db:Status-Status} ${Version}' "$p" 2>&1)
        [ "$got" = "installed $version" ] || fail "$p is '$got', want 'installed $version'"
        origin=$(apt-cache policy "$p" | grep -m1 -o "http://127.0.0.1:${HTTP_PORT}[^ ]*")
        [ -n "$origin" ] || fail "apt-cache policy $p does not show the repository"
    done
    say "installed $PACKAGES (+ loomd-pylibs, + loomd-assist recommended) $version by name from $origin (signed, InRelease) in $((t1 - t0))s; $(du -sm /usr/lib/loomd | cut -f1) MB in /usr/lib/loomd"
}

# --- 2. the service: active, enabled, READY, socket and directories -----------
check_service() {
    wait_active 30
    local enabled status f want got
    enabled=$(systemctl is-enabled loomd.service)
    [ "$enabled" = enabled ] || fail "is-enabled says $enabled"
    status=$(prop StatusText)
    [ -n "$status" ] || fail "no STATUS= from the daemon (StatusText empty)"
    [ "$(prop Type)" = notify ] || fail "Type is $(prop Type)"
    wait_for 10 test -S /run/loomd/bus.sock || fail "/run/loomd/bus.sock missing"
    got=$(stat -c '%a %U %G %F' /run/loomd/bus.sock)
    [ "$got" = "660 loomd loomd socket" ] || fail "bus.sock is '$got', want '660 loomd loomd socket'"
    for f in /var/lib/loomd /var/cache/loomd /run/loomd; do
        got=$(stat -c '%a %U %G' "$f" 2>&1)
        [ "$got" = "750 loomd loomd" ] || fail "$f is '$got', want '750 loomd loomd'"
    done
    for f in /etc/loomd:"750 root loomd" $CONF:"640 root loomd"; do
        want=${f#*:}; f=${f%%:*}
        got=$(stat -c '%a %U %G' "$f" 2>&1)
        [ "$got" = "$want" ] || fail "$f is '$got', want '$want'"
    done
    id -nG loomd | grep -qw audio || fail "user loomd is not in group audio"
    got=$(systemd-analyze verify --man=no loomd.service 2>&1)
    [ -z "$got" ] || fail "systemd-analyze verify (installed): $got"
    python3 -c 'import urllib.request; r = urllib.request.urlopen("http://127.0.0.1:9478/metrics", timeout=5); assert r.status == 200' \
        || fail "no metrics on http://127.0.0.1:9478/metrics"
    say "active+enabled, READY with STATUS=\"$status\"; bus.sock 0660 loomd:loomd; state/cache/run dirs loomd:loomd 0750; metrics on 127.0.0.1:9478"
}

# --- 3. loomctl: group members may, others are refused ----------------------------
check_loomctl() {
    getent passwd alice >/dev/null || useradd --create-home --groups loomd alice
    getent passwd bob >/dev/null || useradd --create-home bob
    local out rc payload sub_pid
    out=$(loomctl status 2>&1) || fail "loomctl status as root failed: $out"
    out=$(as_user alice loomctl status 2>&1) || fail "loomctl status as alice (group loomd) failed: $out"
    # sub in the background, pub until it has seen one event (no race on
    # when the subscription is registered), both with deadlines.
    payload="{\"n\": $RANDOM, \"who\": \"alice\"}"
    as_user alice timeout 20 loomctl sub 'systest.#' --count 1 --json > /tmp/sub.out 2>&1 &
    sub_pid=$!
    for _ in $(seq 1 50); do
        kill -0 $sub_pid 2>/dev/null || break
        as_user alice loomctl pub systest.ping "$payload" > /tmp/pub.out 2>&1 \
            || { cat /tmp/pub.out; fail "loomctl pub as alice failed"; }
        sleep 0.3
    done
    wait $sub_pid; rc=$?
    [ $rc = 0 ] || { cat /tmp/sub.out; fail "loomctl sub as alice exited $rc"; }
    grep -q '"who": *"alice"' /tmp/sub.out || { cat /tmp/sub.out; fail "sub did not print the published payload"; }
    out=$(as_user bob loomctl status 2>&1); rc=$?
    [ $rc != 0 ] || fail "loomctl status as bob (not in group loomd) succeeded: $out"
    [ "$(printf '%s\n' "$out" | wc -l)" = 1 ] || fail "refusal is not one line: $out"
    printf '%s' "$out" | grep -qi 'permission denied' || fail "refusal does not say permission denied: $out"
    printf '%s' "$out" | grep -q 'loomd' || fail "refusal does not name the group loomd: $out"
    out=$(as_user bob loomctl pub systest.ping '{}' 2>&1) && fail "loomctl pub as bob succeeded"
    # A sensitive capability (home.unlock) is refused to alice by the default install
    # (no [[acl]] rule grants it, docs/design/acl.md); root reaches it. A lock in home.d
    # makes the home offer it (read at start).
    local unlock
    mkdir -p /etc/loomd/home.d
    printf '[[devices]]\nid = "front_door"\nname = "front door"\ndomain = "lock"\ncommand_topic = "home/hall/front_door/set"\n' \
        > /etc/loomd/home.d/systest-door.toml
    systemctl restart loomd.service; wait_active 60
    wait_for 30 sh -c 'loomctl caps 2>/dev/null | grep -q home.unlock' \
        || fail "home.unlock not offered with a lock in home.d: $(loomctl caps 2>&1 | head -20 | tr '\n' '|')"
    unlock=$(as_user alice loomctl call home.unlock '{"device": "front_door"}' 2>&1) \
        && fail "alice unlocked: $unlock"
    printf '%s' "$unlock" | grep -q 'forbidden' || fail "alice's unlock not refused as forbidden: $unlock"
    out=$(loomctl call home.unlock '{"device": "front_door"}' 2>&1)
    printf '%s' "$out" | grep -q 'forbidden' && fail "root's unlock refused as forbidden: $out"
    rm -f /etc/loomd/home.d/systest-door.toml
    say "status+pub/sub work as root and alice (group loomd); bob refused (exit $rc): $(as_user bob loomctl status 2>&1); alice's home.unlock: $unlock"
}

# --- 4. the sandbox as the kernel sees it ---------------------------------------
check_hardening() {
    local pid st f v
    pid=$(main_pid) || fail "no main pid"
    st=/proc/$pid/status
    for f in CapInh CapPrm CapEff CapBnd CapAmb; do
        v=$(awk -v k="$f:" '$1 == k { print $2 }' "$st")
        [ "$v" = 0000000000000000 ] || fail "$f is $v"
    done
    v=$(awk '$1 == "NoNewPrivs:" { print $2 }' "$st"); [ "$v" = 1 ] || fail "NoNewPrivs is $v"
    v=$(awk '$1 == "Seccomp:" { print $2 }' "$st"); [ "$v" = 2 ] || fail "Seccomp is $v (2 = filter)"
    v=$(awk '$1 == "Uid:" { print $2 }' "$st"); [ "$v" = "$(id -u loomd)" ] || fail "runs as uid $v"
    # The extras run under the same sandbox: W^X stays on; loomd-voice's
    # drop-in only opens /proc's non-process files (ONNX Runtime's cpuinfo).
    [ "$(prop MemoryDenyWriteExecute)" = yes ] || fail "MemoryDenyWriteExecute is $(prop MemoryDenyWriteExecute)"
    v=$(prop DropInPaths)
    [ "$(prop ProcSubset)" = all ] || fail "ProcSubset is $(prop ProcSubset) with loomd-voice's drop-in ($v)"
    say "pid $pid: uid loomd, all capability sets 0, NoNewPrivs 1, Seccomp 2 (filter), MemoryDenyWriteExecute=yes; drop-ins: $v"
}

# --- 5. a frozen daemon is restarted by the watchdog ------------------------------
check_watchdog() {
    local dropin=/run/systemd/system/loomd.service.d/50-systest-watchdog.conf
    local pid new restarts c t0 t1
    mkdir -p "${dropin%/*}"
    printf '[Service]\nWatchdogSec=3s\n' > "$dropin"
    systemctl daemon-reload
    systemctl reset-failed loomd.service
    systemctl restart loomd.service || fail "restart with WatchdogSec=3s failed"
    wait_active 30
    [ "$(prop WatchdogUSec)" = 3s ] || fail "WatchdogUSec is $(prop WatchdogUSec)"
    sleep 4   # outlive one watchdog period while healthy: pings arrive
    pid=$(main_pid) || fail "no main pid while healthy (watchdog fired with the loop running?)"
    restarts=$(prop NRestarts)
    c=$(cursor)
    t0=$(date +%s)
    kill -STOP "$pid"
    restarted() { new=$(main_pid) && [ "$new" != "$pid" ] && is_active; }
    wait_for 45 restarted || fail "not restarted within 45s (state $(systemctl is-active loomd), pid $(prop MainPID))"
    t1=$(date +%s)
    new=$(main_pid)
    [ "$(prop NRestarts)" = $((restarts + 1)) ] || fail "NRestarts $(prop NRestarts), want $((restarts + 1))"
    # PID 1's message reaches the journal asynchronously: wait for it too.
    # grep < <(...), not a pipe: under pipefail the writer's SIGPIPE, when grep -q quits
    # at the first match, would turn a match into a failure.
    wd_logged() { grep -qi 'watchdog timeout' < <(journalctl --after-cursor="$c" --no-pager -o cat); }
    wait_for 15 wd_logged || fail "no 'Watchdog timeout' in the journal: $(journalctl --after-cursor="$c" --no-pager -o cat | grep -i -m3 -e watchdog -e 'loomd.service' | tr '\n' '|')"
    rm -f "$dropin"
    systemctl daemon-reload
    systemctl reset-failed loomd.service
    systemctl restart loomd.service
    wait_active 30
    say "SIGSTOP pid $pid under WatchdogSec=3s: watchdog timeout, restarted as pid $new after $((t1 - t0))s (NRestarts $restarts -> $((restarts + 1)))"
}

# --- 6. reload applies a change without a restart; a broken config is refused ---
check_reload() {
    local pid restarts id c before after out
    pid=$(main_pid) || fail "no main pid"
    restarts=$(prop NRestarts)
    cp "$CONF" /root/loomd.toml.orig
    id=systest-$RANDOM
    set_device_id "$id"
    before=$(status_json | json_field reloads) || fail "loomctl status --json failed"
    systemctl reload loomd.service || fail "systemctl reload failed"
    got_id() { [ "$(status_json | json_field device_id)" = "$id" ]; }
    wait_for "$STATUS_TIMEOUT" got_id || fail "device_id is $(status_json | json_field device_id), want $id after reload"
    [ "$(status_json | json_field pid)" = "$pid" ] || fail "pid changed: $(status_json | json_field pid) != $pid"
    after=$(status_json | json_field reloads)
    [ "$after" -gt "$before" ] || fail "reloads counter $before -> $after"

    c=$(cursor)
    printf '[bus]\nmax_frame_bytes = -1\n' > "$CONF"
    systemctl reload loomd.service || fail "systemctl reload (broken config) failed"
    logged() { grep -q 'reload failed' < <(journal_since "$c"); }
    wait_for 15 logged || fail "no 'reload failed' in the journal: $(journal_since "$c" | tail -n 3 | tr '\n' '|')"
    out=$(journal_since "$c" | grep -m1 'reload failed')
    sleep 1
    is_active || fail "daemon not active after a broken reload"
    [ "$(main_pid)" = "$pid" ] || fail "daemon restarted after a broken reload"
    [ "$(status_json | json_field device_id)" = "$id" ] || fail "running configuration changed by a broken reload"
    [ "$(prop NRestarts)" = "$restarts" ] || fail "NRestarts changed"

    cp /root/loomd.toml.orig "$CONF"
    systemctl reload loomd.service
    say "device_id -> $id live (pid $pid, reloads $before -> $after); broken config kept the old one: \"$out\""
}

# --- 7. stop drains within the timeout; the journal tells the story --------------
check_stop() {
    local c t0 t1 limit result journal start stop
    c=$(cursor)
    limit=$(prop TimeoutStopUSec)
    t0=$(date +%s%N)
    systemctl stop loomd.service || fail "systemctl stop failed"
    t1=$(date +%s%N)
    result=$(prop Result)
    [ "$result" = success ] || fail "Result=$result (timeout = killed at TimeoutStopSec)"
    [ "$(prop ExecMainStatus)" = 0 ] || fail "exit status $(prop ExecMainStatus)"
    [ ! -e /run/loomd ] || fail "/run/loomd left behind"
    journal=$(journalctl -u loomd.service -o cat --no-pager)
    start=$(printf '%s\n' "$journal" | grep -m1 -E 'loomd [0-9][^ ]* ready') \
        || fail "no start line 'loomd <version> ready...' in journalctl -u loomd"
    stop=$(journal_since "$c" | grep -m1 'loomd stopped') \
        || fail "no 'loomd stopped' line: $(journal_since "$c" | tail -n 3 | tr '\n' '|')"
    # Structured entries (systemd-python's JournalHandler), not just stderr text.
    [ -n "$(journalctl -u loomd.service LOGGER=loomd.daemon -n 1 -o cat --no-pager)" ] \
        || fail "journal entries carry no LOGGER= field (systemd-python not used?)"
    say "stopped in $(( (t1 - t0) / 1000000 )) ms (limit $limit), exit 0; journal: \"$start\" ... \"$stop\""
}

# --- mcp: the packaged daemon calls a tool of a stdio MCP server it spawned ---------
MCP_SERVER=/srv/loomd-test/mcp_server.py   # tests/system/mcp_server.py (mcp's MCPServer)

# A field of one server in `loomctl mcp servers` (lists joined by spaces).
mcp_server_field() {
    loomctl --timeout 5 mcp servers | python3 -c '
import json, sys
s = [s for s in json.load(sys.stdin) if s["name"] == sys.argv[1]]
v = s[0][sys.argv[2]] if s else "absent"
print(" ".join(v) if isinstance(v, list) else v)' "$1" "$2"
}
component_reason() { status_json | python3 -c 'import json, sys; print(json.load(sys.stdin)["components"].get(sys.argv[1], {}).get("reason", ""))' "$1"; }

check_mcp() {
    local a b out want pid uid
    [ -r "$MCP_SERVER" ] || fail "no $MCP_SERVER"
    # The shipped config has no MCP server: the mcp component is off until one is set.
    [ "$(component_state mcp)" != running ] || fail "mcp running before a server is configured"
    if ! grep -q '^\[\[mcp\.servers\]\]' "$CONF"; then
        printf '\n[[mcp.servers]]\nname = "systest"\ncommand = "/usr/lib/loomd/bin/python"\nargs = ["%s"]\n' \
            "$MCP_SERVER" >> "$CONF"
    fi
    # [[mcp.servers]] is read at start (not a reload option).
    systemctl restart loomd.service || fail "restart with an MCP server configured failed"
    wait_active 30
    up() { [ "$(mcp_server_field systest state)" = running ] && [ "$(mcp_server_field systest tools)" = "systest:add systest:sandbox" ]; }
    wait_for 60 up || fail "MCP server systest: state $(mcp_server_field systest state), tools '$(mcp_server_field systest tools)', last error '$(mcp_server_field systest last_error)'; mcp is $(component_state mcp): $(component_reason mcp)"
    a=$RANDOM b=$RANDOM
    out=$(loomctl call systest:add "{\"a\": $a, \"b\": $b}" 2>&1) || fail "loomctl call systest:add failed: $out"
    want="{\"result\": $((a + b))}"
    [ "$out" = "$want" ] || fail "systest:add $a + $b answered '$out', want '$want'"
    # The server inherits the unit's sandbox: seccomp, no new privileges, W^X.
    uid=$(id -u loomd)
    out=$(loomctl call systest:sandbox 2>&1) || fail "loomctl call systest:sandbox failed: $out"
    case $out in
    *"uid=$uid NoNewPrivs=1 Seccomp=2 wx=denied"*) ;;
    *) fail "the MCP server is not under loomd.service's sandbox: $out" ;;
    esac
    pid=$(pgrep -f "^/usr/lib/loomd/bin/python $MCP_SERVER" | head -n 1)
    [ -n "$pid" ] || fail "no process of $MCP_SERVER"
    grep -q 'loomd.service' "/proc/$pid/cgroup" || fail "MCP server pid $pid is not in loomd.service's cgroup: $(cat "/proc/$pid/cgroup")"
    say "stdio MCP server pid $pid ($(dpkg-query -W -f '${Package} ${Version}' loomd-mcp)) in loomd.service: loomctl call systest:add $a+$b -> $want; sandbox: $(printf '%s' "$out" | tr -d '{}"' | sed 's/^result: //')"
}

# --- purge: one extra leaves the rest working; then everything goes ------------------
check_purge() {
    local left=() p f
    systemctl start loomd.service || fail "start before purge failed"
    wait_active 30
    # loomd-mcp alone, its MCP server still configured: the daemon runs on and
    # names the package that brings mcp back; what mcp shared with the extras
    # (in the core package) stays.
    DEBIAN_FRONTEND=noninteractive apt-get purge -y -q loomd-mcp > /tmp/apt-purge.log 2>&1 \
        || { tail -n 10 /tmp/apt-purge.log; fail "apt-get purge loomd-mcp failed"; }
    wait_active 60
    mcp_gone() { [ "$(component_state mcp)" = unavailable ]; }
    wait_for 60 mcp_gone || fail "after purging loomd-mcp: mcp is $(component_state mcp) ($(component_reason mcp))"
    component_reason mcp | grep -q 'apt install loomd-mcp' || fail "mcp's reason does not name loomd-mcp: $(component_reason mcp)"
    [ "$(component_state llm)" = running ] || fail "after purging loomd-mcp: llm is $(component_state llm)"
    f=$(find /usr/lib/loomd \( -path '*site-packages/mcp*' -o -path '*pydantic*' \) -print 2>/dev/null | head -n 3)
    [ -z "$f" ] || fail "mcp/pydantic files (byte code?) left after purging loomd-mcp: $f"
    ! pgrep -f "$MCP_SERVER" >/dev/null || fail "the MCP server still runs after purging loomd-mcp"
    /usr/lib/loomd/bin/python -c 'import idna, attrs, typing_extensions' \
        || fail "idna, attrs or typing_extensions (core, shared by mcp and the extras) went with loomd-mcp"
    # loomd-voice alone: its files and byte code go, the daemon restarts without it.
    DEBIAN_FRONTEND=noninteractive apt-get purge -y -q loomd-voice > /tmp/apt-purge.log 2>&1 \
        || { tail -n 10 /tmp/apt-purge.log; fail "apt-get purge loomd-voice failed"; }
    wait_active 60
    llm_up() { [ "$(component_state llm)" = running ]; }
    wait_for 60 llm_up || fail "after purging loomd-voice: llm is $(component_state llm)"
    [ "$(component_state voice)" != running ] || fail "voice still running after purging loomd-voice"
    [ ! -e /usr/lib/loomd/lib/python3.11/site-packages/pywhispercpp ] || fail "pywhispercpp left after purging loomd-voice"
    [ -z "$(find /usr/lib/loomd -path '*onnxruntime*' 2>/dev/null)" ] || fail "onnxruntime files (byte code?) left after purging loomd-voice"
    [ ! -e /lib/systemd/system/loomd.service.d/50-voice.conf ] || fail "voice drop-in left"
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get purge -y -q $ALL_PACKAGES > /tmp/apt-purge.log 2>&1 \
        || { tail -n 10 /tmp/apt-purge.log; fail "apt-get purge failed"; }
    for p in $ALL_PACKAGES; do
        f=$(dpkg-query -W -f '${db:Status-Status}' "$p" 2>/dev/null || echo not-installed)
        [ "$f" = not-installed ] || fail "dpkg says $p is $f"
    done
    for f in /lib/systemd/system/loomd.service /usr/lib/systemd/system/loomd.service \
        /etc/systemd/system/multi-user.target.wants/loomd.service /etc/loomd /var/lib/loomd \
        /var/cache/loomd /run/loomd /usr/lib/loomd /usr/bin/loomd /usr/bin/loomctl \
        /lib/systemd/system/loomd.service.d /usr/lib/systemd/system/loomd.service.d; do
        [ -e "$f" ] || [ -L "$f" ] && left+=("$f")
    done
    [ "$(prop LoadState)" = not-found ] || left+=("unit LoadState=$(prop LoadState)")
    p=$(pgrep -u loomd || true)
    [ -z "$p" ] || left+=("processes of loomd: $p")
    f=$(find / -xdev -user loomd 2>/dev/null; find /run /tmp /var/tmp -user loomd 2>/dev/null)
    [ -z "$f" ] || left+=("files of loomd: $f")
    [ ${#left[@]} = 0 ] || fail "left behind: ${left[*]}"
    say "purged loomd-mcp alone (mcp unavailable: apt install loomd-mcp; daemon and llm on), loomd-voice alone (daemon and llm running on), then all: no unit or drop-ins, no /usr/lib|/etc|/var/lib|/var/cache|/run/loomd, no files or processes of user loomd"
}

# --- models: the test models installed with loomctl models install ------------------
component_state() { status_json | python3 -c 'import json, sys; print(json.load(sys.stdin)["components"].get(sys.argv[1], {}).get("state", "absent"))' "$1"; }

check_models() {
    [ -f "$TEST_MODELS/models.json" ] || fail "no test models at $TEST_MODELS (set LOOMD_TEST_MODELS on the host)"
    local out f
    [ "$(component_state voice)" != running ] || fail "voice running before its models are installed"
    out=$(loomctl models install "$TEST_MODELS" 2>&1) \
        || { echo "$out"; fail "loomctl models install failed: $(echo "$out" | tail -n 1)"; }
    echo "$out"
    for f in whisper/ggml-tiny.en.bin piper/en_US-joe-medium.onnx piper/en_US-joe-medium.onnx.json \
        openwakeword/melspectrogram.onnx openwakeword/embedding_model.onnx \
        openwakeword/hey_jarvis_v0.1.onnx llm/SmolLM2-135M-Instruct.gguf; do
        [ -s "$MODELS_DIR/$f" ] || fail "$MODELS_DIR/$f missing after loomctl models install"
        setpriv --reuid=loomd --regid=loomd --init-groups test -r "$MODELS_DIR/$f" || fail "$MODELS_DIR/$f not readable by loomd"
    done
    # The shipped config: enabled = "auto" for both, models under <state_dir>/models;
    # a reload looks again.
    systemctl reload loomd.service || fail "systemctl reload failed"
    up() { [ "$(component_state voice)" = running ] && [ "$(component_state llm)" = running ]; }
    wait_for 120 up || fail "voice is $(component_state voice), llm is $(component_state llm) after the reload: $(journalctl -u loomd -n 8 -o cat --no-pager | tr '\n' '|')"
    say "loomctl models install $TEST_MODELS -> $MODELS_DIR ($(du -sm "$MODELS_DIR" | cut -f1) MB); after a reload voice and llm run (enabled = \"auto\") under the hardened unit"
}

# --- voice: a WAV through wake -> whisper -> SmolLM2 -> Piper, in the daemon -------
check_voice() {
    local out reply
    [ -f "$SPEECH/command.wav" ] || fail "no $SPEECH/command.wav (made on the host with espeak-ng + sox)"
    reply=/var/cache/loomd/systest-reply.wav
    out=$(loomctl --timeout 300 voice test "$SPEECH/command.wav" --out "$reply" 2>&1) \
        || { echo "$out"; fail "loomctl voice test failed"; }
    echo "$out"
    echo "$out" | grep -qi 'transcript: .*kitchen' || fail "transcript does not have 'kitchen': $(echo "$out" | grep transcript)"
    echo "$out" | grep -q 'reply: *[^ -]' || fail "no reply text"
    [ -s "$reply" ] || fail "no reply audio at $reply"
    # With ProcSubset=pid ONNX Runtime cannot read /proc/cpuinfo and says so.
    ! grep -q 'Failed to initialize PyTorch cpuinfo' < <(journalctl -u loomd -o cat --no-pager) \
        || fail "ONNX Runtime could not read /proc/cpuinfo (loomd-voice's drop-in not applied?)"
    say "$(echo "$out" | grep -m1 'transcript:' | sed 's/^ *//') -> $(echo "$out" | grep -m1 'reply:' | sed 's/^ *//' | cut -c1-80); $(echo "$out" | grep -m1 'reply audio')"
}

# --- ask: SmolLM2 answers through the router ------------------------------------
check_ask() {
    local out
    out=$(loomctl ask --max-tokens 24 "Say hello in three words." 2>&1) || { echo "$out"; fail "loomctl ask failed"; }
    [ -n "$(echo "$out" | tr -d '[:space:]')" ] || fail "empty answer"
    say "loomctl ask answered: $(echo "$out" | tr '\n' ' ' | cut -c1-100)"
}

# --- assist: a typed command understood by the installed loomd-assist ------------------
check_assist() {
    local out lib pkg
    up() { [ "$(component_state assist)" = running ]; }
    wait_for 60 up || fail "assist is $(component_state assist): $(component_reason assist)"
    out=$(loomctl --timeout 60 assist "what time is it" --json 2>&1) || fail "loomctl assist failed: $out"
    echo "$out"
    printf '%s' "$out" | python3 -c '
import json, sys
t = json.load(sys.stdin)
assert t["intent"]["name"] == "HassGetCurrentTime" and t["intent"]["via"] == "local", t["intent"]
assert t["reply"] and not t["actions"] and not t.get("error"), t
' || fail "the turn was not a local HassGetCurrentTime with a reply"
    # The libraries came with the packages that should carry them.
    for lib in hassil home_assistant_intents rapidfuzz aioesphomeapi zeroconf jinja2 cryptography; do
        pkg=$(dpkg -S "/usr/lib/loomd/lib/python3.11/site-packages/$lib/__init__.py" 2>/dev/null | cut -d: -f1)
        case $lib:$pkg in
        hassil:loomd-assist|home_assistant_intents:loomd-assist|rapidfuzz:loomd-assist) ;;
        aioesphomeapi:loomd-homeassistant|zeroconf:loomd-homeassistant|jinja2:loomd|cryptography:loomd-mcp) ;;
        *) fail "$lib is in '$pkg'" ;;
        esac
    done
    setpriv --reuid=loomd --regid=loomd --init-groups /usr/lib/loomd/bin/python -c \
        'import aioesphomeapi, zeroconf, aiohttp, hassil, home_assistant_intents' \
        || fail "the satellite's or the assist's libraries do not import as loomd"
    say "loomctl assist 'what time is it': $(printf '%s' "$out" | python3 -c 'import json, sys; t = json.load(sys.stdin); print(t["intent"]["name"], t["intent"]["via"], repr(t["reply"]), t["timings"].get("total"), "ms")') (hassil from loomd-assist; aioesphomeapi, zeroconf from loomd-homeassistant import)"
}

# --- doctor: no check fails ----------------------------------------------------------
check_doctor() {
    local out rc
    loomctl doctor --help >/dev/null 2>&1 || fail "loomctl doctor is not there (part B)"
    out=$(loomctl doctor 2>&1); rc=$?
    echo "$out"
    [ $rc = 0 ] || fail "loomctl doctor exited $rc"
    say "loomctl doctor: exit 0, $(echo "$out" | wc -l) lines"
}

# --- status page: HTML on the metrics port ---------------------------------------
check_status_page() {
    local out
    out=$(python3 - 2>&1 <<'EOF'
import urllib.request
r = urllib.request.urlopen("http://127.0.0.1:9478/", timeout=5)
body = r.read().decode("utf-8", "replace")
assert r.status == 200, r.status
assert "text/html" in r.headers.get("Content-Type", ""), r.headers.get("Content-Type")
assert "<html" in body.lower(), body[:200]
print(f"{r.status} {r.headers.get('Content-Type')}, {len(body)} bytes")
EOF
) || fail "no status page at http://127.0.0.1:9478/ (part C): $(echo "$out" | tail -n 1)"
    say "status page: $out"
}

"check_${1:?usage: checks.sh NAME}"
