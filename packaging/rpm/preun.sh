# %preun of bao-kms-provider ($1: 0 on erase, 1 on upgrade). Like %systemd_preun: on erase stop
# and disable the units; on upgrade leave them running (%postun restarts the service).
if [ "$1" -eq 0 ]; then
    systemctl --no-reload disable --now bao-kms-provider.socket bao-kms-provider.service >/dev/null 2>&1 || :
fi
