"""W&B tracking, checked on real offline runs of `python -m harness.train`: the namespaced keys, the
define_metric step axis and summaries, the run summary holding summary.json, and a resumed run continuing
the same W&B run. An offline run keeps everything in its `run-<id>.wandb` transaction log (wandb 0.31
writes no summary file offline), read here record by record. Also: when W&B counts as online."""
from __future__ import annotations

import json
import struct
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
            out["history"].append({"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in r.history.item})
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
    # every row carries the optimiser step, matching metrics.jsonl's rows in order
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [h["train/global_step"] for h in rec["history"]] == [r["step"] for r in rows[:len(rec["history"])]]
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
    steps = [h["train/global_step"] for h in second["history"]]
    assert steps and min(steps) > max(h["train/global_step"] for h in read_offline_run(first[0])["history"])


def test_rows_and_summary_follow_the_metrics_schema(two_runs):
    run, _, _ = two_runs
    summary = json.loads((run / "summary.json").read_text())
    assert tuple(summary) == metrics.SUMMARY_KEYS  # every key, in the schema's order
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {r["kind"] for r in rows} == {"step", "epoch"}
    for r in rows:  # with a validation split every key of its kind is there, and nothing else
        # (but test_subset_acc, which needs a data.test_subset file: these runs have none)
        assert set(r) - {"kind"} == set(metrics.WANDB_KEYS[r["kind"]]) - {"test_subset_acc"}, r
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
