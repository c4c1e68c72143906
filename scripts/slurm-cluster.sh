#!/usr/bin/env bash
# A real single-node Slurm cluster for the tests and for trying `--executor slurm` on one
# machine (issue 13). No systemd is needed: the daemons are started by hand, every file under
# one scratch folder. Two fake GPUs (character devices) are declared as gres, so GPU requests
# are real requests.
#
#   bash scripts/slurm-cluster.sh install   # apt-get the Debian packages (root)
#   bash scripts/slurm-cluster.sh start     # prints `export SLURM_CONF=…`
#   bash scripts/slurm-cluster.sh stop
#
# Environment: SLURM_SCRATCH (default target/slurm), SLURM_CPUS (default: twice nproc, so that
# the tests' small jobs may share the cores, as `SlurmdParameters=config_overrides` allows),
# SLURM_MEM_MB (default 4000).
set -euo pipefail
cd "$(dirname "$0")/.."
scratch="$(realpath -m "${SLURM_SCRATCH:-target/slurm}")"
mode="${1:-start}"
say() { printf 'slurm-cluster: %s\n' "$*" >&2; }

stop() {
    for pidfile in "$scratch/slurmd.pid" "$scratch/slurmctld.pid" "$scratch/munged.pid"; do
        if [ -s "$pidfile" ]; then
            pid="$(cat "$pidfile")"
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -9 "$pid" 2>/dev/null || true
            rm -f "$pidfile"
        fi
    done
}

case "$mode" in
install)
    if ! command -v slurmctld >/dev/null 2>&1 || ! command -v munged >/dev/null 2>&1; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            slurmctld slurmd slurm-client munge >/dev/null
    fi
    # (`sbatch --version` would fail here: without SLURM_CONF it looks for a cluster first.)
    dpkg-query -W -f='${Package} ${Version}\n' slurmctld slurmd slurm-client munge
    exit 0
    ;;
stop)
    stop
    exit 0
    ;;
start) ;;
*)
    say "unknown mode '$mode' (install, start, stop)"
    exit 2
    ;;
esac

stop
host="$(hostname -s)"
cpus="${SLURM_CPUS:-$(( $(nproc) * 2 ))}"
mem="${SLURM_MEM_MB:-4000}"
rm -rf "$scratch/state" "$scratch/spool"
mkdir -p "$scratch/state" "$scratch/spool" "$scratch/munge" "$scratch/dev" "$scratch/log"
for i in 0 1; do
    [ -c "$scratch/dev/gpu$i" ] || { rm -f "$scratch/dev/gpu$i"; mknod "$scratch/dev/gpu$i" c 1 3; }
done

# munge: its own key, socket and files, run as the munge user when there is one.
key="$scratch/munge/munge.key"
if [ ! -s "$key" ]; then
    if [ -s /etc/munge/munge.key ]; then cp /etc/munge/munge.key "$key"; else mungekey --create --keyfile="$key"; fi
fi
owner=root
id munge >/dev/null 2>&1 && owner=munge
chown -R "$owner" "$scratch/munge"
chmod 700 "$scratch/munge"
chmod 400 "$key"
socket="$scratch/munge/munge.socket"
touch "$scratch/munged.pid" && chown "$owner" "$scratch/munged.pid"
runuser_cmd=()
[ "$owner" != root ] && runuser_cmd=(runuser -u "$owner" --)
"${runuser_cmd[@]}" munged --force --key-file="$key" --socket="$socket" \
    --pid-file="$scratch/munged.pid" --log-file="$scratch/munge/munged.log" \
    --seed-file="$scratch/munge/munged.seed"

cat >"$scratch/slurm.conf" <<EOF
ClusterName=ci
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$socket
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/builtin
SchedulerParameters=sched_min_interval=100000,batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
SlurmdParameters=config_overrides
MinJobAge=3600
GresTypes=gpu
StateSaveLocation=$scratch/state
SlurmdSpoolDir=$scratch/spool
SlurmctldPidFile=$scratch/slurmctld.pid
SlurmdPidFile=$scratch/slurmd.pid
SlurmctldLogFile=$scratch/log/slurmctld.log
SlurmdLogFile=$scratch/log/slurmd.log
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
cat >"$scratch/gres.conf" <<EOF
NodeName=$host Name=gpu File=$scratch/dev/gpu[0-1]
EOF
export SLURM_CONF="$scratch/slurm.conf"
slurmctld -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF"
for _ in $(seq 100); do
    if scontrol ping >/dev/null 2>&1 && [ "$(sinfo -h -o %T 2>/dev/null | head -1)" = idle ]; then
        say "cluster up: node $host, $cpus CPUs, ${mem} MB, 2 GPUs (gres)"
        echo "export SLURM_CONF=$SLURM_CONF"
        exit 0
    fi
    sleep 0.2
done
say "the cluster did not come up; logs under $scratch/log:"
tail -n 20 "$scratch/log/"*.log >&2 || true
exit 1
