# %postun of bao-kms-provider ($1: 0 on erase, 1 on upgrade). Like %systemd_postun_with_restart,
# but restarts only a running provider and only with a valid configuration. The socket stays
# open, so kube-apiserver's calls queue while the new binary starts. The key registry
# /var/lib/openbao-kms is kept unless BAO_KMS_PURGE_STATE=yes is set for the erase.
CONFIG=/etc/openbao-kms/config.toml

if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
if [ "$1" -ge 1 ] && [ -d /run/systemd/system ]; then
    if CREDENTIALS_DIRECTORY=/run/credentials/bao-kms-provider.service \
        /usr/bin/bao-kms-provider check-config --config "$CONFIG" >/dev/null 2>&1; then
        systemctl try-restart bao-kms-provider.service >/dev/null 2>&1 || :
    else
        echo "bao-kms-provider: $CONFIG is not valid; not restarting the provider (it keeps running the old binary)." >&2
    fi
fi
if [ "$1" -eq 0 ] && [ "${BAO_KMS_PURGE_STATE:-}" = "yes" ]; then
    rm -rf /var/lib/openbao-kms
fi
