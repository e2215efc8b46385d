# harmonylite %pre: the service user and group, before the files that belong to them are
# unpacked. $1 is 1 on install, 2 or more on upgrade.
getent group harmonylite >/dev/null || groupadd --system harmonylite
getent passwd harmonylite >/dev/null ||
    useradd --system --gid harmonylite --home-dir /var/lib/harmonylite --no-create-home \
        --shell /sbin/nologin --comment "HarmonyLite replication" harmonylite
exit 0
