#!/bin/sh
# After the files are unpacked: apply the tmpfiles.d snippet and let a running systemd load
# the unit. A first install never enables or starts the service, because the operator has to
# edit /etc/grantexd/grantexd.env first. A Debian upgrade restarts the service if it was
# running. An rpm upgrade does that in postremove.sh, once the old version's files are gone.
#
# dpkg passes "configure" and the version configured before (empty on a first install), or
# "abort-upgrade", "abort-remove" and "abort-deconfigure" after a failed operation. rpm passes
# the number of versions installed now (1 on a first install, 2 on an upgrade).
set -e

case "$1" in
    configure)
        previous_version="$2"
        ;;
    [0-9]*)
        previous_version=""
        ;;
    *)
        exit 0
        ;;
esac

if command -v systemd-tmpfiles >/dev/null 2>&1; then
    systemd-tmpfiles --create /usr/lib/tmpfiles.d/grantexd.conf || true
fi

if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
    if [ -n "$previous_version" ]; then
        systemctl try-restart grantexd.service \
            || echo "grantexd: restart after the upgrade failed; see journalctl -u grantexd" >&2
    fi
fi

if [ "$1" = 1 ] || { [ "$1" = configure ] && [ -z "$previous_version" ]; }; then
    echo "grantexd: edit /etc/grantexd/grantexd.env, then run: systemctl enable --now grantexd"
fi
