#!/bin/bash
# Distil on every node of a SLURM allocation: the first node runs `kedro run` (the primary, the only process that
# writes the catalog, MLflow and DVC files), each other node the worker that joins its data-parallel stages.
# Submit from the project's folder with its venv active (srun hands the environment to every node); every node
# needs the installed project and the same files at data.path.
#   . .venv/bin/activate && sbatch scripts/slurm_distill.sh
#   ENV=imagenet64 PORT=29400 sbatch --nodes=4 scripts/slurm_distill.sh
#SBATCH --job-name=disback
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --time=24:00:00
set -euo pipefail

export ENV=${ENV:-base}
export NPROC=${NPROC:-${SLURM_GPUS_ON_NODE:-1}}   # ranks a node: one per GPU
PRIMARY=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export ENDPOINT="$PRIMARY:${PORT:-29400}"          # the primary listens here; the workers connect to it
# the network interface the nodes reach each other on, when the default route is not it:
# export NCCL_SOCKET_IFNAME=ib0 GLOO_SOCKET_IFNAME=ib0

# --kill-on-bad-exit: a primary that fails before its first stage takes the workers down with it
srun --ntasks="$SLURM_NNODES" --ntasks-per-node=1 --kill-on-bad-exit=1 bash -c '
if [ "$SLURM_NODEID" = 0 ]; then
  exec kedro run --pipelines=distill --env "$ENV" \
    --params "distributed.nproc=$NPROC,distributed.nnodes=$SLURM_NNODES,distributed.endpoint=$ENDPOINT"
else
  exec python -m disback_pipeline.worker --endpoint "$ENDPOINT" --nproc-per-node "$NPROC"
fi'
