"""``mnistlab train``: turn the flags into settings, then hand the run to ``session``.

The flags become one validated ``Config`` here (``config_from_args``); finding the data, claiming
the run folder, the callbacks and the training itself are ``session.run_training``'s, the same
for this command, ``--seeds`` (``apps/seeds.py``) and ``mnistlab.train``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mnistlab.apps.flags import flag_settings, override_keys, tensorboard_events
from mnistlab.config import PRESETS, Config, all_keys, resolve, set_value, to_toml
from mnistlab.config.schema import PARALLEL_MODES, SCHEDULES
from mnistlab.errors import ConfigError
from mnistlab.session import Resumed, resume_state
from mnistlab.session.resume import explicit_settings


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
        "--print-config",
        action="store_true",
        help="print the merged settings (preset, --config, --set, flags; a --resume's "
        "checkpoint) as TOML and stop: nothing is trained or written",
    )
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


def board_callbacks(args: argparse.Namespace, run_dir: Path) -> list[Any]:
    """With --tensorboard, a live TensorBoard server on the run folder."""
    if not getattr(args, "tensorboard", False):
        return []
    from mnistlab.apps.board_cmd import BoardCallback

    return [BoardCallback(run_dir, port=args.tensorboard_port)]


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


def config_from_args(args: argparse.Namespace) -> Config:
    """Preset, --config, --set, then the flags that are settings (``apps.flags``), validated once."""
    config = resolve(args.preset, args.config, list(args.overrides), flag_settings(args))
    if config.data.data_dir:  # saved into checkpoints: keep it valid from any working folder
        absolute = str(Path(config.data.data_dir).expanduser().absolute())
        config = set_value(config, "data.data_dir", absolute)
    return config


def resume_from_args(args: argparse.Namespace, config: Config) -> Resumed:
    """``--resume``'s checkpoint and settings (``config`` unchanged for a new run)."""
    return resume_state(
        config,
        args.resume,
        explicit=explicit_settings(override_keys(args), config),
        preset=args.preset,
        run_dir=Path(args.run_dir) if args.run_dir else None,
        config_file=bool(args.config),
    )


def run_train(args: argparse.Namespace) -> int:
    from mnistlab.parallel.launch import check_group, launch, wants_launch
    from mnistlab.session import folder

    if args.overwrite and args.resume:
        raise ConfigError("--overwrite starts the run afresh and --resume continues it: pick one")
    if (
        getattr(args, "seeds", None) is not None
    ):  # one run per seed, then statistics (apps/seeds.py)
        from mnistlab.apps.seeds import run_seeds

        if args.print_config:
            print(to_toml(config_from_args(args)), end="")
            return 0
        return run_seeds(args, config_from_args(args))
    tensorboard_events(args)  # contradicting flags are refused before anything starts
    resumed = resume_from_args(args, config_from_args(args))
    config = resumed.config
    _check_parallel(config)
    if args.print_config:
        print(to_toml(config), end="")
        return 0
    run_dir = Path(args.run_dir) if args.run_dir else resumed.run_dir
    if wants_launch(config.parallel.mode):  # start the workers, each re-running this command
        extra = check_group(config, config.parallel.workers)
        if run_dir is None:  # one name for every worker, chosen once
            run_dir = folder.new_run_dir(config.preset)
            extra += ["--run-dir", str(run_dir)]
        folder.check_free(
            run_dir,
            resuming=resumed.asked,
            overwrite=args.overwrite,
            resumed_from=resumed.run_dir,
        )
        return launch([*sys.argv[1:], *extra], config.parallel.workers, config.parallel.mode)
    with _recorded_for_launcher():
        return _train_here(args, resumed, run_dir)


def _train_here(args: argparse.Namespace, resumed: Resumed, run_dir: Path | None) -> int:
    """Train in this process: alone, or as one worker of a group."""
    from mnistlab.io.console import summary_table
    from mnistlab.parallel import make_parallel_strategy
    from mnistlab.session import RunRequest, folder, run_training

    config = resumed.config
    strategy = make_parallel_strategy(config)  # None: one process
    is_main = strategy is None or strategy.is_main
    if strategy is not None:  # what the group really is, so a resume can start it again
        config = set_value(config, "parallel.workers", int(getattr(strategy, "world_size", 1)))
    if is_main:
        for note in resumed.notes:
            print(f"mnistlab: {note}", file=sys.stderr)
    run_dir = run_dir or folder.new_run_dir(config.preset)
    request = RunRequest(
        config,
        run_dir,
        resumed=resumed,
        overwrite=args.overwrite,
        quiet=args.quiet,
        tensorboard=tensorboard_events(args),
        callbacks=board_callbacks(args, run_dir),
    )
    finished = run_training(request, strategy=strategy)
    if strategy is not None:
        strategy.close()
    if not is_main:
        return 0
    summary = finished.result.summary() | {"run_dir": str(run_dir)}
    if not args.quiet:
        title = f"mnistlab {finished.config.preset} on {finished.data.name}"
        print(summary_table(summary, title=title))
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
