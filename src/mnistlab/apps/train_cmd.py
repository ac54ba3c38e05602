"""``mnistlab train``: resolve the settings, find the data, run the one training loop."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from mnistlab.config import PRESETS, Config, all_keys, resolve, set_value, to_toml, validate
from mnistlab.errors import ConfigError, DataError


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "train",
        help="train a model (default: the classic 784-500-10 MLP on MNIST)",
        description="Train a preset, optionally changed by a TOML file and --set overrides.",
        epilog="settings: " + ", ".join(all_keys()),
    )
    p.add_argument("--preset", choices=list(PRESETS), default=None,
                   help="starting point (default: seed-mlp, or the preset named in --config)")
    p.add_argument("--config", metavar="FILE", help="TOML file of settings ([train] steps = 2000 ...)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting, e.g. --set train.steps=2000 --set optim.lr=0.2")
    p.add_argument("--dataset", metavar="NAME",
                   help="mnist, fashion-mnist, kmnist or mnist-sample (default: mnist, falling back "
                        "to the bundled mnist-sample when MNIST cannot be found or downloaded)")
    p.add_argument("--data-dir", metavar="DIR", help="folder holding the four IDX files")
    p.add_argument("--device", metavar="DEVICE", help="auto (default), cpu or cuda")
    p.add_argument("--json", action="store_true",
                   help="print the final figures as one JSON object on the last line")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-evaluation lines")
    p.add_argument("--run-dir", metavar="DIR",
                   help="where this run keeps its config, checkpoints and logs "
                        "(default: runs/<date-time>-<preset>)")
    add_checkpoint_args(p)
    add_tracking_args(p)
    add_parallel_args(p)
    p.set_defaults(func=run_train)


# -- checkpoints and resume (io.checkpoint) --------------------------------------------------------
def add_checkpoint_args(p: argparse.ArgumentParser) -> None:
    """Flags for checkpoints and resume."""


def checkpoint_callbacks(args: argparse.Namespace, config: Config, run_dir: Path) -> list[Any]:
    return []


def resume_state(args: argparse.Namespace, config: Config) -> tuple[Config, dict[str, Any] | None]:
    """The state to resume from (and the config it was saved with), or ``None``."""
    return config, None


# -- tracking (io.tracking) --------------------------------------------------------------------------
def add_tracking_args(p: argparse.ArgumentParser) -> None:
    """Flags for TensorBoard and metrics files."""


def tracking_callbacks(args: argparse.Namespace, config: Config, run_dir: Path) -> list[Any]:
    return []


# -- parallel modes (parallel) -----------------------------------------------------------------------
def add_parallel_args(p: argparse.ArgumentParser) -> None:
    """Flags for the parallel modes."""


def make_strategy(args: argparse.Namespace, config: Config) -> Any:
    """The strategy for ``config.parallel.mode``; ``None`` means one process."""
    return None


def new_run_dir(config: Config) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{stamp}-{config.preset}"


def prepare_run_dir(path: Path, config: Config, is_main: bool) -> Path:
    """Create the run folder and save the resolved settings in it as ``config.toml``."""
    if is_main:
        try:
            path.mkdir(parents=True, exist_ok=True)
            (path / "config.toml").write_text(to_toml(config), encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot write the run folder {path}: {exc.strerror or exc}") from None
    return path


def config_from_args(args: argparse.Namespace) -> Config:
    overrides = list(args.overrides)
    config = resolve(args.preset, args.config, overrides)
    if args.dataset:
        config = set_value(config, "data.dataset", args.dataset)
    if args.data_dir:
        config = set_value(config, "data.data_dir", args.data_dir)
    if args.device:
        config = set_value(config, "train.device", args.device)
    return validate(config)


def load_data(config: Config, *, quiet: bool = False) -> tuple[Config, Any]:
    """Load the configured dataset. With ``dataset = auto``, full MNIST when it can be found or
    downloaded, else the bundled sample, said in one highlighted line."""
    from mnistlab.apps.data_cmd import download_progress
    from mnistlab.data import load_splits
    from mnistlab.train import resolve_device

    d = config.data
    device = resolve_device(config.train.device)
    progress = None if quiet else download_progress()
    if d.dataset != "auto":
        return config, load_splits(d.dataset, d.data_dir, validation_size=d.validation_size,
                                   download=d.download, device=device, progress=progress)
    try:
        data = load_splits("mnist", d.data_dir, validation_size=d.validation_size,
                           download=d.download, device=device, progress=progress)
    except DataError as exc:
        if d.data_dir:
            raise
        first = str(exc).splitlines()[0]
        highlight = "\033[1;33m" if sys.stderr.isatty() else ""
        reset = "\033[0m" if highlight else ""
        print(f"{highlight}mnistlab: full MNIST is not available ({first}); training on the bundled "
              f"mnist-sample (4,000 digits) instead. `mnistlab data download mnist` or "
              f"--data-dir DIR gives the full dataset.{reset}", file=sys.stderr)
        data = load_splits("mnist-sample", validation_size=d.validation_size, device=device)
    return set_value(config, "data.dataset", data.name), data


def run_train(args: argparse.Namespace) -> int:
    from mnistlab.io.console import ConsoleCallback, summary_table
    from mnistlab.train import train

    config = config_from_args(args)
    config, state = resume_state(args, config)
    strategy = make_strategy(args, config)
    is_main = strategy is None or strategy.is_main
    config, data = load_data(config, quiet=args.quiet or not is_main)
    run_dir = prepare_run_dir(Path(args.run_dir) if args.run_dir else new_run_dir(config), config,
                              is_main)
    callbacks = [ConsoleCallback(quiet=args.quiet)]
    callbacks += checkpoint_callbacks(args, config, run_dir)
    callbacks += tracking_callbacks(args, config, run_dir)
    result = train(config, data, strategy=strategy, callbacks=callbacks, resume_state=state)
    if not is_main:
        return 0
    summary = result.summary() | {"run_dir": str(run_dir)}
    if not args.quiet:
        print(summary_table(summary, title=f"mnistlab {config.preset} on {data.name}"))
    if args.json:
        print(json.dumps(summary))
    return 0
