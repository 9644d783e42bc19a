#!/bin/sh
# Installs faasd on a host without the .deb: the binary, the systemd units, the faasd group,
# a default config (kept if one exists) and the directories. Services stay disabled until
# the operator enables them. Run as root.
#
#   install.sh [--binary PATH] [--units DIR] [--config FILE]   install
#   install.sh --uninstall [--purge]                           remove (--purge: state too)
#
# Defaults are the files beside this script (a release directory from `cargo xtask dist`).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
binary="$here/faasd"
units="$here/systemd"
[ -d "$units" ] || units="$here/../systemd"
config="$here/config.toml"
action=install
purge=no

while [ $# -gt 0 ]; do
    case "$1" in
        --binary) binary=$2; shift 2 ;;
        --units) units=$2; shift 2 ;;
        --config) config=$2; shift 2 ;;
        --uninstall) action=uninstall; shift ;;
        --purge) purge=yes; shift ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

[ "$(id -u)" = 0 ] || { echo "install.sh: run as root" >&2; exit 1; }

unitdir=/usr/lib/systemd/system
unit_files="faasd.service faasd.socket faasd-dns.socket wg-faas.service"
say() { echo "faasd install: $*"; }

if [ "$action" = uninstall ]; then
    if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
        systemctl disable --now $unit_files 2>/dev/null || true
    fi
    for u in $unit_files; do rm -f "$unitdir/$u"; done
    # faasd's NAT and forwarding rules for functions' calls out.
    nft delete table inet faasd_egress 2>/dev/null || true
    rm -f /usr/lib/sysusers.d/faasd.conf /usr/bin/faasd
    if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
        systemctl daemon-reload
    fi
    if [ "$purge" = yes ]; then
        rm -rf /etc/faasd /var/lib/faasd /var/lib/faasd-functions /run/faasd
        getent group faasd >/dev/null && groupdel faasd
        say "removed, with the configuration, the state and the faasd group"
    else
        say "removed; /etc/faasd and /var/lib/faasd stay (--purge removes them)"
    fi
    exit 0
fi

for f in "$binary" "$config"; do
    [ -f "$f" ] || { echo "install.sh: $f is missing" >&2; exit 1; }
done
for u in $unit_files; do
    [ -f "$units/$u" ] || { echo "install.sh: $units/$u is missing" >&2; exit 1; }
done

install -D -m 0755 "$binary" /usr/bin/faasd
say "binary: /usr/bin/faasd"
for u in $unit_files; do
    install -D -m 0644 "$units/$u" "$unitdir/$u"
done
install -D -m 0644 "$units/faasd.sysusers" /usr/lib/sysusers.d/faasd.conf
say "units: $unit_files in $unitdir"
if command -v systemd-sysusers >/dev/null; then
    systemd-sysusers faasd.conf
else
    getent group faasd >/dev/null || groupadd --system faasd
fi
say "group: faasd (its members may use /run/faasd/faasd.sock)"
install -d -m 0755 /etc/faasd
if [ -e /etc/faasd/config.toml ]; then
    say "config: /etc/faasd/config.toml exists, kept"
else
    install -m 0644 "$config" /etc/faasd/config.toml
    say "config: /etc/faasd/config.toml"
fi
install -d -m 0700 /var/lib/faasd
# Process functions' own directories, and the mount point of their secrets.
install -d -m 0711 /var/lib/faasd-functions
install -d -m 0755 /var/openfaas/secrets
if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
fi
say "done. Enable with: systemctl enable --now faasd.service (and wg-faas.service to keep"
say "the tunnel apart from the daemon); status: systemctl status faasd; logs: journalctl -u faasd"
