"""``mnistlab doctor``: duplicate installs, broken requirements, data and run folder, exit status."""

from __future__ import annotations

import json
from pathlib import Path

from mnistlab.apps import doctor
from mnistlab.apps.cli import main


def dist(
    site: Path,
    name: str,
    version: str,
    requires: tuple[str, ...] = (),
    editable_root: Path | None = None,
) -> Path:
    """A minimal ``NAME-VERSION.dist-info`` in ``site``, as pip would leave it."""
    info = site / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    lines += [f"Requires-Dist: {r}" for r in requires]
    (info / "METADATA").write_text("\n".join(lines) + "\n")
    if editable_root is not None:
        (info / "direct_url.json").write_text(
            json.dumps({"url": editable_root.as_uri(), "dir_info": {"editable": True}})
        )
    return info


def test_duplicate_installation_names_both_paths(tmp_path, monkeypatch, capsys):
    first = dist(tmp_path / "site-a", "fakeprotobuf", "4.25.3")
    second = dist(tmp_path / "site-b", "fakeprotobuf", "5.27.0")
    found = doctor.duplicate_findings(
        doctor.installed([str(tmp_path / "site-a"), str(tmp_path / "site-b")])
    )
    assert len(found) == 1 and found[0].status == "problem"
    assert str(first) in found[0].detail and str(second) in found[0].detail
    assert str(second) in found[0].fix  # the copy Python does not use is the one to remove

    # the whole command, with the fake folders on sys.path
    monkeypatch.syspath_prepend(str(tmp_path / "site-b"))
    monkeypatch.syspath_prepend(str(tmp_path / "site-a"))
    assert main(["doctor", "--run-dir", str(tmp_path / "runs")]) == 1
    out = capsys.readouterr().out
    assert str(first) in out and str(second) in out
    assert "fakeprotobuf is installed 2 times" in out and "fix:" in out


def test_broken_and_missing_requirements(tmp_path):
    site = tmp_path / "site"
    dist(site, "fakeprotobuf", "5.27.0")
    dist(
        site,
        "needy",
        "1.0",
        (
            "fakeprotobuf<5,>=3.20",
            "absentpkg>=1",
            'onlyfordev; extra == "dev"',
            'oldpython; python_version < "3"',
        ),
    )
    found = doctor.requirement_findings(doctor.installed([str(site)]))
    details = sorted(f.detail for f in found)
    assert len(found) == 2 and all(f.status == "problem" and f.fix for f in found)
    assert "needy 1.0 requires absentpkg>=1, which is not installed" in details[0]
    assert "fakeprotobuf 5.27.0 is installed" in details[1] and "<5" in details[1]


def test_clean_environment_passes(tmp_path):
    site = tmp_path / "site"
    dist(site, "fakeprotobuf", "4.25.3")
    dist(site, "needy", "1.0", ("fakeprotobuf<5,>=3.20",))
    # pip install -e leaves PROJECT/src/NAME.egg-info: the same installation, not a second one
    project = tmp_path / "project"
    dist(site, "editme", "0.1", editable_root=project)
    egg = project / "src" / "editme.egg-info"
    egg.mkdir(parents=True)
    (egg / "PKG-INFO").write_text("Metadata-Version: 2.1\nName: editme\nVersion: 0.1\n")
    findings = doctor.collect(paths=[str(site), str(project / "src")], run_dir=tmp_path / "runs")
    problems = [f for f in findings if f.status == "problem"]
    assert problems == []
    assert doctor.exit_status(findings) == 0
    assert "All is well" in doctor.render(findings)
    checks = {f.check for f in findings}
    assert {
        "python",
        "torch",
        "numpy",
        "tensorboard",
        "protobuf",
        "cpu",
        "cuda",
        "dataset mnist-sample",
        "run folder",
    } <= checks
    sample = [f for f in findings if f.check == "dataset mnist-sample"][0]
    assert "checksums match" in sample.detail


def test_corrupt_dataset_and_unwritable_run_folder(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for name in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ):
        (data / name).write_bytes(b"\x00\x00\x08\x01" + b"\x00" * 8)
    mnist = [f for f in doctor.dataset_findings(str(data)) if f.check == "dataset mnist"][0]
    assert mnist.status == "problem" and str(data) in mnist.detail
    assert "mnistlab data download mnist" in mnist.fix
    blocker = tmp_path / "file"
    blocker.write_text("")
    finding = doctor.run_dir_finding(blocker / "runs")
    assert finding.status == "problem" and "--run-dir" in finding.fix


def test_json_output(tmp_path, capsys):
    code = main(["doctor", "--json", "--run-dir", str(tmp_path)])
    report = json.loads(capsys.readouterr().out)
    assert code == (0 if report["ok"] else 1)
    assert any(f["check"] == "torch" and f["status"] == "ok" for f in report["findings"])


def test_minimum_versions_come_from_the_installed_requirements(monkeypatch):
    """doctor reads mnistlab's own Requires-Dist (pyproject.toml) and compares with packaging."""
    from packaging.requirements import Requirement

    from mnistlab.apps import environment as env

    python, requirements = env.declared_requirements()
    assert str(requirements["torch"].specifier).startswith(">=") and python is not None
    monkeypatch.setattr(
        env,
        "declared_requirements",
        lambda: (python, {**requirements, "numpy": Requirement("numpy>=999")}),
    )
    numpy = next(f for f in env.version_findings() if f.check == "numpy")
    assert numpy.status == "problem" and "numpy>=999" in numpy.detail + numpy.fix
    assert env._same_version("2.4.0+cpu", "2.4.0") and not env._same_version("2.4.1", "2.4.0")
