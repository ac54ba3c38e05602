"""Rebuild the pretrained models that ship inside mnistlab (``src/mnistlab/pretrained/``).

Each model is trained by one ``mnistlab train`` command of this checkout's code (a preset, a
seed, the full dataset); the weights its final checkpoint evaluates with (the moving average's
where the run kept one) are written as a weights-only checkpoint (no optimizer state, data order
or random state: they cannot be resumed, and are a quarter to half the size), read back, and
evaluated on the test split; the command, seed, sha256, size and test accuracy go into
``manifest.json`` beside the files. ``tests/test_pretrained.py`` checks the files against the
manifest, and (slow) that the recorded command gives the recorded accuracy again.

    python scripts/make_pretrained.py --mnist-dir ../shared/data/mnist     # cnn, mlp, fashion
    python scripts/make_pretrained.py --mnist-dir ../shared/data/mnist --only cnn

Fashion-MNIST comes from ``--fashion-dir`` (default: /usr/share/datasets/fashion-mnist, where
``apt-get install dataset-fashion-mnist`` puts it); without it the fashion model is left as it
is. Run it again whenever the checkpoint format changes: the files must be ones mnistlab writes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

from mnistlab import __version__  # noqa: E402
from mnistlab.apps.environment import cpu_name  # noqa: E402
from mnistlab.data import load_splits  # noqa: E402
from mnistlab.io.checkpoint import (  # noqa: E402
    load_checkpoint,
    load_model,
    resolve_checkpoint,
    save_checkpoint,
    weights_only,
)
from mnistlab.pretrained import MANIFEST  # noqa: E402

SEED = 1
THREADS = 1
"""Pinned: a convolution sums in another order with another thread count (the last digits of an
accuracy can move), train.threads=0 would follow the machine's load, and one thread is there on
every machine (and waits for no other on a busy one)."""
SHARED_MNIST = ROOT.parent / "shared" / "data" / "mnist"
SYSTEM_FASHION = Path("/usr/share/datasets/fashion-mnist")


@dataclass(frozen=True)
class Recipe:
    name: str
    preset: str
    dataset: str
    title: str

    def args(self, run_dir: str) -> list[str]:
        """The ``mnistlab train`` arguments (after ``mnistlab``)."""
        return [
            "train",
            "--preset",
            self.preset,
            "--dataset",
            self.dataset,
            "--set",
            f"train.seed={SEED}",
            "--set",
            f"train.threads={THREADS}",
            "--run-dir",
            run_dir,
            "--json",
            "--quiet",
            "--no-tensorboard",
        ]

    def command(self) -> str:
        """The command as a person types it (``DIR``: the dataset's folder; ``RUN``: any new
        folder)."""
        return "MNISTLAB_DATA=DIR mnistlab " + " ".join(self.args("RUN"))


RECIPES = {
    r.name: r
    for r in (
        Recipe("cnn", "speedrun", "mnist", "the speedrun preset's cnn on MNIST"),
        Recipe("mlp", "seed-mlp", "mnist", "the seed-mlp preset (784-500-10, EMA) on MNIST"),
        Recipe("fashion", "speedrun", "fashion-mnist", "the speedrun cnn on Fashion-MNIST"),
    )
}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_accuracy(checkpoint: str | Path, dataset: str, data_dir: str | Path) -> float:
    """The checkpoint's accuracy on the dataset's test split (moving-average weights where the
    run kept them, as training reports it)."""
    model, _ = load_model(checkpoint)
    test = load_splits(dataset, data_dir).test
    right = 0
    with torch.no_grad():
        for start in range(0, len(test.labels), 1000):
            images = test.images[start : start + 1000].cpu()
            labels = test.labels[start : start + 1000].cpu()
            right += int((model(images).argmax(1) == labels).sum())
    return right / len(test.labels)


def train(recipe: Recipe, data_dir: Path, run_dir: Path) -> dict:
    """Run the recipe's command in a fresh process; its final JSON line."""
    env = dict(os.environ, MNISTLAB_DATA=str(data_dir))
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "mnistlab", *recipe.args(str(run_dir))]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"{recipe.name}: training failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def build(recipe: Recipe, data_dir: Path) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"pretrained-{recipe.name}-") as tmp:
        run_dir = Path(tmp) / "run"
        start = time.perf_counter()
        figures = train(recipe, data_dir, run_dir)
        seconds = time.perf_counter() - start
        target = MANIFEST.parent / f"{recipe.name}.pt"
        final = load_checkpoint(resolve_checkpoint(run_dir))
        save_checkpoint(target, weights_only(final.state))
    accuracy = test_accuracy(target, recipe.dataset, data_dir)
    if abs(accuracy - figures["test_accuracy"]) > 1e-9:
        sys.exit(
            f"{recipe.name}: the written file scores {accuracy:.4%} where training reported "
            f"{figures['test_accuracy']:.4%}"
        )
    return {
        "file": target.name,
        "title": recipe.title,
        "preset": recipe.preset,
        "dataset": recipe.dataset,
        "seed": SEED,
        "steps": figures["steps"],
        "command": recipe.command(),
        "sha256": sha256(target),
        "bytes": target.stat().st_size,
        "test_accuracy": accuracy,
        "validation_accuracy": figures["validation_accuracy"],
        "weights": "ema" if figures.get("ema_weights") else "raw",
        "built_with": {
            "mnistlab": __version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpu": cpu_name(),
            "seconds": round(seconds, 1),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mnist-dir", default=str(SHARED_MNIST), help="full MNIST's folder")
    parser.add_argument("--fashion-dir", default=str(SYSTEM_FASHION))
    parser.add_argument("--only", nargs="+", choices=list(RECIPES), help="rebuild these only")
    args = parser.parse_args()
    folders = {"mnist": Path(args.mnist_dir), "fashion-mnist": Path(args.fashion_dir)}
    manifest = json.loads(MANIFEST.read_text()) if MANIFEST.exists() else {"models": {}}
    for name in args.only or list(RECIPES):
        recipe = RECIPES[name]
        folder = folders[recipe.dataset]
        if not any(folder.glob("train-images-idx3-ubyte*")):
            print(f"{name}: skipped: {recipe.dataset} is not in {folder}")
            continue
        print(f"{name}: {recipe.command().replace('DIR', str(folder), 1)}", flush=True)
        entry = build(recipe, folder)
        manifest["models"][name] = entry
        print(
            f"{name}: {entry['file']}, {entry['bytes']:,} bytes, test accuracy "
            f"{entry['test_accuracy']:.2%}, sha256 {entry['sha256'][:16]}...",
            flush=True,
        )
        manifest["about"] = (
            "Models that ship with mnistlab (pretrained:NAME); rebuilt by "
            "scripts/make_pretrained.py. 'command' is what trained each one: DIR is the "
            "dataset's folder, RUN a new folder; the file is its last checkpoint's weights "
            "(weights-only)."
        )
        MANIFEST.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
