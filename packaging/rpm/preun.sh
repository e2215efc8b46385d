# harmonylite %preun: on erase ($1 = 0) stop and disable the service; on upgrade ($1 >= 1) keep
# it running until %postun restarts it.
if [ "$1" -eq 0 ] && [ -d /run/systemd/system ]; then
    systemctl --no-reload disable --now harmonylite.service >/dev/null 2>&1 || :
fi
exit 0
