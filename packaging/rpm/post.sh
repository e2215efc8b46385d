# harmonylite %post: the directories of the production guide, then make systemd see the unit.
# $1 is 1 on install, 2 or more on upgrade. The unit is neither enabled nor started: configure
# /etc/harmonylite/config.toml, then `systemctl enable --now harmonylite`.
# The directories are made here rather than listed in the package, so erasing the package
# leaves the data where it is.
for dir in /var/lib/harmonylite /var/log/harmonylite; do
    if [ ! -d "$dir" ]; then
        install -d -m 750 -o harmonylite -g harmonylite "$dir"
    fi
done
if [ "$1" -eq 1 ]; then
    chown root:harmonylite /etc/harmonylite
    chmod 750 /etc/harmonylite
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
exit 0
