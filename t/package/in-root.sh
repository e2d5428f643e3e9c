#!/bin/bash
# in-root.sh - the Debian package on a brand-new Debian 12 root, as an admin meets it.
#
#   bash in-root.sh DEB RX_PORT SMTP_PORT HTTP_PORT TOKEN
#
# Run by t/package/test_deb.py through build-aux/fresh-root, as root, in a clone that
# holds DEB and this script. It installs DEB with apt (the dependencies come from the
# mirror), checks what the package put where, edits /etc/pmta/config as an admin would
# (listener on 127.0.0.1:SMTP_PORT, web monitor on HTTP_PORT, mail for deb.test to the
# caller's receiver on 127.0.0.1:RX_PORT: the root shares the host's network), checks
# that reinstalling keeps that edit, starts pmtad from the installed files under the
# unit's capability bounding set and read-only paths (systemd does not run here),
# sends a message with the installed sendmail (its subject carries TOKEN), waits for
# its delivery record, rotates the log with the installed logrotate snippet, stops
# pmtad and purges the package.
#
# Prints one "ok - NAME" or "not ok - NAME" line per check ("# ..." lines explain a
# failure); the caller turns them into TAP. Exits 0 when every check passed.
set -u
deb=$1 rx_port=$2 smtp_port=$3 http_port=$4 token=$5
failed=0
unit=/lib/systemd/system/pmtad.service
config=/etc/pmta/config

# check NAME COMMAND... - one check: COMMAND's status decides; its output explains a failure
check() {
    local name=$1 out
    shift
    if out=$("$@" 2>&1); then
        echo "ok - $name"
    else
        echo "not ok - $name"
        printf '%s\n' "$out" | tail -15 | sed 's/^/# /'
        failed=1
    fi
}

# same A B - A equals B (shown when not)
same() {
    [ "$1" = "$2" ] || {
        echo "got '$1', expected '$2'"
        return 1
    }
}

# wait_for SECONDS COMMAND... - poll COMMAND every 0.2 s until it succeeds
wait_for() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || {
            "$@"
            return 1
        }
        sleep 0.2
    done
}

export DEBIAN_FRONTEND=noninteractive
check "apt-get installs the package and its dependencies" \
    sh -c "apt-get update -qq && apt-get install -y -q ./$deb </dev/null"

# --- what the package put where --------------------------------------------------
check "postinst made the pmta group" getent group pmta
check "postinst made pmta a system user without a login shell" sh -c '
    set -- $(getent passwd pmta | awk -F: "{print \$3, \$7}")
    [ "$1" -lt 1000 ] && [ "$2" = /usr/sbin/nologin ]'
check "/etc/pmta/config is a conffile" sh -c \
    "dpkg-query -W -f='\${Conffiles}' openpmta | grep -q '^ $config '"
check "/etc/logrotate.d/openpmta is a conffile" sh -c \
    "dpkg-query -W -f='\${Conffiles}' openpmta | grep -q '^ /etc/logrotate.d/openpmta '"
check "/var/spool/pmta is pmta:pmta 750" same "$(stat -c '%U:%G %a' /var/spool/pmta)" "pmta:pmta 750"
check "/var/log/pmta is pmta:adm 2750" same "$(stat -c '%U:%G %a' /var/log/pmta)" "pmta:adm 2750"
check "pmtad and pmtactl are in /usr/sbin" test -x /usr/sbin/pmtad -a -x /usr/sbin/pmtactl
check "the workers are in /usr/lib/openpmta" sh -c \
    'for w in smtpd cleanup qmgr smtp-out; do test -x /usr/lib/openpmta/$w || exit 1; done'
check "/usr/sbin/sendmail is openpmta's" same "$(readlink -f /usr/sbin/sendmail)" \
    /usr/lib/openpmta/sendmail
check "the package provides, conflicts with and replaces mail-transport-agent" same \
    "$(dpkg-query -W -f='${Provides}|${Conflicts}|${Replaces}' openpmta)" \
    "mail-transport-agent|mail-transport-agent|mail-transport-agent"
check "man pages pmtad(8) pmtactl(8) sendmail(8) pmta-config(5)" sh -c '
    cd /usr/share/man && test -f man8/pmtad.8.gz -a -f man8/pmtactl.8.gz \
        -a -f man8/sendmail.8.gz -a -f man5/pmta-config.5.gz'
check "the systemd unit is enabled" test -L /etc/systemd/system/multi-user.target.wants/pmtad.service
check "the unit reloads through pmtad --check-config and SIGHUP" sh -c "
    grep -qx 'ExecReload=/usr/sbin/pmtad --check-config' $unit &&
    grep -qx 'ExecReload=/bin/kill -HUP \$MAINPID' $unit"
check "the unit is hardened (ProtectSystem, CapabilityBoundingSet, no NoNewPrivileges)" sh -c "
    grep -qx 'ProtectSystem=full' $unit && grep -q '^CapabilityBoundingSet=' $unit &&
    ! grep -q '^NoNewPrivileges=' $unit"
check "logrotate (recommended) came along, with the package's snippet" sh -c \
    "command -v logrotate && logrotate -d /etc/logrotate.d/openpmta"
check "the installed configuration is valid" /usr/sbin/pmtad --check-config

# --- an admin edits the conffile; a reinstall keeps the edit --------------------------
sed -i -e "s/^smtp-listener 127.0.0.1:25\$/smtp-listener 127.0.0.1:$smtp_port/" \
    -e "s/^http-mgmt-port 8080\$/http-mgmt-port $http_port/" $config
cat >>$config <<EOF

# added by the package test: mail for deb.test goes to the test's receiver
<domain deb.test>
    smtp-hosts [127.0.0.1]:$rx_port
    use-starttls no
</domain>
EOF
check "the edited configuration is valid" /usr/sbin/pmtad --check-config
check "reinstalling the package asks nothing" sh -c "dpkg -i ./$deb </dev/null"
check "reinstalling kept the edited /etc/pmta/config" grep -q "smtp-hosts \[127.0.0.1\]:$rx_port" $config

# --- pmtad from the installed files, sandboxed as the unit says ----------------------------
# The unit's CapabilityBoundingSet as setpriv(1) wants it: -all,+chown,+dac_override,...
caps=$(sed -n 's/^CapabilityBoundingSet=//p' $unit | tr ' ' '\n' | sed -n 's/^CAP_//p' |
    tr 'A-Z' 'a-z' | sed 's/^/+/' | paste -sd, -)
# ProtectSystem=full and ProtectHome=read-only: read-only bind mounts; PrivateTmp: a tmpfs
sandbox='
    set -e
    for d in /usr /boot /etc /home /root; do
        [ -d $d ] || continue
        mount --bind $d $d
        mount -o remount,bind,ro $d
    done
    mount -t tmpfs tmpfs /tmp
    exec setpriv --bounding-set "-all,$0" /usr/sbin/pmtad -f'
/usr/sbin/pmtad --check-config >/dev/null # ExecStartPre
unshare --mount --propagation private sh -c "$sandbox" "$caps" >/var/tmp/pmtad.out 2>&1 &
pmtad_pid=$!
check "pmtad starts under the unit's bounding set and read-only /usr and /etc" \
    wait_for 20 /usr/sbin/pmtactl show status
check "its workers run as pmta" sh -c "
    pids=\$(pgrep -P \$(pgrep -x pmtad | head -1)) && [ -n \"\$pids\" ] &&
    ! ps -o user= -p \"\$(echo \$pids | tr ' ' ,)\" | grep -vx pmta"
check "the web monitor serves its page from /usr/share/openpmta/www" bash -c "
    exec 3<>/dev/tcp/127.0.0.1/$http_port &&
    printf 'GET /ui HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3 && page=\$(cat <&3) &&
    grep -q '^HTTP/1.[01] 200' <<<\"\$page\" && grep -q '<title>openpmta monitor</title>' <<<\"\$page\""
check "the installed sendmail submits a message" sh -c "
    printf 'Subject: deb install $token\n\nsent by the package test\n' |
    /usr/sbin/sendmail -f root@localhost someone@deb.test"
check "the message is delivered (a d record in /var/log/pmta/acct.csv)" \
    wait_for 60 grep -q '^d,.*someone@deb.test' /var/log/pmta/acct.csv
check "the log is in /var/log/pmta/log" grep -q 'started (pid' /var/log/pmta/log
check "logrotate renames the log and pmtad reopens it" sh -c "
    logrotate -f /etc/logrotate.d/openpmta && test -s /var/log/pmta/log.1 &&
    for i in \$(seq 50); do grep -q 'log reopened' /var/log/pmta/log 2>/dev/null && exit 0
        sleep 0.2; done; exit 1"
kill -TERM "$pmtad_pid" 2>/dev/null
check "pmtad stops on SIGTERM" wait_for 30 sh -c "! kill -0 $pmtad_pid"
if [ $failed = 1 ]; then
    echo "# pmtad's output:"
    tail -20 /var/tmp/pmtad.out | sed 's/^/# /'
    tail -20 /var/log/pmta/log | sed 's/^/# /'
fi

# --- purge ---------------------------------------------------------------------------------
check "apt-get purge removes the package" sh -c "apt-get purge -y -q openpmta </dev/null"
check "purge removed /etc/pmta, the spool and the logs" sh -c \
    "! test -e /etc/pmta -o -e /var/spool/pmta -o -e /var/log/pmta"
check "purge removed the programs, sendmail and the unit's enablement" sh -c \
    "! test -e /usr/sbin/pmtad -o -e /usr/sbin/sendmail -o -L /etc/systemd/system/multi-user.target.wants/pmtad.service"
exit $failed
