"""The README's Quick start: the PyTorch build is chosen before anything installs torch, and the
two commands it promises stay exactly as CI runs them."""

from __future__ import annotations

import json
import re
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


# -- every figure in the README is one a page measured or a file records -------------------------


def readme() -> str:
    return (ROOT / "README.md").read_text(encoding="utf-8")


def test_the_readme_stays_short():
    assert len(readme().splitlines()) <= 200


def test_every_link_in_the_readme_is_a_file_here():
    links = re.findall(r"\]\(([^)#\s]+)\)", readme())
    assert links, "the README links nowhere"
    missing = [link for link in links if not (ROOT / link).exists()]
    assert not missing, f"the README links to files that are not here: {missing}"


def test_the_presets_table_says_what_the_results_page_measured():
    results = (ROOT / "docs" / "results.md").read_text(encoding="utf-8")
    measured = {}
    for row in re.findall(r"^\| `([\w-]+)` \| (\d+\.\d\d)% \|", results, re.MULTILINE):
        measured.setdefault(row[0], row[1])  # the first table: seed 1, test accuracy (EMA)
    speedrun = re.search(
        r"^\| `speedrun` \| [\d.]+% ± [\d.]+ \|[^|]+\|[^|]+\| ([\d.]+),", results, re.M
    )
    assert speedrun, "docs/results.md has lost the speedrun's five-seed row"
    measured.setdefault("speedrun", speedrun.group(1))
    section = readme()[readme().index("## Presets") :]
    shown = dict(re.findall(r"^\| `([\w-]+)` \|[^\n]*\| (\d+\.\d\d)% \|$", section, re.MULTILINE))
    assert set(shown) >= {"seed-softmax", "seed-mlp", "seed-mlp-book", "lenet", "speedrun"}
    for preset, accuracy in shown.items():
        assert measured.get(preset) == accuracy, (preset, accuracy, measured.get(preset))


def test_the_ablation_table_is_the_one_scripts_ablation_wrote():
    stored = (ROOT / "docs" / "lessons" / "ablation.md").read_text(encoding="utf-8")
    table = "\n".join(line for line in stored.splitlines() if line.startswith("|"))
    text = readme()
    block = text[text.index("<!-- ablation:start") : text.index("<!-- ablation:end -->")]
    assert block.split("\n", 1)[1].strip() == table


def test_the_pretrained_models_accuracies_are_the_manifests():
    manifest = json.loads(
        (ROOT / "src" / "mnistlab" / "pretrained" / "manifest.json").read_text(encoding="utf-8")
    )
    text = readme()
    for name, entry in manifest["models"].items():
        found = re.search(rf"`pretrained:{name}`\s*\([^)]*?(\d+\.\d\d)%", text)
        assert found, f"the README does not give pretrained:{name}'s accuracy"
        assert float(found.group(1)) == round(100 * entry["test_accuracy"], 2), name
