#!/bin/sh
# Before the files are removed: on a removal, stop and disable the service. An upgrade leaves
# it running, and the upgrade's postinstall.sh (dpkg) or postremove.sh (rpm) restarts it.
#
# dpkg passes "remove", "upgrade", "deconfigure" or "failed-upgrade". rpm passes the number of
# versions that stay installed (0 on a removal, 1 on an upgrade).
set -e

case "$1" in
    remove|0)
        ;;
    *)
        exit 0
        ;;
esac

if [ -d /run/systemd/system ]; then
    systemctl stop grantexd.service || true
fi
# systemctl disable also works without a running systemd: it only removes the symlinks.
if command -v systemctl >/dev/null 2>&1; then
    systemctl --no-reload disable grantexd.service >/dev/null 2>&1 || true
fi
