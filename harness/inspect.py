"""Look inside a trained run: `python -m harness.inspect RUN_DIR [out=DIR] [weights=last|best] [data.root=D] [images=4]`.

Loads the run's weights (`harness.models.load_run`: the last epoch's, or with weights=best the best
validation epoch's; EMA when present) and its test set (the run's
config.yaml: dataset, root, format, data.classes), evaluates every test image once, and writes to out
(default runs/inspect-<run name>, or -best with weights=best: never into the run, which may be a published
one under docs/):
  filters.png        the first layer's filters as an RGB grid (003/004 "visualise learned filters")
  feature_maps.png   for a few test images, the mean activation of each stage (`harness.training.freeze.stages`)
  confusion.png      the confusion matrix (rows: true class, share of the row; numbers: counts)
  confusion.csv      the same counts
  misclassified.png  the most confidently misclassified test images, with true and predicted class
  inspect.md         the page tying them together, with test accuracy and per-class accuracy
Runs on the CPU unless CUDA is available; a CIFAR test set takes seconds to a minute.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml

from harness import config as C, tables
from harness.cli import parse_args, run_cli
from harness.data.loaders import normalise
from harness.errors import UserError


def load_test_set(run_dir: Path, data_root: str | None):
    """The run's test split, chosen exactly as its training did (dataset, root, format, data.classes)."""
    from harness.data.cifar import load_dataset, select_classes

    cfg = C.from_dict(C.Config, yaml.safe_load((run_dir / "config.yaml").read_text()))
    if cfg.data.backend == "synthetic":
        raise UserError(f"{run_dir} trained on synthetic images: there is no test set to inspect")
    ds = load_dataset(cfg.data.dataset, data_root or cfg.data.root, cfg.data.format, cfg.data.verify)
    return select_classes(ds, cfg.data.classes)


@torch.no_grad()
def predict(model, images: np.ndarray, device, batch: int = 500) -> np.ndarray:
    """Softmax probabilities (N, classes) for every image."""
    out = [torch.softmax(model(normalise(torch.from_numpy(images[i:i + batch]).to(device))).float(), 1).cpu()
           for i in range(0, len(images), batch)]
    return torch.cat(out).numpy()


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, k: int) -> np.ndarray:
    """counts[true, predicted]; sums to the number of images."""
    return np.bincount(labels * k + preds, minlength=k * k).reshape(k, k)


# ----------------------------------------------------------------------------------------------------
# figures


def plot_filters(model, path: Path) -> bool:
    """The first weight layer's filters as RGB tiles, each scaled to its own range (sign kept by the offset)."""
    plt = tables.pyplot()

    from harness.training.gradflow import weight_layers

    name, layer = weight_layers(model)[0]
    w = layer.weight.detach().float().cpu()
    if w.dim() != 4 or w.shape[1] != 3:
        return False  # not an RGB convolution: nothing meaningful to draw as an image
    n = w.shape[0]
    cols = min(16, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.9, rows * 0.9 + 0.6), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            f = w[i]
            f = (f - f.min()) / (f.max() - f.min() + 1e-12)
            ax.imshow(f.permute(1, 2, 0).numpy(), interpolation="nearest")
    fig.suptitle(f"First-layer filters: {name} ({n} x {tuple(w.shape[1:])}), each scaled to its own range")
    tables.save(fig, path)
    return True


@torch.no_grad()
def plot_feature_maps(model, images: np.ndarray, labels: np.ndarray, classes: list[str], device, path: Path) -> None:
    """Rows: test images; columns: the input, then the mean over channels of each stage's output. A stage
    that is one long Sequential (VGG's `features`) is shown at the end of each resolution inside it."""
    plt = tables.pyplot()

    from harness.training.freeze import stages

    calls: list[tuple[str, torch.Tensor]] = []  # (label, output) in call order
    hooks = []
    for name, mods in stages(model)[:-1]:  # the head's output is the logits, not a map
        parts = list(mods[-1].named_children()) if isinstance(mods[-1], torch.nn.Sequential) else []
        for label, m in [(f"{name}.{n}", c) for n, c in parts] or [(name, mods[-1])]:
            hooks.append(m.register_forward_hook(lambda m, a, out, label=label: calls.append((label, out.detach()))))
    try:
        model(normalise(torch.from_numpy(images).to(device)))
    finally:
        for h in hooks:
            h.remove()
    maps = [(label, t) for label, t in calls if isinstance(t, torch.Tensor) and t.dim() == 4]
    # keep the last map before each change of resolution or stage (and the very last one)
    shown = [(label, t) for i, (label, t) in enumerate(maps)
             if i + 1 == len(maps) or maps[i + 1][1].shape[-1] != t.shape[-1]
             or maps[i + 1][0].split(".")[0] != label.split(".")[0]]
    cols = 1 + len(shown)
    fig, axes = plt.subplots(len(images), cols, figsize=(1.9 * cols, 1.9 * len(images) + 0.5), squeeze=False)
    for r, (img, label) in enumerate(zip(images, labels)):
        axes[r, 0].imshow(img, interpolation="nearest")
        axes[r, 0].set_title(classes[label], fontsize=9)
        for c, (name, t) in enumerate(shown, start=1):
            axes[r, c].imshow(t[r].float().mean(0).cpu().numpy(), cmap="viridis", interpolation="nearest")
            if r == 0:
                axes[r, c].set_title(f"{name}\n{t.shape[1]} ch, {t.shape[2]}x{t.shape[3]}", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
    fig.suptitle("Feature maps: mean activation over channels at the end of each stage", fontsize=10)
    tables.save(fig, path)


def plot_confusion(counts: np.ndarray, classes: list[str], path: Path) -> None:
    plt = tables.pyplot()

    k = len(classes)
    share = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    size = max(5.0, 0.55 * k + 2)
    fig, ax = plt.subplots(figsize=(size, size * 0.9))
    ax.grid(False)  # a matrix of cells, not a chart: no grid lines across it
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    if k <= 20:  # counts in the cells stay readable up to CIFAR-10-like class counts
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if share[i, j] > 0.5 else "black")
        ax.set_xticks(range(k), classes, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(k), classes, fontsize=8)
    ax.set(xlabel="predicted class", ylabel="true class",
           title=f"Confusion matrix ({counts.sum()} test images; colour: share of the true class)")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    tables.save(fig, path)


def plot_misclassified(images, labels, probs, classes, path: Path, count: int = 16) -> list[int]:
    """The `count` wrong predictions made with the highest confidence; returns their test indices."""
    plt = tables.pyplot()

    preds = probs.argmax(1)
    wrong = np.flatnonzero(preds != labels)
    worst = wrong[np.argsort(-probs[wrong, preds[wrong]], kind="stable")][:count]
    if not len(worst):
        return []
    cols = min(8, len(worst))
    rows = -(-len(worst) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.7, rows * 2.0 + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, worst):
        ax.imshow(images[i], interpolation="nearest")
        ax.set_title(f"#{i} true {classes[labels[i]]}\npred {classes[preds[i]]} {100 * probs[i, preds[i]]:.0f}%",
                     fontsize=7.5)
    fig.suptitle("Most confidently misclassified test images", fontsize=10)
    tables.save(fig, path)
    return [int(i) for i in worst]


# ----------------------------------------------------------------------------------------------------


def inspect_run(run_dir: Path, out: Path, data_root: str | None = None, n_images: int = 4,
                which: str = "last") -> dict:
    import matplotlib

    from harness.models import load_run
    from harness.models.weights import run_weights

    matplotlib.use("Agg")
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"{run_dir} is not a run directory (no config.yaml)")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load_run(run_dir, which=which, device=device)
    ds = load_test_set(run_dir, data_root)
    images, labels = ds.test.images, ds.test.labels
    probs = predict(model, images, device)
    if probs.shape[1] != ds.num_classes:
        raise UserError(f"the run's model has {probs.shape[1]} outputs but its test set {ds.num_classes} classes; "
                        f"is data.root the data it trained on?")
    preds = probs.argmax(1)
    counts = confusion_matrix(labels, preds, ds.num_classes)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "confusion.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["true \\ predicted", *ds.classes])
        w.writerows([[c, *row] for c, row in zip(ds.classes, counts.tolist())])
    has_filters = plot_filters(model, out / "filters.png")
    # one image of each of the first classes present, so the rows differ
    picks = [int(np.flatnonzero(labels == c)[0]) for c in np.unique(labels)[:n_images]]
    plot_feature_maps(model, images[picks], labels[picks], ds.classes, device, out / "feature_maps.png")
    plot_confusion(counts, ds.classes, out / "confusion.png")
    worst = plot_misclassified(images, labels, probs, ds.classes, out / "misclassified.png")
    acc = float((preds == labels).mean())
    per_class = counts.diagonal() / np.maximum(counts.sum(1), 1)
    weights = run_weights(run_dir, which).name  # the file load_run loaded
    md = [f"# Inspection of {run_dir}\n",
          f"Test accuracy {100 * acc:.2f}% on {len(labels)} images ({ds.name}, weights: {weights}).\n",
          "| class | test accuracy | images |", "|---|---|---|",
          *[f"| {c} | {100 * a:.1f}% | {n} |" for c, a, n in zip(ds.classes, per_class, counts.sum(1))], ""]
    if has_filters:
        md += ["## First-layer filters\n", "![filters](filters.png)\n"]
    md += ["## Feature maps by stage\n", "![feature maps](feature_maps.png)\n",
           "## Confusion matrix\n", "Counts in [confusion.csv](confusion.csv).\n", "![confusion](confusion.png)\n"]
    if worst:
        md += ["## Most confidently misclassified\n", f"Test indices: {', '.join(map(str, worst))}.\n",
               "![misclassified](misclassified.png)\n"]
    (out / "inspect.md").write_text("\n".join(md))
    return {"test_acc": acc, "confusion": counts, "misclassified": worst}


@dataclass
class InspectData:
    root: str = ""  # the data directory ("": the run's own data.root)


@dataclass
class InspectOptions:
    run: str = ""  # the finished run directory to inspect (required; the bare word on the command line)
    out: str = ""  # where the PNGs, confusion.csv and inspect.md go ("": runs/inspect-<run name>[-best])
    images: int = 4  # test images in the feature-map figure
    weights: str = C.choices("last", "best", default="last")  # the last epoch's weights, or the best validation epoch's (best.safetensors: runs with data.val_size > 0)
    data: InspectData = field(default_factory=InspectData)


USAGE = "python -m harness.inspect RUN_DIR [out=DIR] [weights=last|best] [data.root=D] [images=4]"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(InspectOptions, argv, prog="python -m harness.inspect", usage=USAGE, positional="run")
    if not args.run:
        raise UserError(f"name one finished run directory; usage: {USAGE}")
    if args.images < 1:
        raise C.ConfigError(f"images={args.images}: at least 1 test image for the feature maps")
    run = Path(args.run)
    out = Path(args.out or Path("runs") / f"inspect-{run.resolve().name}{'-best' if args.weights == 'best' else ''}")
    result = inspect_run(run, out, args.data.root or None, args.images, args.weights)
    print(f"{out / 'inspect.md'}: test accuracy {100 * result['test_acc']:.2f}%, "
          f"{len(result['misclassified'])} misclassified shown")


if __name__ == "__main__":
    run_cli(main)
