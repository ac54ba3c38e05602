"""``mnistlab train --resume``: find the checkpoint to continue and the settings to continue with.

The checkpoint's own settings win, so ``--resume DIR`` needs no other flag; what a command line
sets applies on top only where it cannot change what is computed (``RESUME_SAFE``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from mnistlab.config import Config, set_value, validate
from mnistlab.errors import CheckpointError, ConfigError

# Settings a resumed run may change without changing what it computes (docs/model-saving.md).
RESUME_SAFE = (
    "train.steps",
    "train.eval_every",
    "train.log_every",
    "train.device",
    "train.threads",
    "data.data_dir",
    "data.download",
    "checkpoint.",
    "tracking.",
    "parallel.",
)


def _explicit_settings(args: argparse.Namespace, config: Config) -> dict[str, Any]:
    """``{key: value}`` for what this command line sets itself (values as resolved in ``config``)."""
    from mnistlab.config import flat_dict

    keys = [item.split("=", 1)[0].strip() for item in args.overrides if "=" in item]
    flags = {
        "dataset": "data.dataset",
        "data_dir": "data.data_dir",
        "device": "train.device",
        "checkpoint_every": "checkpoint.every",
        "keep": "checkpoint.keep",
        "parallel": "parallel.mode",
        "workers": "parallel.workers",
        "schedule": "parallel.schedule",
        "microbatches": "parallel.microbatches",
    }
    keys += [key for flag, key in flags.items() if getattr(args, flag, None) is not None]
    flat = flat_dict(config)
    return {key: flat[key] for key in keys if key in flat}


def _say(text: str) -> None:
    """One line on stderr from the first process only (every worker of a parallel run resumes)."""
    if os.environ.get("RANK", "0") == "0":
        print(f"mnistlab: {text}", file=sys.stderr)


def _is_safe(key: str) -> bool:
    return any(key == s or (s.endswith(".") and key.startswith(s)) for s in RESUME_SAFE)


def _same_run(saved: dict[str, Any], config: Config) -> bool:
    """Whether a saved config describes the same computation as ``config`` (for --resume auto)."""
    from mnistlab.config import flat_dict, from_dict

    try:
        ours, theirs = flat_dict(config), flat_dict(from_dict(saved))
    except ConfigError:
        return False
    return all(
        ours[k] == theirs.get(k)
        for k in ours
        if not _is_safe(k) and not (k == "data.dataset" and ours[k] == "auto")
    )


def _auto_checkpoint(args: argparse.Namespace, config: Config) -> Path | None:
    """The latest checkpoint of the newest run with the same settings (``--run-dir`` if given)."""
    from mnistlab.io.checkpoint import checkpoint_folder, read_header, step_checkpoints

    if args.run_dir:
        found = step_checkpoints(checkpoint_folder(args.run_dir))
        return found[-1][1] if found else None
    candidates = []
    for run in Path("runs").iterdir() if Path("runs").is_dir() else []:
        found = step_checkpoints(checkpoint_folder(run))
        if found:
            candidates.append((found[-1][1].stat().st_mtime, found[-1][1]))
    for _, path in sorted(candidates, reverse=True):
        try:
            header, _ = read_header(path)
        except CheckpointError:
            continue
        if isinstance(header.get("config"), dict) and _same_run(header["config"], config):
            return path
    return None


def resume_state(args: argparse.Namespace, config: Config) -> tuple[Config, dict[str, Any] | None]:
    """The state to resume from (and the config it was saved with), or ``None``.

    The checkpoint's own settings win, so ``--resume DIR`` needs no other flag; settings given on
    this command line apply on top only where they cannot change the result (``RESUME_SAFE``, e.g.
    ``--set train.steps=`` to extend a run). The run goes on in the folder it came from."""
    from mnistlab.config import flat_dict
    from mnistlab.io.checkpoint import load_checkpoint, resolve_checkpoint

    for flag, key in (("checkpoint_every", "checkpoint.every"), ("keep", "checkpoint.keep")):
        if getattr(args, flag, None) is not None:
            config = validate(set_value(config, key, getattr(args, flag)))
    spec = getattr(args, "resume", None)
    if not spec:
        return config, None
    if spec == "auto":
        path = _auto_checkpoint(args, config)
        if path is None:
            _say("--resume auto: no earlier run with these settings; starting a new one")
            return config, None
    else:
        if args.config:
            raise ConfigError(
                "--config cannot be combined with --resume DIR|FILE: a resumed run "
                "keeps its checkpoint's settings (change safe ones with --set)"
            )
        path = resolve_checkpoint(spec)
    ckpt = load_checkpoint(path)
    resumed = ckpt.config
    if args.preset and args.preset != resumed.preset and spec != "auto":
        raise ConfigError(
            f"{path} is a {resumed.preset} run, not {args.preset}; drop --preset "
            "to resume it, or start a new run"
        )
    saved = flat_dict(resumed)
    for key, value in _explicit_settings(args, config).items():
        if value == saved.get(key) or (key == "data.dataset" and value == "auto"):
            continue
        if not _is_safe(key):
            raise ConfigError(
                f"cannot change {key} when resuming {path} (it was "
                f"{saved.get(key)!r}; the result would no longer be the same run): "
                "start a new run instead"
            )
        resumed = set_value(resumed, key, value)
    resumed = validate(resumed)
    if not args.run_dir and ckpt.run_dir is not None:
        args.run_dir = str(ckpt.run_dir)
    note = (
        ""
        if ckpt.step < resumed.train.steps
        else (
            f" (it already reached train.steps={resumed.train.steps:,}; add --set train.steps=N to go on)"
        )
    )
    _say(f"resuming from {path} at step {ckpt.step:,}{note}")
    return resumed, ckpt.state
