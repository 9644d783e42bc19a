#!/bin/bash
# The scenario of faasd/tests/integration/nspawn.rs, run by faasd-e2e.service inside a
# booted Debian: install faasd as an operator would, start it with systemctl, use it through
# the socket-activated API, restart it under load, hang it. Writes to /e2e-out/log; the last
# line is PASS when every step held.
set -uo pipefail
exec > /e2e-out/log 2>&1
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

fail() {
    echo "FAIL: $*"
    systemctl --no-pager status faasd.service wg-faas.service faasd.socket || true
    journalctl --no-pager -u faasd -u wg-faas -n 100 || true
    exit 1
}
step() { echo "== $*"; }
# wait_for SECONDS WHAT COMMAND...: polls COMMAND every 100 ms.
wait_for() {
    local secs=$1 what=$2
    shift 2
    for _ in $(seq $((secs * 10))); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    fail "waited ${secs}s for $what"
}
prop() { systemctl show -p "$1" --value "$2"; }
address() { faasd --json describe "$1" | grep -o '"address":"[^"]*"' | cut -d'"' -f4; }
# The inode of the listening socket on [ADDRESS]:8080: the same socket across a restart
# means it came back from systemd's fd store.
socket_inode() { ss -Hltne "src [$1]:8080" | grep -o 'ino:[0-9]*' | head -1; }
instance_pid() { faasd --json describe "$1" | grep -o '"pid":[0-9]*' | head -1 | cut -d: -f2; }
stopped() { faasd --json describe "$1" | grep -q '"phase":"stopped"'; }
active() { [ "$(systemctl is-active faasd.service)" = active ]; }

step "install.sh, as an operator would"
/e2e/install.sh --binary /e2e/faasd --units /e2e/systemd --config /e2e/config.toml ||
    fail "install.sh"
systemctl is-enabled faasd.service >/dev/null 2>&1 && fail "install.sh enabled faasd.service"
getent group faasd >/dev/null || fail "no faasd group"
# The test's own setting: a short watchdog, so a hang shows within seconds.
mkdir -p /etc/systemd/system/faasd.service.d
printf '[Service]\nWatchdogSec=3s\nTimeoutAbortSec=2s\n' \
    > /etc/systemd/system/faasd.service.d/test.conf
systemctl daemon-reload

step "systemctl enable --now faasd: wg-faas first, then faasd"
systemctl enable --now faasd.service || fail "systemctl enable --now faasd"
active || fail "faasd is $(systemctl is-active faasd.service)"
[ "$(systemctl is-active wg-faas.service)" = active ] || fail "wg-faas is not active"
wg_up=$(prop ActiveEnterTimestampMonotonic wg-faas.service)
faasd_started=$(prop ExecMainStartTimestampMonotonic faasd.service)
[ "$wg_up" -le "$faasd_started" ] ||
    fail "faasd started ($faasd_started) before wg-faas was up ($wg_up)"
faasd status | grep wireguard | grep -q adopted || fail "faasd did not adopt wg-faas"
# Where the data plane is pinned on the host's bpffs, for the test to remove afterwards.
faasd status | awk '$1 == "pins" { print $2 }' > /e2e-out/pins
prop StatusText faasd.service | grep -q serving || fail "no STATUS= from faasd"
[ "$(stat -c %a:%G /run/faasd/faasd.sock)" = 660:faasd ] || fail "the API socket's mode or group"
# The .faas zone on faasd-dns.socket's port 53 (faasd binds none itself).
ss -Hlnup 'sport = :53' | grep -q systemd || fail "port 53 is not systemd's socket"

step "the socket-activated API starts faasd"
systemctl stop faasd.service
[ "$(systemctl is-active faasd.socket)" = active ] || fail "faasd.socket stopped with faasd"
faasd deploy running --command /e2e/hello -l com.openfaas.scale.min=1 ||
    fail "deploy through the socket"
active || fail "the API call did not start faasd"
faasd deploy idle --command /e2e/hello || fail "deploy idle"
running=$(address running)
idle=$(address idle)
for a in "$running" "$idle"; do
    curl -fsS --max-time 10 "http://[$a]:8080/" | grep -q 'Hello from faasd' ||
        fail "no answer from $a"
done
[ "$(dig +short AAAA running.faas @fd00:faa5:0:100::1)" = "$running" ] ||
    fail "running.faas does not resolve through faasd-dns.socket"

# restart_under_load NAME COMMAND...: a client keeps calling both functions while COMMAND
# restarts faasd, with `idle` at zero when it starts; every call must succeed.
restart_under_load() {
    local what=$1
    shift
    step "$what, one function running and one at zero, a client calling both"
    faasd scale idle 0
    wait_for 10 "idle at zero" stopped idle
    rm -f /tmp/stop /tmp/served /tmp/failed
    touch /tmp/served /tmp/failed
    (
        while [ ! -e /tmp/stop ]; do
            for a in "$running" "$idle"; do
                if curl -fsS --max-time 30 -o /dev/null "http://[$a]:8080/"; then
                    echo "$a" >> /tmp/served
                else
                    echo "$a" >> /tmp/failed
                fi
            done
            sleep 0.05
        done
    ) &
    local client=$!
    sleep 0.5
    local restarts inode pid
    restarts=$(prop NRestarts faasd.service)
    inode=$(socket_inode "$idle")
    pid=$(instance_pid running)
    [ -n "$pid" ] || fail "no instance of running"
    [ -n "$inode" ] || fail "no listening socket for idle"
    "$@" || fail "$what: $*"
    sleep 2
    wait_for 30 "faasd active again" active
    [ "$(socket_inode "$idle")" = "$inode" ] ||
        fail "$what: idle's socket is a new one ($inode before, $(socket_inode "$idle") after)"
    # The instance that served through the restart is adopted, not replaced.
    [ "$(instance_pid running)" = "$pid" ] ||
        fail "$what: running's instance $pid was not adopted (now: $(instance_pid running))"
    touch /tmp/stop
    wait "$client"
    local served failed
    served=$(wc -l < /tmp/served)
    failed=$(wc -l < /tmp/failed)
    echo "$what: $served calls served, $failed failed; restarts $restarts -> $(prop NRestarts faasd.service)"
    [ "$failed" -eq 0 ] || fail "$what: $failed calls failed"
    [ "$served" -ge 10 ] || fail "$what: only $served calls made"
}
restart_under_load "systemctl restart" systemctl restart faasd.service
kill9() { kill -9 "$(prop MainPID faasd.service)"; }
restart_under_load "kill -9" kill9

step "the watchdog restarts a faasd that hangs"
pid=$(prop MainPID faasd.service)
restarts=$(prop NRestarts faasd.service)
kill -STOP "$pid"
restarted() { [ "$(prop NRestarts faasd.service)" -gt "$restarts" ] && active; }
wait_for 30 "a watchdog restart" restarted
[ "$(prop MainPID faasd.service)" != "$pid" ] || fail "the same pid still runs"
curl -fsS --max-time 10 "http://[$idle]:8080/" | grep -q 'Hello from faasd' ||
    fail "no answer after the watchdog restart"

step "uninstall"
/e2e/install.sh --uninstall || fail "install.sh --uninstall"
[ ! -e /usr/bin/faasd ] || fail "the binary stayed"
systemctl cat faasd.service >/dev/null 2>&1 && fail "the unit stayed"

if [ -f /e2e/faasd.deb ]; then
    step "dpkg -i, start, purge"
    dpkg -i /e2e/faasd.deb || fail "dpkg -i"
    [ "$(systemctl is-enabled faasd.service)" = disabled ] || fail "the package enabled faasd"
    active && fail "the package started faasd"
    [ -f /etc/faasd/config.toml ] || fail "no default config"
    systemctl start faasd.service || fail "systemctl start faasd from the package"
    faasd list | grep -q '^running ' || fail "the package's faasd does not see the functions"
    dpkg --purge faasd || fail "dpkg --purge"
    for f in /usr/bin/faasd /lib/systemd/system/faasd.service /etc/faasd /var/lib/faasd; do
        [ ! -e "$f" ] || fail "$f stayed after purge"
    done
    active && fail "faasd still runs after purge"
fi
echo PASS
