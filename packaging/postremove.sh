#!/bin/sh
# After the files are removed: let a running systemd forget the removed unit, and after an rpm
# upgrade restart the service if it was running. The grantexd user stays, as is usual for
# system users, because files outside the package may still belong to it. dpkg removes
# /etc/grantexd/grantexd.env on "purge" only. rpm keeps an edited copy as grantexd.env.rpmsave.
#
# dpkg passes "remove", "purge", "upgrade", "disappear", "failed-upgrade", "abort-install" or
# "abort-upgrade". rpm passes the number of versions that stay installed (0 on a removal, 1 on
# an upgrade).
set -e

case "$1" in
    remove|purge|0)
        restart=false
        ;;
    [1-9]*)
        restart=true
        ;;
    *)
        exit 0
        ;;
esac

if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
    if [ "$restart" = true ]; then
        systemctl try-restart grantexd.service \
            || echo "grantexd: restart after the upgrade failed; see journalctl -u grantexd" >&2
    fi
fi
