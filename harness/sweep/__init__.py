"""Sweeps: many training runs from one YAML, run here, as a Slurm job array, or by W&B agents.

    python -m harness.sweep configs/sweeps/X.yaml [dry_run=true] [launcher=local|slurm|wandb]
                            [out=DIR] [index=I] [threads_per_process=N] [training.key=value ...]

The sweep's own options are key=value like every harness CLI (harness/cli.py; `--help` lists them,
`--out DIR` is out=DIR); any other key=value is a training override added to every run.

A sweep file loads into `Sweep` below and is checked like any config (unknown keys name themselves):

    name: architectures             # default: the file's stem; also the W&B group of every run
    config: configs/resnet18.yaml   # base training recipe (optional; the dataclass defaults otherwise)
    out: runs/sweeps/architectures  # default runs/sweeps/<name>; each run lives in <out>/<run name>
    overrides: {train.epochs: 20}   # fixed for every run; key=value on the command line adds to these
    threads_per_process: 0          # CPU threads of every process of every run (OMP/MKL_NUM_THREADS), the
                                    # same at any process count and recorded in each run's provenance.json;
                                    # 0: over the largest process count, local: this machine's cores
                                    # (1 on a CPU), slurm: the job's --cpus-per-task (sbatch_args, else
                                    # sweep.sbatch's 16); wandb: set it (the agents' machines are unknown)
    grid:                           # cartesian product of the lists ...
      model.name: [resnet18, vgg11]
      train.batch_size: [128, 256]
    random:                         # ... or N seeded samples: a list is a choice, {min, max, log} a range
      samples: 8
      seed: 0
      space: {optim.lr: {min: 0.01, max: 0.4, log: true}, model.name: [resnet18, vgg11]}

Three keys are not training-config keys; they may stand in `overrides`, `grid` or `space`:
  gpus (alias launch.num_processes)  processes per run: every run, 1 process included, is
                                     `accelerate launch --num_processes k harness/train.py`, so a scaling
                                     sweep compares runs started the same way
  batch_per_gpu                      train.batch_size = batch_per_gpu x gpus (a scaling sweep keeps the
                                     per-GPU batch while train.batch_size stays global)
  config                             the base recipe of that run (e.g. one configs/zoo/<model>.yaml each)

Every run is validated when the sweep expands, by building its training `Config` exactly as the run
will: a bad key, a wrong type, an unknown model or a batch that does not split over its GPUs stops the
sweep before anything starts, naming the run. Every run gets `run.dir=<out>/<run name>` (the name is
made from its varied values, e.g. `resnet18-bs256-2gpu`), `run.wandb_group=<sweep name>` and
`train.resume=auto`: runs that have summary.json are skipped, unfinished ones continue from their last
checkpoint, so a stopped sweep is resumed by running the same command again.

The package, one job per module: spec.py (the sweep file, expansion, run names, one run's command), then
one module per launcher (local.py, slurm.py, wandb_launcher.py), and cli.py (the entry point).

Launchers:
  local  one run per free GPU (CUDA_VISIBLE_DEVICES per run; a run needing k GPUs waits, in order, for
         k free); on a machine without GPUs one run at a time. Failed runs are listed at the end and the
         exit status is 1; the other runs still run.
  slurm  writes <out>/commands.txt (line i = run i) and submits launch/slurm/sweep.sbatch as job
         arrays, one `sbatch --array=...` per GPU count (array tasks share one resource request).
  wandb  writes <out>/wandb_sweep.yaml for `wandb sweep` (metric: best_val_acc, the best validation accuracy, maximised) and prints how to
         start agents.
"""
from harness.sweep.cli import main
from harness.sweep.slurm import array_spec
from harness.sweep.spec import Run, Sweep, expand, load_sweep, points, run_name
from harness.sweep.wandb_launcher import wandb_definition

__all__ = ["Run", "Sweep", "array_spec", "expand", "load_sweep", "main", "points", "run_name", "wandb_definition"]
