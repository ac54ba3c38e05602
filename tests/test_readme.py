"""The README's Quick start: the PyTorch build is chosen before anything installs torch, and the
two commands it promises stay exactly as CI runs them."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def quick_start() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("## Quick start")
    return text[start : text.index("\n## ", start + 1)]


def test_torch_build_is_chosen_before_pip_install():
    section = quick_start()
    cpu = section.index("pip install torch --index-url https://download.pytorch.org/whl/cpu")
    gpu = section.index("\npip install torch ")
    assert cpu < section.index("pip install . && mnistlab train")
    assert gpu < section.index("pip install . && mnistlab train")


def test_the_two_commands_stay_as_ci_runs_them():
    section = quick_start()
    assert "pip install . && mnistlab train" in section
    assert 'pip install -e ".[dev]" && pytest' in section
    assert 'pip install -e ".[dev]" && pytest' in (ROOT / ".ci" / "run").read_text()
