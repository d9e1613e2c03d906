#!/bin/sh
# Create the grantexd system user and group before the files are unpacked, because
# /etc/grantexd and /var/lib/grantexd in the package belong to them.
#
# dpkg passes "install" or "upgrade". rpm passes the number of versions installed after this
# one (1 on a first install). The user is needed in every case, and creating it is idempotent.
set -e

# The line of /usr/lib/sysusers.d/grantexd.conf (systemd/grantexd.sysusers.conf), which is not
# unpacked yet. tests/test_packaging.py checks that the two stay the same.
sysusers_line='u grantexd - "grantexd authorization server" / /usr/sbin/nologin'

if command -v systemd-sysusers >/dev/null 2>&1; then
    printf '%s\n' "$sysusers_line" | systemd-sysusers --replace=/usr/lib/sysusers.d/grantexd.conf -
elif ! getent passwd grantexd >/dev/null; then
    # Without systemd (a minimal container image): the same user through shadow-utils.
    if getent group grantexd >/dev/null; then
        set -- --gid grantexd
    else
        set -- --user-group
    fi
    useradd --system "$@" --home-dir / --no-create-home --shell /usr/sbin/nologin \
        --comment "grantexd authorization server" grantexd
fi
