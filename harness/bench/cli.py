"""The benchmark's entry point: parse the one config, fill the suite's defaults, run the suite, write its
outputs. The zoo suite is here (it is the loop over rows); the data and ddp suites have their own modules."""
from __future__ import annotations

import datetime as dt
import os
import sys
from pathlib import Path

import torch

from harness.bench.specs import BenchConfig, check, ladder_specs, resolve_defaults, sweep_specs
from harness.cli import parse_args
from harness.config import to_dict
from harness.errors import UserError

USAGE = "python -m harness.bench [--config FILE.yaml] [--out DIR] [suite=zoo|data|ddp] [key=value ...]"


def default_out() -> str:
    return str(Path("runs") / f"bench-{dt.datetime.now(dt.timezone.utc).strftime('%Y%m%d-%H%M%S')}")


def main(argv: list[str] | None = None):
    cfg = parse_args(BenchConfig, argv, prog="python -m harness.bench", usage=USAGE)
    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    resolve_defaults(cfg, device_type)
    check(cfg)
    setting = fix_threads(cfg, device_type)
    if cfg.suite != "zoo":
        from harness.provenance import device_names

        device = torch.device(device_type)
        out = Path(cfg.out or default_out())
        if cfg.suite == "data":
            from harness.bench import data_suite

            return data_suite.main(cfg, out, device, device_names()[0], setting)
        from harness.bench import ddp_suite

        return ddp_suite.main(cfg, out, device_names()[0], setting)
    return zoo(cfg, setting)


def fix_threads(cfg: BenchConfig, device_type: str) -> dict:
    """Every suite runs with a fixed, recorded thread count (harness.provenance: 1 per process on a CPU);
    returns what every row records: threads per process and the launcher."""
    from harness.provenance import default_threads, launcher, set_threads

    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    n = cfg.threads or default_threads(device_type, local)
    set_threads(n, f"harness.bench threads={cfg.threads or 'auto'}")
    return {"threads": n, "launcher": launcher()}


def zoo(cfg: BenchConfig, setting: dict) -> list[dict]:
    from accelerate.utils import broadcast_object_list

    from harness import sanity
    from harness.bench.measure import Context, add_speedups, make_accelerator, measure_group
    from harness.bench.outputs import write_csv
    from harness.bench.peaks import device_peaks
    from harness.bench.sources import num_workers
    from harness.bench.specs import group_specs
    from harness.console import Progress
    from harness.provenance import device_names, provenance
    from harness.run.tracker import wandb_importable, wandb_mode
    from harness.tables import write_json

    specs = sweep_specs(cfg) + ladder_specs(cfg)  # every name checked before anything runs
    # one Accelerator for topology and DDP; precision and compile vary per row, so they stay out of it
    accelerator = make_accelerator()
    device, world, rank = accelerator.device, accelerator.num_processes, accelerator.process_index
    main_proc = accelerator.is_main_process
    torch.backends.cudnn.benchmark = True  # fixed shapes: autotune once, during warm-up
    out = [cfg.out or default_out()]
    broadcast_object_list(out)  # one directory for all ranks
    out = Path(out[0])
    suffix = "" if world == 1 else f"-world{world}"
    names = {"csv": f"bench{suffix}.csv", "json": f"bench{suffix}.json", "md": f"report{suffix}.md",
             "images_per_s": f"images_per_s{suffix}.png", "ladder": f"ladder{suffix}.png"}
    device_name = device_names()[device.index or 0] if device.type == "cuda" else device_names()[0]

    peaks, peak_figures = device_peaks({s.precision for s in specs}, device, device_name, cfg.peak)
    ctx = Context(cfg, accelerator, device, rank, world, peaks, device_name, setting=setting)
    env = {"provenance": provenance(world, device), "config": to_dict(cfg), "device_type": device.type,
           "peaks": peak_figures, "num_workers": num_workers(cfg.num_workers), "cudnn_benchmark": True, **setting}
    run = None
    progress = Progress(len(specs), desc="bench", unit="row", show=main_proc and cfg.run.progress, every_s=0)
    if main_proc:
        out.mkdir(parents=True, exist_ok=True)
        if cfg.run.wandb and wandb_importable():  # the GPU image may have no wandb: one warning, no tracking
            import wandb

            run = wandb.init(project=cfg.run.wandb_project, dir=str(out), mode=wandb_mode(), name=out.name + suffix,
                             job_type="bench", config={**to_dict(cfg), "world_size": world, "device": device_name})
        print(f"{len(specs)} rows on {device_name} x {world}, {setting['threads']} thread(s) per process "
              f"({setting['launcher']}); MFU peaks: "
              + ", ".join(f"{p} {v[0]:.2f} TFLOP/s ({v[1]}; measured matmul {v[2]:.2f})" for p, v in peaks.items())
              + f" | out {out}", file=sys.stderr)

    rows = []
    for group in group_specs(specs, cfg.rounds):
        measured = measure_group(group, ctx)
        rows += measured
        if not main_proc:
            continue
        add_speedups(measured)  # a ladder is one group: its rungs are all in `measured`
        env["data_source"] = ctx.images.source
        # after every group: a run stopped half-way keeps what it measured, in both files
        write_csv(out / names["csv"], rows)
        write_json(out / names["json"], {"environment": env, "rows": rows})
        for row in measured:
            spec = f"{row['model']} {row.get('rung') or row['mode']} b{row['batch_size']} {row['precision']}"
            if run:
                run.log({k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
            progress.update(1, row=spec)
            if row.get("error"):
                progress.write(f"{spec}: {row['error']}")
            sanity.warn(spec, row.get("flags"))
    progress.close()
    if main_proc:
        write_outputs(rows, env, out, names, run, cfg, world, device_name)
    # every rank ends together and leaves its process group cleanly: a rank that exits while another still
    # writes once aborted in gloo's teardown ("terminate called without an active exception")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    failed = [r for r in rows if r.get("error")]
    if failed and main_proc:
        raise UserError(f"{len(failed)} of {len(rows)} rows failed ({', '.join(sorted({r['model'] for r in failed}))}); "
                        f"see the error column of {out / names['csv']}")
    return rows


def write_outputs(rows, env, out, names, run, cfg, world, device_name) -> None:
    """The main process's files at the end: scaling efficiency and its checks, plots, CSV, JSON, report."""
    from harness import sanity
    from harness.bench.measure import add_scaling
    from harness.bench.outputs import COLUMNS, plot_images_per_s, plot_ladder, to_markdown, write_csv
    from harness.tables import write_json

    if world > 1:
        env["scaling_note"], added = add_scaling(rows, Path(cfg.baseline) if cfg.baseline else out / "bench.csv")
        for row, flags in added:
            sanity.warn(f"{row['model']} {row['mode']} x{world}", flags)
    plotted = {"images_per_s": plot_images_per_s(rows, out / names["images_per_s"], device_name),
               "ladder": plot_ladder(rows, out / names["ladder"], device_name)}
    names_written = {k: v for k, v in names.items() if plotted.get(k, True)}
    write_csv(out / names["csv"], rows)
    write_json(out / names["json"], {"environment": env, "rows": rows})
    report = to_markdown(rows, env, names_written)
    (out / names["md"]).write_text(report)
    if run:
        import wandb

        run.log({"results": wandb.Table(columns=COLUMNS, data=[[r.get(c) for c in COLUMNS] for r in rows])})
        for key in ("images_per_s", "ladder"):
            if plotted[key]:
                run.log({key: wandb.Image(str(out / names[key]))})
        run.finish()
    print(report)
    print(f"wrote {', '.join(str(out / n) for n in names_written.values())}", file=sys.stderr)
