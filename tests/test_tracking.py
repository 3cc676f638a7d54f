"""W&B tracking, checked on real offline runs of `python -m harness.train`: the namespaced keys, the
define_metric step axis and summaries, the run summary holding summary.json, a resumed run continuing
the same W&B run at the steps after the last one's (one history, offline too), the segments in metrics.jsonl,
`python -m harness.sync` joining the offline starts, and training without wandb installed. An offline run
keeps everything in its `run-<id>.wandb` transaction log (wandb 0.31 writes no summary file offline), read
here record by record. Also: when W&B counts as online."""
from __future__ import annotations

import json
import os
import struct
import sys
import types
from pathlib import Path

import pytest

from conftest import FAST, make_cifar, run_harness
from harness.run import metrics
from harness.run.metrics import wandb_key
from harness.run.tracker import wandb_mode


def wandb_records(path: Path):
    """The protobuf records of a .wandb file: a LevelDB-style log (7-byte file header ':W&B', 0xBEE1,
    version; 32 KiB blocks; each chunk a 7-byte header crc32/length/type, type 1 full, 2 first, 3 middle,
    4 last; a block tail shorter than a header is padding)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    ident, magic, _ = struct.unpack("<4sHB", data[:7])
    assert (ident, magic) == (b":W&B", 0xBEE1), "not a W&B transaction log"
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            break
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def read_offline_run(path: Path) -> dict:
    """{'id', 'name', 'config', 'history': [row dicts], 'summary': final summary, 'metrics': {name or glob:
    MetricRecord}, 'exit_code'} (the config without wandb's own `_` keys, as its public API shows it)."""
    out = {"id": None, "name": None, "config": {}, "history": [], "summary": {}, "metrics": {}, "exit_code": None}
    for r in wandb_records(path):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            out["id"], out["name"] = r.run.run_id, r.run.display_name
        elif kind == "config":
            out["config"].update({i.key: json.loads(i.value_json) for i in r.config.update if not i.key.startswith("_")})
        elif kind == "exit":
            out["exit_code"] = r.exit.exit_code
        elif kind == "history":
            row = {"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in r.history.item}
            out["history"].append({**row, "_step": r.history.step.num})
        elif kind == "summary":
            for item in r.summary.update:
                out["summary"]["/".join(item.nested_key) or item.key] = json.loads(item.value_json)
        elif kind == "metric":
            out["metrics"][r.metric.name or r.metric.glob_name] = r.metric
    return out


def offline_runs(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """One epoch, then the same run directory resumed for a second (train.resume=auto), W&B on."""
    tmp = tmp_path_factory.mktemp("tracking")
    data = make_cifar(tmp / "data", learnable=True)
    run = tmp / "run"
    common = [*FAST, "run.wandb=true", "run.log_every=2", "data.val_size=64", f"data.root={data}",
              "data.download=false", f"run.dir={run}"]
    run_harness([*common, "train.epochs=1"])
    first = offline_runs(run)
    run_harness([*common, "train.resume=auto", "train.epochs=2"])
    return run, first, offline_runs(run)


def test_rows_use_train_val_test_perf_namespaces(two_runs):
    run, first, _ = two_runs
    assert len(first) == 1
    rec = read_offline_run(first[0])
    keys = set().union(*rec["history"])
    assert {"train/loss", "train/acc", "train/lr", "train/epoch", "train/global_step", "val/acc", "val/loss",
            "test/acc", "test/loss", "perf/images_per_s", "perf/step_ms", "perf/data_ms", "perf/peak_mem_mb",
            "perf/epoch_s"} <= keys
    assert not [k for k in keys if not k.startswith(("train/", "val/", "test/", "perf/", "_"))], keys
    # every row is logged at its optimiser step (W&B's _step), the rows of one step (the epoch's last step
    # row and its epoch row) in one W&B row: metrics.jsonl's first start, step by step
    rows = metrics.read_rows(run / "metrics.jsonl")
    ours = rows[1:rows.index(next(r for r in rows[1:] if r["kind"] == "segment"))]
    at = {h["_step"]: h for h in rec["history"]}
    assert list(at) == sorted({r["step"] for r in ours}) and len(at) == len(rec["history"])
    for r in ours:
        for key, value in metrics.to_wandb(r).items():
            assert at[r["step"]][key] == pytest.approx(value), (r, key)
    assert all(h["train/global_step"] == step for step, h in at.items())
    epoch_row = next(r for r in rows if r["kind"] == "epoch")
    logged = next(h for h in rec["history"] if "val/acc" in h)
    assert logged["val/acc"] == pytest.approx(epoch_row["val_acc"])
    assert logged["test/loss"] == pytest.approx(epoch_row["test_loss"])
    assert logged["train/epoch_loss"] == pytest.approx(epoch_row["train_loss"])


def test_define_metric_sets_the_step_axis_and_summaries(two_runs):
    _, first, _ = two_runs
    rec = read_offline_run(first[0])
    assert rec["metrics"]["*"].step_metric == "train/global_step"
    val = rec["metrics"]["val/acc"].summary
    assert val.max and val.last and not val.min
    assert rec["metrics"]["train/loss"].summary.min and rec["metrics"]["val/loss"].summary.min
    assert not rec["metrics"]["test/acc"].summary.max  # the test set is never maximised over
    vals = [h["val/acc"] for h in rec["history"] if "val/acc" in h]
    assert rec["summary"]["val/acc"]["max"] == pytest.approx(max(vals))


def test_summary_holds_everything_summary_json_holds(two_runs):
    run, _, both = two_runs
    summary = json.loads((run / "summary.json").read_text())
    final = read_offline_run(both[-1])["summary"]
    for key in ("best_val_acc", "time_to_target_s", "train_images_per_s", "test_acc", "val_acc", "wall_s"):
        assert key in summary  # the names a user looks for are in summary.json ...
    for key, value in summary.items():  # ... and every one of them is in the W&B summary
        assert key in final, key
        if isinstance(value, float):
            assert final[key] == pytest.approx(value), key
        else:
            assert final[key] == value, key


def test_a_resumed_run_continues_the_same_wandb_run(two_runs):
    run, first, both = two_runs
    assert len(both) == 2  # one offline folder per process start, as wandb writes them ...
    ids = {read_offline_run(p)["id"] for p in both}
    assert ids == {(run / "wandb_id").read_text().strip()}  # ... both for one run id: `wandb sync` joins them
    second = read_offline_run(both[-1] if both[0] == first[0] else both[0])
    earlier = read_offline_run(first[0])["history"]
    # one history: the second start's first W&B step comes after the first start's last, and W&B's step is
    # the optimiser step in both (wandb would otherwise restart the second at _step 0)
    assert second["history"] and second["history"][0]["_step"] > earlier[-1]["_step"]
    assert [h["_step"] for h in earlier + second["history"]] == sorted({h["_step"] for h in earlier + second["history"]})
    assert all(h["_step"] == h["train/global_step"] for h in earlier + second["history"])


def test_metrics_jsonl_records_each_start_as_a_segment(two_runs):
    run, _, _ = two_runs
    rows = metrics.read_rows(run / "metrics.jsonl")
    segments = [r for r in rows if r["kind"] == "segment"]
    assert [tuple(r) for r in segments] == [metrics.SEGMENT_KEYS] * 2
    first_end = max(r["step"] for r in rows[:rows.index(segments[1])])
    assert [(s["segment"], s["step"]) for s in segments] == [(0, 0), (1, first_end)]  # resumed at the epoch end
    assert segments[0]["resumed_from"] is None and segments[1]["resumed_from"].endswith(f"step-{first_end:09d}")
    assert {s["wandb_id"] for s in segments} == {(run / "wandb_id").read_text().strip()}


def test_only_steps_wandb_lacks_are_sent_after_a_killed_start():
    """A start killed after logging steps 6 and 8 but before its checkpoint at 8 was written: the resumed
    start (from step 4) re-runs 5..8; W&B run `a` has up to 8, so only rows after 8 go to it. A start that
    logged to another W&B run (or none) does not count."""
    rows = [metrics.segment_row([], 0, None, "a", "t0"), {"kind": "step", "step": 2}, {"kind": "step", "step": 4},
            {"kind": "epoch", "step": 4}, {"kind": "step", "step": 6}, {"kind": "step", "step": 8}]
    resumed = metrics.segment_row(rows, 4, Path("checkpoints/step-000000004"), "a", "t1")
    assert (resumed["segment"], resumed["step"], resumed["resumed_from"]) == (1, 4, "checkpoints/step-000000004")
    assert metrics.wandb_floor(rows, "a") == 8 and metrics.wandb_floor(rows, "b") == -1
    off = rows + [metrics.segment_row(rows, 8, None, None, "t2"), {"kind": "step", "step": 10}]
    assert metrics.wandb_floor(off, "a") == 8  # steps logged with tracking off are not in W&B


def test_the_record_as_it_stands_takes_the_resumed_starts_rows():
    """metrics.jsonl is append-only: the rows a killed start wrote after its last checkpoint (steps 6, 8) stay
    in the file, but the run as it stands is the resumed start's (from step 4); an evaluation cut short and
    redone at one step counts once, the later one."""
    rows = [metrics.segment_row([], 0, None, "a", "t0"), {"kind": "step", "step": 2}, {"kind": "epoch", "step": 4},
            {"kind": "step", "step": 6, "loss": 1.0}, {"kind": "step", "step": 8, "loss": 1.0}]
    rows += [metrics.segment_row(rows, 4, Path("checkpoints/step-000000004"), "a", "t1"),
             {"kind": "step", "step": 6, "loss": 0.5}, {"kind": "step", "step": 8, "loss": 0.5},
             {"kind": "epoch", "step": 8, "test_acc": 0.1}, {"kind": "epoch", "step": 8, "test_acc": 0.2}]
    now = metrics.current_rows(rows)
    assert [(r["kind"], r["step"]) for r in now] == [("segment", 0), ("step", 2), ("epoch", 4), ("segment", 4),
                                                     ("step", 6), ("step", 8), ("epoch", 8)]
    assert [r.get("loss") for r in now if r["kind"] == "step"][1:] == [0.5, 0.5] and now[-1]["test_acc"] == 0.2


def test_sync_uploads_every_offline_start_into_one_run_in_start_order(two_runs, tmp_path):
    """`python -m harness.sync RUN_DIR` runs `wandb sync --id <id>` over the run's offline folders, oldest
    first: checked with a `wandb` on PATH that records its arguments."""
    run, _, both = two_runs
    fake = tmp_path / "bin" / "wandb"
    fake.parent.mkdir()
    fake.write_text(f"#!{sys.executable}\nimport json, sys\njson.dump(sys.argv[1:], open({str(tmp_path / 'argv')!r}, 'w'))\n")
    fake.chmod(0o755)
    proc = run_harness([str(run)], module="harness.sync", env={"PATH": f"{fake.parent}{os.pathsep}{os.environ['PATH']}"})
    argv = json.loads((tmp_path / "argv").read_text())
    folders = [str(p.parent) for p in both]
    assert argv == ["sync", "--id", (run / "wandb_id").read_text().strip(), *folders]
    assert folders == sorted(folders, key=lambda f: Path(f).name) and len(folders) == 2  # start time in the name
    assert proc.stdout.strip().endswith(" ".join(argv))
    nothing = run_harness([str(tmp_path)], module="harness.sync", check=False)  # not a run with W&B
    assert nothing.returncode == 2 and nothing.stderr.count("\n") == 1 and "wandb_id" in nothing.stderr


def wandb_hidden(tmp_path: Path) -> dict:
    """The environment of a subprocess in which `import wandb` fails, as on the GPU image (a sitecustomize
    that blocks the import)."""
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text("import sys\nsys.modules['wandb'] = None  # import wandb: ImportError\n")
    return {"PYTHONPATH": os.pathsep.join([str(shim), str(Path(__file__).resolve().parent.parent)])}


def wandb_lines(proc, tmp_path: Path) -> list[str]:
    """Lines that speak of W&B, but for a bench report's header lines ("- command: ... run.wandb=true",
    "- versions: ... wandb 0.31.0": installed, only not importable)."""
    out = (proc.stdout + proc.stderr).replace(str(tmp_path), "TMP")  # the test's own name holds "wandb"
    return [line for line in out.splitlines()
            if ("wandb" in line.lower() or "w&b" in line.lower()) and not line.startswith("- ")]


def test_training_without_wandb_installed_tracks_nothing_and_warns_once(tmp_path):
    """The GPU image has no wandb: with it unimportable, training with run.wandb=true (the default) runs,
    with tracking off and one warning line."""
    env = wandb_hidden(tmp_path)
    data = make_cifar(tmp_path / "data", n_train=64, n_test=32)
    run = tmp_path / "run"
    proc = run_harness([*FAST, "run.wandb=true", "data.limit_train=64", f"data.root={data}", f"run.dir={run}"], env=env)
    warnings = wandb_lines(proc, tmp_path)
    assert len(warnings) == 1 and warnings[0].startswith("warning: W&B tracking is off: wandb cannot be imported")
    assert (run / "summary.json").is_file() and not (run / "wandb").exists() and not (run / "wandb_id").exists()
    assert "wandb: false" in (run / "config.yaml").read_text()  # the record says what ran: tracking off


def test_bench_and_campaign_without_wandb_installed_run_and_warn_at_most_once(tmp_path):
    """The same for the benchmark (run.wandb=true, its default: one warning, results written) and the
    campaign (its steps never track: no warning, and its plan and steps need no wandb)."""
    env = wandb_hidden(tmp_path)
    out = tmp_path / "bench"
    proc = run_harness(["model.name=lenet5", "batch_sizes=4", "precision=fp32", "mode=infer", "compile=false",
                        "steps=1", "warmup=0", "repeats=1", "run.wandb=true", "run.progress=false", f"out={out}"],
                       module="harness.bench", env=env)
    warnings = wandb_lines(proc, tmp_path)
    assert len(warnings) == 1 and warnings[0].startswith("warning: W&B tracking is off: wandb cannot be imported")
    assert (out / "bench.csv").is_file() and not (out / "wandb").exists()
    plan = run_harness(["plan=true", "gpu=H200"], module="harness.campaign", env=env)
    assert "speed94" in plan.stdout and not wandb_lines(plan, tmp_path)
    from harness.campaign.steps import STEPS

    assert all("run.wandb=false" in step.args for step in STEPS if step.module in ("harness.bench", "harness.train"))


def test_rows_and_summary_follow_the_metrics_schema(two_runs):
    run, _, _ = two_runs
    summary = json.loads((run / "summary.json").read_text())
    assert tuple(summary) == metrics.SUMMARY_KEYS  # every key, in the schema's order
    rows = metrics.read_rows(run / "metrics.jsonl")
    assert {r["kind"] for r in rows} == {"segment", "step", "epoch"}
    for r in rows:  # with a validation split every key of its kind is there, and nothing else
        # (but test_subset_acc, which needs a data.test_subset file: these runs have none)
        assert set(r) == (set(metrics.SEGMENT_KEYS) if r["kind"] == "segment"
                          else {"kind", *metrics.WANDB_KEYS[r["kind"]]} - {"test_subset_acc"}), r
    rates = [r["images_per_s"] for r in rows if r["kind"] == "epoch"]
    assert summary["train_images_per_s"] == metrics.throughput(rates) == rates[1]  # epoch 1 holds compilation


def test_the_one_median_is_the_middle_or_the_mean_of_the_middle_two():
    assert metrics.throughput([900.0, 1000.0, 1100.0]) == 1050.0  # after the first epoch: an even count
    assert metrics.throughput([900.0, 1000.0, 1100.0, 1300.0]) == 1100.0
    assert metrics.throughput([700.0]) == 700.0 and metrics.throughput([]) is None


def test_a_run_reads_the_same_from_its_directory_and_from_its_wandb_files(two_runs):
    """harness.report's record of the two-part run: from run.dir's files, and from its two offline W&B files
    joined in order (as `wandb sync` joins them), standing in for the W&B API's Run."""
    from harness import report as R

    run, _, both = two_runs
    parts = [read_offline_run(p) for p in both]
    assert [p["exit_code"] for p in parts] == [0, 0]
    summary = {k: v for p in parts for k, v in p["summary"].items()}
    history = [h for p in parts for h in p["history"]]
    online = types.SimpleNamespace(name=parts[-1]["name"], id=parts[-1]["id"], state="finished",
                                   config=parts[-1]["config"], summary=summary, scan_history=lambda: history)
    from_files, from_wandb = R.read_run(run, run.parent), R.record_from_wandb(online, "me/harness")
    assert from_files.pop("source") == str(run) and from_wandb.pop("source").startswith("wandb:me/harness/")
    # threads and launcher come from provenance.json, which W&B does not hold
    assert (from_files.pop("threads"), from_files.pop("launcher")) == (1, "python")
    assert (from_wandb.pop("threads"), from_wandb.pop("launcher")) == (None, None)
    assert from_wandb == from_files
    # and a full record: both epochs, validation-based selection, throughput, the config
    assert from_files["epochs_done"] == 2 and from_files["status"] == "complete"
    assert from_files["best_val_acc"] is not None and from_files["test_acc_at_best_val"] is not None
    assert from_files["images_per_s"] > 0 and from_files["config"]["run"]["dir"] == str(run)


def test_keys_of_rows_added_later_get_a_namespace():
    assert wandb_key("step", "loss") == "train/loss" and wandb_key("epoch", "train_loss") == "train/epoch_loss"
    assert wandb_key("epoch", "val_top5") == "val/top5" and wandb_key("epoch", "test_top5") == "test/top5"
    assert wandb_key("step", "optimizer_ms") == "perf/optimizer_ms"
    assert wandb_key("step", "grad_norm") == "train/grad_norm"


@pytest.fixture
def clean_wandb_env(monkeypatch, tmp_path):
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL", "NETRC"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc, no wandb settings file of the user's
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    return tmp_path


def test_wandb_is_offline_without_credentials(clean_wandb_env):
    assert wandb_mode() == "offline"


def test_wandb_online_for_a_key_a_netrc_elsewhere_or_a_self_hosted_server(clean_wandb_env, monkeypatch):
    home = clean_wandb_env
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_mode() == "online"
    monkeypatch.delenv("WANDB_API_KEY")
    (home / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    assert wandb_mode() == "online"
    # self-hosted: the netrc entry must be for that host, as wandb reads it
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.org")
    assert wandb_mode() == "offline"
    elsewhere = home / "secrets" / "netrc"
    elsewhere.parent.mkdir()
    elsewhere.write_text("machine wandb.example.org login user password " + "k" * 40 + "\n")
    monkeypatch.setenv("NETRC", str(elsewhere))
    assert wandb_mode() == "online"
    # `wandb login --host` keeps the host in wandb's settings file instead of the environment
    monkeypatch.delenv("WANDB_BASE_URL")
    (home / "wandb-config").mkdir()
    (home / "wandb-config" / "settings").write_text("[default]\nbase_url = https://wandb.example.org\n")
    assert wandb_mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")  # an explicit mode always wins
    assert wandb_mode() == "disabled"


def test_a_line_cut_short_by_a_kill_ends_before_the_next_start_writes(tmp_path):
    """A kill mid-write leaves metrics.jsonl without its last newline: the next start ends that line first,
    so its segment row is whole and the cut line is the only one read_rows skips."""
    from accelerate import Accelerator

    from harness import config as C
    from harness.run.tracker import Tracker

    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"kind": "step", "step": 1}) + "\n" + '{"kind": "step", "st')
    cfg = C.load(C.Config, None, ["run.wandb=false"])
    tracker = Tracker(tmp_path, Accelerator(cpu=True), cfg, start_step=1)
    tracker.log({"kind": "step", "step": 2})
    tracker.close()
    rows = metrics.read_rows(path)
    assert [r["kind"] for r in rows] == ["step", "segment", "step"] and rows[-1]["step"] == 2
