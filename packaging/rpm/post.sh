# %post of bao-kms-provider ($1: 1 on installation, 2 or more on upgrade). Like
# %systemd_post plus %sysusers/%tmpfiles_create, written out (no systemd-rpm-macros at build
# time); never starts a provider without a valid /etc/openbao-kms/config.toml.
SOCKET=bao-kms-provider.socket
CONFIG=/etc/openbao-kms/config.toml

# check-config reads only the file; "%d/NAME" credential paths need $CREDENTIALS_DIRECTORY set.
config_valid() {
    CREDENTIALS_DIRECTORY=/run/credentials/bao-kms-provider.service \
        /usr/bin/bao-kms-provider check-config --config "$CONFIG" >/dev/null 2>&1
}

systemd-sysusers bao-kms-provider.conf || :
systemd-tmpfiles --create bao-kms-provider.conf >/dev/null 2>&1 || :

if [ "$1" -eq 1 ]; then
    # First installation: enable the socket as the system presets say (Debian/Ubuntu-like
    # presets: enabled; Fedora/RHEL default presets: disabled until the administrator enables it).
    systemctl --no-reload preset "$SOCKET" >/dev/null 2>&1 || :
fi

if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    if config_valid; then
        if systemctl -q is-enabled "$SOCKET" 2>/dev/null; then
            systemctl start "$SOCKET" >/dev/null 2>&1 || :
        fi
    else
        echo "bao-kms-provider: $CONFIG is not a valid configuration (yet); not starting the provider." >&2
        echo "bao-kms-provider: fill it in, check it with 'bao-kms-provider check-config', then: systemctl enable --now $SOCKET" >&2
    fi
fi
