# harmonylite %postun: on upgrade ($1 >= 1) restart the service if it is running
# (try-restart). Erase keeps /etc/harmonylite, /var/lib/harmonylite, /var/log/harmonylite and
# the harmonylite user: RPM has no purge; remove them by hand (docs/production-deployment.md).
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    if [ "$1" -ge 1 ]; then
        systemctl try-restart harmonylite.service >/dev/null 2>&1 || :
    fi
fi
exit 0
