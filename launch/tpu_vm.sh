#!/usr/bin/env bash
# The study on every host of a Cloud TPU VM slice (v4, v5e, v5p, ...): one process per host,
# jax.distributed over the slice (JAX finds the coordinator itself on TPU VMs), every local
# chip sampling (--mesh), process 0 writing the artifacts to a workdir all hosts share.
#
#   launch/tpu_vm.sh setup TPU_NAME ZONE REPO_URL [REF]       # clone + install on every host
#   launch/tpu_vm.sh mount TPU_NAME ZONE NFS_SERVER:/SHARE    # the shared workdir at /mnt/ttc
#   launch/tpu_vm.sh run   TPU_NAME ZONE -- RUN_FLAGS...      # launch/run.py on every host
#   launch/tpu_vm.sh logs  TPU_NAME ZONE                      # the last lines of each host's log
#
# RUN_FLAGS are launch/run.py's, e.g. --config=experiments/math_qwen.py --workdir=/mnt/ttc/runs/math
# --mesh=-1,4; --distributed and --jobs=1 are added. A rerun resumes: finished stages are reused.
# DRY_RUN=1 prints the gcloud commands instead of running them; GCLOUD_FLAGS adds flags to
# each (e.g. "--project=my-project"). BUILD.md gives the whole procedure.
set -euo pipefail

usage() { sed -n '2,16p' "$0" >&2; exit 2; }
[[ $# -ge 3 ]] || usage
action=$1 tpu=$2 zone=$3
shift 3
dir='$HOME/ttc_jax'  # on the hosts (expanded there)

on_all_hosts() {
  local cmd=(gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all ${GCLOUD_FLAGS:-}
             --command="$1")
  if [[ -n "${DRY_RUN:-}" ]]; then
    printf '%q ' "${cmd[@]}"; echo
  else
    "${cmd[@]}"
  fi
}

case "$action" in
  setup)
    [[ $# -ge 1 ]] || usage
    repo=$1 ref=${2:-main}
    on_all_hosts "set -e; test -d $dir || git clone -q '$repo' $dir; cd $dir;
      git fetch -q origin '$ref'; git checkout -q --detach FETCH_HEAD; python3 -m venv .venv; .venv/bin/pip install -q -U pip;
      .venv/bin/pip install -q -U 'jax[tpu]'; .venv/bin/pip install -q -e '.[hf]';
      .venv/bin/python -c 'import jax; print(jax.process_index(), jax.local_device_count())'"
    ;;
  mount)
    [[ $# -eq 1 ]] || usage
    on_all_hosts "set -e; sudo apt-get -qq update; sudo apt-get -qq install -y nfs-common; sudo mkdir -p /mnt/ttc;
      mountpoint -q /mnt/ttc || sudo mount -t nfs -o rw,hard '$1' /mnt/ttc; sudo chmod 777 /mnt/ttc"
    ;;
  run)
    [[ ${1:-} == "--" ]] && shift
    [[ $# -ge 2 ]] || usage
    flags=$(printf '%q ' "$@")
    on_all_hosts "cd $dir && mkdir -p logs && nohup .venv/bin/python launch/run.py $flags \
      --distributed --jobs=1 > logs/run.\$(hostname).log 2>&1 < /dev/null &"
    ;;
  logs)
    on_all_hosts "tail -n 5 $dir/logs/run.\$(hostname).log"
    ;;
  *)
    usage
    ;;
esac
