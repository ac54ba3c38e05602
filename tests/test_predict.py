"""`mnistlab predict` on real image files made from genuine MNIST digits.

1,000 digits are written as photograph-like files: upscaled
to various sizes, dark ink on light paper or light on dark, off-centre on a large noisy canvas,
JPEG-compressed in colour, RGBA and grey+alpha on a transparent ground. The preprocessing must
give the digits back so the model reads them as it reads the originals. Without ../shared the
digits are the bundled sample's 1,000 held-out digits (from MNIST's training file, never trained
on); with full MNIST beside the checkout, the 95% bar is checked on the first 1,000 digits of
MNIST's real test file.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mnistlab.apps.cli import main
from mnistlab.config import resolve
from mnistlab.data.images import image_to_digit, preprocess
from mnistlab.errors import DataError
from mnistlab.io.checkpoint import CheckpointCallback, load_model
from mnistlab.training import train

KINDS = (
    "png-dark-on-light",
    "bmp-light-on-dark",
    "png-off-centre-canvas",
    "jpeg-colour",
    "png-rgba",
    "png-grey-alpha-white-ink",
)


def photo_like(
    digit: np.ndarray, kind: int, rng: np.random.Generator, folder: Path, name: str
) -> Path:
    """Write one MNIST digit (28x28 in [0, 1]) as a photograph-like file of ``KINDS[kind]``."""
    ink = Image.fromarray((digit * 255).round().astype(np.uint8), mode="L")
    scale = int(rng.integers(2, 9))
    a = (
        np.asarray(ink.resize((28 * scale, 28 * scale), Image.Resampling.BICUBIC), dtype=np.float32)
        / 255.0
    )
    if kind == 0:
        path = folder / f"{name}.png"
        Image.fromarray((255 - a * 255).round().astype(np.uint8)).save(path, compress_level=1)
    elif kind == 1:
        path = folder / f"{name}.bmp"
        size = int(rng.integers(60, 300))
        ink.resize((size, size), Image.Resampling.BICUBIC).convert("RGB").save(path)
    elif kind == 2:
        path = folder / f"{name}.png"
        canvas = np.full((480, 640), 235.0, dtype=np.float32)
        h, w = a.shape
        top, left = int(rng.integers(0, 480 - h)), int(rng.integers(0, 640 - w))
        canvas[top : top + h, left : left + w] = 235 - a * (235 - 30)
        canvas += rng.normal(0, 3, canvas.shape)
        Image.fromarray(np.clip(canvas, 0, 255).round().astype(np.uint8)).save(
            path, compress_level=1
        )
    elif kind == 3:
        path = folder / f"{name}.jpg"
        paper, pen = np.array([245, 240, 225.0]), np.array([20, 30, 90.0])
        rgb = paper * (1 - a[..., None]) + pen * a[..., None]
        Image.fromarray(rgb.round().astype(np.uint8), "RGB").save(path, quality=70)
    elif kind == 4:
        path = folder / f"{name}.png"
        rgba = np.zeros((*a.shape, 4), dtype=np.uint8)
        rgba[..., 3] = (a * 255).round().astype(np.uint8)
        Image.fromarray(rgba, "RGBA").save(path, compress_level=1)
    else:
        path = folder / f"{name}.png"
        la = np.zeros((*a.shape, 2), dtype=np.uint8)
        la[..., 0] = 255
        la[..., 1] = (a * 255).round().astype(np.uint8)
        Image.fromarray(la, "LA").save(path, compress_level=1)
    return path


def make_photos(
    images: torch.Tensor, labels: torch.Tensor, folder: Path
) -> tuple[list[Path], torch.Tensor, torch.Tensor]:
    """Digits as files (kinds in turn), with their labels and originals."""
    rng = np.random.default_rng(0)
    digits = images.reshape(-1, 28, 28).numpy()
    paths = [photo_like(d, i % len(KINDS), rng, folder, f"{i:04d}") for i, d in enumerate(digits)]
    return paths, labels, images


@pytest.fixture(scope="module")
def photos(sample_splits, tmp_path_factory) -> tuple[list[Path], torch.Tensor, torch.Tensor]:
    """The sample's 1,000 held-out digits as files."""
    test = sample_splits.test
    return make_photos(test.images, test.labels, tmp_path_factory.mktemp("photos"))


def read_back(paths: list[Path]) -> torch.Tensor:
    return torch.stack([torch.from_numpy(image_to_digit(p)).reshape(784) for p in paths])


@pytest.fixture(scope="module")
def photos_read_back(photos) -> torch.Tensor:
    """All 1,000 files through ``load_image`` + ``preprocess`` (once for the module)."""
    return read_back(photos[0])


def accuracy_on(checkpoint: Path, photos, back: torch.Tensor) -> dict[str, float]:
    _, labels, originals = photos
    model, _ = load_model(checkpoint)
    with torch.no_grad():
        on_files = model(back).argmax(1)
        on_originals = model(originals).argmax(1)
    return {
        "files": float((on_files == labels).float().mean()),
        "originals": float((on_originals == labels).float().mean()),
        "agreement": float((on_files == on_originals).float().mean()),
        **{k: float((on_files[i::6] == labels[i::6]).float().mean()) for i, k in enumerate(KINDS)},
    }


def report(capsys, title: str, figures: dict[str, float]) -> None:
    with capsys.disabled():
        print(f"\n{title}: " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in figures.items()))


def test_preprocessing_gives_back_the_mnist_digit(photos):
    """Without any model: each kind of file comes back close to the original 28x28 digit."""
    paths, _, originals = photos
    back = read_back(paths[:120])
    error = (back - originals[:120]).abs().mean(dim=1)
    assert float(error.mean()) < 0.04 and float(error.max()) < 0.15


@pytest.mark.slow
def test_predict_on_photos_with_sample_model(
    sample_splits, photos, photos_read_back, tmp_path, capsys
):
    """A seed-mlp trained on the bundled 3,500 digits tops out near 93.6% on the clean test
    digits, so the 95% bar cannot be asked of it: here the files must be read as well as the
    originals (the bar itself is checked with full MNIST below)."""
    config = resolve(
        "seed-mlp", None, ["train.steps=1000", "train.eval_every=500", "train.device=cpu"]
    )
    train(config, sample_splits, callbacks=[CheckpointCallback(tmp_path, every=0)])
    figures = accuracy_on(tmp_path, photos, photos_read_back)
    report(capsys, "predict, seed-mlp on mnist-sample", figures)
    assert figures["files"] >= figures["originals"] - 0.015
    assert figures["agreement"] >= 0.95 and figures["files"] >= 0.90


@pytest.mark.slow
def test_predict_on_photos_at_least_95_percent(shared_mnist, tmp_path, capsys):
    """The issue's bar: a seed-mlp checkpoint recovers at least 95% of the labels of photographed
    digits from MNIST's real test file."""
    from mnistlab.data import load_splits

    data = load_splits("mnist", shared_mnist)
    (tmp_path / "photos").mkdir()
    test_photos = make_photos(data.test.images[:1000], data.test.labels[:1000], tmp_path / "photos")
    config = resolve(
        "seed-mlp", None, ["train.steps=5000", "train.eval_every=1000", "train.device=cpu"]
    )
    train(config, data, callbacks=[CheckpointCallback(tmp_path / "run", every=0)])
    figures = accuracy_on(tmp_path / "run", test_photos, read_back(test_photos[0]))
    report(capsys, "predict, seed-mlp (5,000 steps) on full MNIST", figures)
    assert figures["files"] >= 0.95


def bomb_png(path: Path, side: int = 20_000) -> Path:
    """A valid 1-bit PNG of side x side pixels that is a few kilobytes on disk."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    packer = zlib.compressobj(9)
    row = b"\x00" * (1 + (side + 7) // 8)
    body = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")
    )
    return path


@pytest.fixture(scope="module")
def small_run(sample_splits, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("run")
    config = resolve("seed-mlp", None, ["train.steps=300", "train.eval_every=300"])
    train(config, sample_splits, callbacks=[CheckpointCallback(folder, every=0)])
    return folder


def test_predict_cli_with_bad_files(small_run, photos, tmp_path, capsys):
    paths, labels, _ = photos
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    text = tmp_path / "notes.png"
    text.write_text("not an image at all\n")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(paths[0].read_bytes()[:200])
    bomb = bomb_png(tmp_path / "bomb.png")
    assert bomb.stat().st_size < 200_000
    good = [str(p) for p in paths[:4]]
    bad = [empty, text, truncated, bomb]
    code = main(["predict", str(small_run), good[0], *map(str, bad), *good[1:], "--top", "3"])
    out, err = capsys.readouterr()
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == len(bad)
    for path, line in zip(bad, lines, strict=True):
        assert line.startswith(f"mnistlab: error: {path}: ")
    assert "empty file" in lines[0] and "not an image" in lines[1]
    assert "damaged or truncated" in lines[2] and "decompression bomb" in lines[3]
    printed = out.strip().splitlines()
    assert [line.split()[0] for line in printed] == good
    assert all("top:" in line for line in printed)


def test_predict_json(small_run, photos, capsys):
    paths, labels, _ = photos
    assert main(["predict", str(small_run), *map(str, paths[:6]), "--json", "--top", "2"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [p["file"] for p in result["predictions"]] == list(map(str, paths[:6]))
    assert result["errors"] == []
    for p in result["predictions"]:
        assert 0 <= p["label"] <= 9 and 0 < p["probability"] <= 1 and len(p["top"]) == 2
        assert p["top"][0]["probability"] >= p["top"][1]["probability"]


def test_preprocess_polarity_and_blank():
    digit = np.zeros((100, 60), dtype=np.float32)
    digit[20:80, 25:35] = 1.0  # a "1": a bar off-centre
    light_on_dark, dark_on_light = preprocess(digit), preprocess(1.0 - digit)
    np.testing.assert_allclose(light_on_dark, dark_on_light, atol=1e-6)
    assert light_on_dark.shape == (28, 28) and light_on_dark.max() == pytest.approx(1.0)
    rows, cols = np.nonzero(light_on_dark > 0.5)
    assert rows.max() - rows.min() + 1 == 20  # the long side fits 20 pixels
    ys, xs = np.indices(light_on_dark.shape)
    total = light_on_dark.sum()
    assert abs((light_on_dark * ys).sum() / total - 14) <= 0.5
    assert abs((light_on_dark * xs).sum() / total - 14) <= 0.5
    with pytest.raises(DataError, match="no digit found"):
        preprocess(np.full((50, 50), 0.8, dtype=np.float32))


def test_predict_with_images_only_uses_the_pretrained_cnn(photos, capsys):
    """No run to train first: ``mnistlab predict IMAGE...`` reads with pretrained:cnn."""
    paths, labels, _ = photos
    assert main(["predict", *map(str, paths[:6]), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["model"] == "pretrained:cnn" and result["errors"] == []
    assert [p["file"] for p in result["predictions"]] == list(map(str, paths[:6]))
    assert [p["label"] for p in result["predictions"]] == labels[:6].tolist()
    assert main(["predict", str(paths[0])]) == 0
    out, err = capsys.readouterr()
    assert "reading with pretrained:cnn" in err and out.startswith(str(paths[0]))


def test_predict_first_argument_is_a_model_or_an_image(small_run, photos, tmp_path, capsys):
    paths, _, _ = photos
    no_suffix = tmp_path / "digit"  # an image whatever its name: read as one, not as a model
    no_suffix.write_bytes(paths[0].read_bytes())
    cases = {
        "run": ([str(small_run), str(paths[0])], str(small_run)),
        "run:best": ([f"{small_run}:best", str(paths[0])], f"{small_run}:best"),
        "pretrained": (["pretrained:mlp", str(paths[0])], "pretrained:mlp"),
        "--model": (["--model", str(small_run), str(paths[0]), str(paths[1])], str(small_run)),
        "image without suffix": ([str(no_suffix), str(paths[1])], "pretrained:cnn"),
    }
    for name, (args, model) in cases.items():
        main(["predict", *args, "--json"])
        result = json.loads(capsys.readouterr().out)
        assert result["model"] == model, name
        assert result["errors"] == [] and len(result["predictions"]) >= 1, name


def test_predict_a_model_without_images_or_a_missing_image(small_run, tmp_path, capsys):
    assert main(["predict", str(small_run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no image follows it" in err
    missing = tmp_path / "seven.png"  # an image's name: the image is missing, not a model
    assert main(["predict", str(missing), "--json"]) == 1
    result = json.loads(capsys.readouterr().out)
    assert result["model"] == "pretrained:cnn" and "no such file" in result["errors"][0]["error"]


def test_predict_says_when_an_image_holds_no_digit(tmp_path, capsys):
    blank = tmp_path / "blank.png"
    Image.new("L", (200, 150), 240).save(blank)
    dot = tmp_path / "dot.png"
    canvas = Image.new("L", (280, 280), 255)
    canvas.paste(0, (138, 138, 143, 143))
    canvas.save(dot)
    assert main(["predict", str(blank), str(dot)]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[1:] == [
        f"mnistlab: error: {blank}: no digit found (the image is blank, or its marks are too "
        "faint to be a digit)",
        f"mnistlab: error: {dot}: no digit found: the only mark is too small to be a digit "
        "(about 6 pixels across in a 280x280 picture); write it bigger or crop closer",
    ]
