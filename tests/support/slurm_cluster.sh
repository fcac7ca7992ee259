#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, for the tests of `ftlab launch slurm` (tests/test_slurm.py) and for
# trying the launcher by hand: munged, slurmctld and slurmd on 127.0.0.1, one CPU partition `cpu` with 8 slots
# (overcommitted: the tasks are tiny). Idempotent: installs what is missing (Debian's slurm-wlm and munge), writes
# /etc/slurm/slurm.conf, starts the daemons that are not running, and waits until the node takes jobs.
#
#   bash tests/support/slurm_cluster.sh          # as root; .ci/run calls it before the tests
#   bash tests/support/slurm_cluster.sh stop     # stops the daemons it started
#
# No systemd: the daemons are started directly and daemonize themselves. No slurmdbd: accounting is off, so `sacct`
# has nothing to say here and `ftlab status` reads the tasks from squeue and `scontrol show job` (MinJobAge keeps
# finished tasks there for an hour).
set -euo pipefail

SLOTS=${FTLAB_SLURM_SLOTS:-8}
NODE=$(hostname -s)
CONF=/etc/slurm/slurm.conf

stop() {
    local daemon pid
    for daemon in slurmd slurmctld munged; do
        for pid in $(pgrep -x "$daemon"); do
            kill "$pid"
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        done
    done
}

install() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null; then
        return
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq slurm-wlm munge >/dev/null
}

write_config() {
    mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/slurm
    local wanted
    wanted=$(cat <<EOF
# Written by tests/support/slurm_cluster.sh: one node on 127.0.0.1, for tests.
ClusterName=ftlab
SlurmctldHost=${NODE}(127.0.0.1)
AuthType=auth/munge
SlurmUser=root
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
# No cgroups without systemd here: processes are tracked by parentage, no CPU binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
# More slots than cores, on purpose (SlurmdParameters=config_overrides lets the node claim them).
SlurmdParameters=config_overrides
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# Finished tasks stay visible to squeue/scontrol for an hour (there is no accounting database to ask).
MinJobAge=3600
# SIGTERM, then this long before SIGKILL, when a task is cancelled, requeued or over its time limit.
KillWait=30
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
MessageTimeout=20
# A requeued task may start again after this long (default 120 s: the old credential must expire first).
AuthInfo=cred_expire=30
SlurmdTimeout=120
NodeName=${NODE} NodeAddr=127.0.0.1 NodeHostname=${NODE} CPUs=${SLOTS} RealMemory=4000 State=UNKNOWN
PartitionName=cpu Nodes=${NODE} Default=YES MaxTime=INFINITE State=UP
EOF
)
    if [[ ! -f $CONF ]] || [[ "$(cat "$CONF")" != "$wanted" ]]; then
        printf '%s\n' "$wanted" >"$CONF"
        # A running controller would keep the old node definition: restart it with the new file.
        if pgrep -x slurmctld >/dev/null; then stop; fi
    fi
}

start_munge() {
    mkdir -p /run/munge && chown munge:munge /run/munge && chmod 755 /run/munge
    if [[ ! -s /etc/munge/munge.key ]]; then
        (command -v mungekey >/dev/null && mungekey --create --keyfile=/etc/munge/munge.key) ||
            dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
        chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    fi
    if ! pgrep -x munged >/dev/null; then
        runuser -u munge -- /usr/sbin/munged
    fi
    munge -n | unmunge >/dev/null
}

start_slurm() {
    local deadline=$((SECONDS + 60))
    # "idle*": the controller has not heard from slurmd (yet): not ready.
    until sinfo -h -N -o '%T' 2>/dev/null | grep -Eq '^(idle|mixed|allocated)$'; do
        # Started here, and again if one exited at once (a port still held by the one just stopped).
        pgrep -x slurmctld >/dev/null || slurmctld || true
        pgrep -x slurmd >/dev/null || slurmd || true
        if ((SECONDS > deadline)); then
            echo "slurm_cluster.sh: the node did not come up within 60 s:" >&2
            sinfo -N -l >&2 || true
            tail -n 20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 || true
            exit 1
        fi
        # A node left DOWN/DRAINED by an earlier run: let it take jobs again.
        scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true
        sleep 1
    done
}

if [[ ${1:-} == stop ]]; then
    stop
    exit 0
fi
install
write_config
start_munge
start_slurm
echo "slurm: node $NODE up, partition cpu, $SLOTS slots ($(sinfo -h -o '%T' | head -n 1))"
