"""``mnistlab train``: resolve the settings, find the data, run the one training loop."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mnistlab.apps.flags import flag_settings
from mnistlab.apps.resume import resume_state
from mnistlab.config import PRESETS, Config, all_keys, resolve, set_value, to_toml
from mnistlab.config.schema import PARALLEL_MODES, SCHEDULES
from mnistlab.errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "train",
        help="train a model (default: the classic 784-500-10 MLP on MNIST)",
        description="Train a preset, optionally changed by a TOML file and --set overrides.",
        epilog="settings: " + ", ".join(all_keys()),
    )
    p.add_argument(
        "--preset",
        choices=list(PRESETS),
        default=None,
        help="starting point (default: seed-mlp, or the preset named in --config)",
    )
    p.add_argument(
        "--config", metavar="FILE", help="TOML file of settings ([train] steps = 2000 ...)"
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one setting, e.g. --set train.steps=2000 --set optim.lr=0.2",
    )
    p.add_argument(
        "--dataset",
        metavar="NAME",
        help="mnist, fashion-mnist, kmnist or mnist-sample (default: mnist, falling back "
        "to the bundled mnist-sample when MNIST cannot be found or downloaded)",
    )
    p.add_argument("--data-dir", metavar="DIR", help="folder holding the four IDX files")
    p.add_argument("--device", metavar="DEVICE", help="auto (default), cpu or cuda")
    p.add_argument(
        "--json",
        action="store_true",
        help="print the final figures as one JSON object on the last line",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-evaluation lines")
    p.add_argument(
        "--run-dir",
        metavar="DIR",
        help="where this run keeps its config, checkpoints and logs "
        "(default: runs/<date-time>-<preset>); a folder holding another run is refused "
        "unless you --resume it or --overwrite it",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh in a --run-dir that holds another run, deleting its checkpoints, "
        "metrics, events and config.toml first",
    )
    p.add_argument(
        "--seeds",
        metavar="LIST",
        help="train once per seed (1-5, 1,3,7) one after another (not side by side: on a few "
        "cores parallel runs only slow each other), each in RUN/seed-N; then print per-seed "
        "results and mean, sd, min/max and a 95%% confidence interval of test accuracy and "
        "train time; Ctrl-C keeps and reports the finished seeds; no --parallel or --resume",
    )
    add_checkpoint_args(p)
    add_tracking_args(p)
    add_parallel_args(p)
    p.set_defaults(func=run_train)


# -- checkpoints and resume (io.checkpoint) --------------------------------------------------------
def add_checkpoint_args(p: argparse.ArgumentParser) -> None:
    """Flags for checkpoints and resume."""
    g = p.add_argument_group("checkpoints and resume (RUN/checkpoints/step-*.pt, best.pt)")
    g.add_argument(
        "--resume",
        metavar="DIR|FILE|auto",
        help="continue a run exactly from its latest checkpoint (a run folder), a "
        "checkpoint file, or auto: the latest run in runs/ with the same settings "
        "(a new run if there is none); the settings come from the checkpoint",
    )
    g.add_argument(
        "--checkpoint-every",
        type=int,
        metavar="N",
        default=None,
        help="steps between checkpoints, plus one at the end (default 1000; 0: only the end)",
    )
    g.add_argument(
        "--keep",
        type=int,
        metavar="K",
        default=None,
        help="how many of the latest checkpoints to keep (default 3; best.pt stays too)",
    )


def checkpoint_callbacks(args: argparse.Namespace, config: Config, run_dir: Path) -> list[Any]:
    from mnistlab.io.checkpoint import CheckpointCallback

    c = config.checkpoint
    return [CheckpointCallback(run_dir, every=c.every, keep=c.keep)]


# -- tracking (io.tracking) --------------------------------------------------------------------------
def add_tracking_args(p: argparse.ArgumentParser) -> None:
    """Flags for TensorBoard and metrics files."""
    p.add_argument(
        "--tensorboard",
        action="store_true",
        help="also start TensorBoard on the run folder (127.0.0.1) and print its address",
    )
    p.add_argument(
        "--tensorboard-port",
        type=int,
        default=None,
        metavar="PORT",
        help="port for --tensorboard (default: 6006, or a free one if it is taken)",
    )
    p.add_argument(
        "--no-tensorboard",
        action="store_true",
        help="write no TensorBoard events (same as --set tracking.tensorboard=false)",
    )


def tracking_callbacks(args: argparse.Namespace, config: Config, run_dir: Path) -> list[Any]:
    """TensorBoard events and metrics.jsonl in ``run_dir``; with --tensorboard, a live server."""
    from mnistlab.io.tracking import TrackingCallback

    no_events = getattr(args, "no_tensorboard", False)
    if no_events and getattr(args, "tensorboard", False):
        raise ConfigError("--tensorboard and --no-tensorboard contradict each other: pick one")
    events = False if no_events else (True if getattr(args, "tensorboard", False) else None)
    callbacks: list[Any] = [TrackingCallback(run_dir, tensorboard=events)]
    if getattr(args, "tensorboard", False):
        from mnistlab.apps.board_cmd import BoardCallback

        callbacks.append(BoardCallback(run_dir, port=args.tensorboard_port))
    return callbacks


# -- parallel modes (parallel) -----------------------------------------------------------------------
def add_parallel_args(p: argparse.ArgumentParser) -> None:
    """Flags for the parallel modes (docs/parallel.md)."""
    g = p.add_argument_group("parallel training (under torchrun, or --workers N local processes)")
    g.add_argument(
        "--parallel",
        metavar="MODE",
        choices=list(PARALLEL_MODES),
        default=None,
        help="none (default); data: synchronous data parallel (DDP); async: Hogwild "
        "workers on shared memory, one machine; tensor: dense layers split across "
        "workers (DTensor); pipeline: consecutive stages on different workers",
    )
    g.add_argument(
        "--workers",
        type=int,
        metavar="N",
        default=None,
        help="start N local worker processes (through torch.distributed.run); under "
        "torchrun the group's size is torchrun's and this is ignored",
    )
    g.add_argument(
        "--schedule",
        choices=list(SCHEDULES),
        default=None,
        help="pipeline schedule: gpipe (all forwards, then all backwards) or 1f1b",
    )
    g.add_argument(
        "--microbatches",
        type=int,
        metavar="M",
        default=None,
        help="pipeline micro-batches per step; must divide train.batch_size",
    )


def _check_parallel(config: Config) -> None:
    """After resume (whose checkpoint may supply the mode): workers need a parallel mode."""
    p = config.parallel
    if p.workers > 1 and p.mode == "none":
        raise ConfigError(
            f"--workers {p.workers} needs a parallel mode: add --parallel data "
            "(or async, tensor, pipeline)"
        )


def prepare_run_dir(path: Path, config: Config, is_main: bool) -> Path:
    """Create the run folder and save the resolved settings in it as ``config.toml``."""
    if is_main:
        try:
            path.mkdir(parents=True, exist_ok=True)
            (path / "config.toml").write_text(to_toml(config), encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                f"cannot write the run folder {path}: {exc.strerror or exc}"
            ) from None
    return path


def config_from_args(args: argparse.Namespace) -> Config:
    """Preset, --config, --set, then the flags that are settings (``apps.flags``), validated once."""
    config = resolve(args.preset, args.config, list(args.overrides), flag_settings(args))
    if config.data.data_dir:  # saved into checkpoints: keep it valid from any working folder
        absolute = str(Path(config.data.data_dir).expanduser().absolute())
        config = set_value(config, "data.data_dir", absolute)
    return config


# Settings that count steps: on the sample fallback they are scaled to its size (_fit_to_sample).
STEP_SETTINGS = (
    "train.steps",
    "train.eval_every",
    "train.log_every",
    "checkpoint.every",
    "tracking.histogram_every",
)


def _fit_to_sample(config: Config, num_train: int, full_train: int) -> tuple[Config, str]:
    """The preset's run measured in epochs of full MNIST, as steps on ``num_train`` digits.

    Only settings still at the preset's value are scaled (a step count the person chose stays);
    the learning-rate decay follows by itself (``decay_steps`` = digits / batch size)."""
    from mnistlab.config import flat_dict

    preset = flat_dict(PRESETS[config.preset]())
    ours = flat_dict(config)
    ratio = num_train / full_train
    for key in STEP_SETTINGS:
        value = ours[key]
        if value == preset.get(key) and value > 0:
            config = set_value(config, key, max(1, round(value * ratio)))
    t = config.train
    epochs = t.steps * t.batch_size / num_train
    if ours["train.steps"] != preset.get("train.steps"):
        return config, f"{t.steps:,} steps as set"
    return config, (
        f"{t.steps:,} steps: the {epochs:.1f} epochs that {config.preset}'s "
        f"{ours['train.steps']:,} steps are on full MNIST"
    )


def load_data(config: Config, *, quiet: bool = False) -> tuple[Config, Any]:
    """Load the configured dataset. With ``dataset = auto``, full MNIST when it can be found or
    downloaded, else the bundled sample for as many epochs as the preset means on full MNIST,
    said in one highlighted line."""
    from mnistlab.apps.data_cmd import download_progress
    from mnistlab.data import load_splits
    from mnistlab.data.locate import DatasetNotFound
    from mnistlab.data.registry import get_dataset
    from mnistlab.parallel.device import resolve_device

    d = config.data
    device = resolve_device(config.train.device)
    progress = None if quiet else download_progress()
    if d.dataset != "auto":
        return config, load_splits(
            d.dataset,
            d.data_dir,
            validation_size=d.validation_size,
            download=d.download,
            device=device,
            progress=progress,
        )
    try:
        data = load_splits(
            "mnist",
            d.data_dir,
            validation_size=d.validation_size,
            download=d.download,
            device=device,
            progress=progress,
        )
    except DatasetNotFound:  # absent; a corrupt or mislabelled copy is an error, never swapped
        if d.data_dir:
            raise
        data = load_splits("mnist-sample", validation_size=d.validation_size, device=device)
        held_out = d.validation_size
        if held_out is None:
            held_out = get_dataset("mnist").validation_size
        config, how_long = _fit_to_sample(config, len(data.train), MNIST_TRAIN - held_out)
        why = "could not be downloaded" if d.download else "downloads are off"
        highlight = "\033[1;33m" if sys.stderr.isatty() else ""
        reset = "\033[0m" if highlight else ""
        print(
            f"{highlight}mnistlab: full MNIST is not on this machine and {why}: training on "
            f"the bundled mnist-sample ({len(data.train):,} train / {len(data.validation):,} "
            f"validation / {len(data.test):,} test digits) for {how_long}. For full MNIST: "
            "`mnistlab data download mnist`, or --data-dir DIR with its four files "
            f"(`mnistlab train --dataset mnist` shows where it looked).{reset}",
            file=sys.stderr,
        )
    return set_value(config, "data.dataset", data.name), data


MNIST_TRAIN = 60_000  # full MNIST's training file, validation split included


def run_train(args: argparse.Namespace) -> int:
    from mnistlab.apps import run_folder
    from mnistlab.parallel.launch import check_group, launch, wants_launch

    if args.overwrite and args.resume:
        raise ConfigError("--overwrite starts the run afresh and --resume continues it: pick one")
    if getattr(args, "seeds", None):  # one run per seed, then statistics (apps/seeds.py)
        from mnistlab.apps.seeds import run_seeds

        return run_seeds(args, config_from_args(args))
    resumed = resume_state(args, config_from_args(args))
    config = resumed.config
    _check_parallel(config)
    run_dir = Path(args.run_dir) if args.run_dir else resumed.run_dir
    # Asking to resume is leave to use the folder, even when --resume auto found nothing to go on
    # from (a run stopped before its first checkpoint, restarted by torchrun --max-restarts).
    resuming = bool(args.resume)
    if wants_launch(config.parallel.mode):  # start the workers, each re-running this command
        extra = check_group(config, config.parallel.workers)
        if run_dir is None:  # one name for every worker, chosen once
            run_dir = run_folder.new_run_dir(config.preset)
            extra += ["--run-dir", str(run_dir)]
        run_folder.check_free(run_dir, resuming=resuming, overwrite=args.overwrite)
        return launch([*sys.argv[1:], *extra], config.parallel.workers, config.parallel.mode)
    with _recorded_for_launcher():
        return _train_here(args, resumed, run_dir)


def _train_here(args: argparse.Namespace, resumed: Any, run_dir: Path | None) -> int:
    """Train in this process: alone, or as one worker of a group."""
    from mnistlab.apps import run_folder
    from mnistlab.io.console import ConsoleCallback, summary_table
    from mnistlab.parallel import make_parallel_strategy
    from mnistlab.train import train

    config = resumed.config
    strategy = make_parallel_strategy(config)  # None: one process
    is_main = strategy is None or strategy.is_main
    if strategy is not None:  # what the group really is, so a resume can start it again
        config = set_value(config, "parallel.workers", int(getattr(strategy, "world_size", 1)))
    if is_main:
        for note in resumed.notes:
            print(f"mnistlab: {note}", file=sys.stderr)
    run_dir = run_dir or run_folder.new_run_dir(config.preset)
    resuming = bool(args.resume)
    claim = (
        run_folder.claim(run_dir, resuming=resuming, overwrite=args.overwrite)
        if is_main
        else contextlib.nullcontext()
    )
    with claim:
        config, data = load_data(config, quiet=args.quiet or not is_main)
        prepare_run_dir(run_dir, config, is_main)
        if strategy is not None:  # async workers each run a share of the updates
            config = strategy.worker_config(config, len(data.train))
        callbacks = [ConsoleCallback(quiet=args.quiet)]
        callbacks += checkpoint_callbacks(args, config, run_dir)
        callbacks += tracking_callbacks(args, config, run_dir)
        result = train(
            config, data, strategy=strategy, callbacks=callbacks, resume_state=resumed.state
        )
    if strategy is not None:
        strategy.close()
    if not is_main:
        return 0
    summary = result.summary() | {"run_dir": str(run_dir)}
    if not args.quiet:
        print(summary_table(summary, title=f"mnistlab {config.preset} on {data.name}"))
    if args.json:
        print(json.dumps(summary))
    return 0


@contextlib.contextmanager
def _recorded_for_launcher() -> Iterator[None]:
    """In a torchrun worker, write why it failed to torchelastic's error file for this worker
    (``TORCHELASTIC_ERROR_FILE``), which the launcher reads instead of parsing logs."""
    from mnistlab.parallel.launch import record_failure

    try:
        yield
    except BaseException as exc:
        record_failure(exc)
        raise
