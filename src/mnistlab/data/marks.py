"""Which marks on a picture are the digit, and whether they can be one.

After the paper is divided out (``data/paper.py``), a photo holds the digit and whatever else
the sheet carries: specks, grain the noise floor let through, what is left of a ruled line, a
stray pen mark. The marks are found as connected regions of ink; the heaviest region is the
digit, and regions close to it join it (the top bar of a 5, a broken stroke). Everything else
is dropped. A digit that is tiny beside the picture (a dot, a speck) is refused rather than
blown up to fill the 20x20 box.

Pure functions on numpy arrays; no model, no printing.
"""

from __future__ import annotations

import math

import numpy as np

from mnistlab.errors import NoDigitError

LABEL_SIDE = 160
"""Regions are labelled on a grid whose longer side is at most this many cells."""
INK_LEVEL = 0.35
"""A pixel at this fraction of the darkest ink or more is part of a mark."""
JOIN = 0.3
"""A region joins the digit when it lies within this fraction of the digit's size of it."""
MIN_SHARE = 0.02
"""Regions holding less than this share of the digit's ink are specks, never joined."""
MIN_SIZE = 0.08
"""The digit's longer side must be at least this fraction of the picture's shorter side."""


def _labels(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected regions (8-neighbour) of a boolean grid: ``(labels, count)``, each cell of a
    region holding the same number 1..count, cells off the mask 0. Runs of marked cells along
    each row are joined to the runs they touch in the row above (union-find)."""
    parent: list[int] = [0]

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    runs: list[tuple[int, int, int, int]] = []  # row, first, last, run id
    above: list[tuple[int, int, int]] = []
    for r, row in enumerate(mask):
        edges = np.flatnonzero(np.diff(np.concatenate([[0], row.astype(np.int8), [0]])))
        here = []
        for first, stop in zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True):
            rid = len(parent)
            parent.append(rid)
            for a_first, a_last, a_id in above:
                if a_first <= stop and a_last >= first - 1:  # overlap, diagonals included
                    ra, rb = find(a_id), find(rid)
                    if ra != rb:
                        parent[max(ra, rb)] = min(ra, rb)
            here.append((first, stop - 1, rid))
            runs.append((r, first, stop - 1, rid))
        above = here
    labels = np.zeros(mask.shape, dtype=np.int64)
    roots: dict[int, int] = {}
    for r, first, last, rid in runs:
        labels[r, first : last + 1] = roots.setdefault(find(rid), len(roots) + 1)
    return labels, len(roots)


def _grid(ink: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """``ink`` on the labelling grid: the mask (any marked pixel in a cell), the ink per cell,
    and the cell's side in pixels."""
    cell = max(1, math.ceil(max(ink.shape) / LABEL_SIDE))
    height, width = ink.shape
    padded = np.pad(ink, ((0, (-height) % cell), (0, (-width) % cell)))
    blocks = padded.reshape(padded.shape[0] // cell, cell, padded.shape[1] // cell, cell)
    marked = np.asarray((blocks >= INK_LEVEL).any(axis=(1, 3)))
    mass = blocks.sum(axis=(1, 3), dtype=np.float64)
    return marked, mass, cell


def select_digit(ink: np.ndarray, *, where: str = "image") -> np.ndarray:
    """``ink`` with only the digit's marks kept (the rest set to 0), or ``NoDigitError`` when
    the marks are too small beside the picture to be a digit."""
    marked, mass, cell = _grid(ink)
    labels, count = _labels(marked)
    if count == 0:
        raise NoDigitError(f"{where}: no digit found (no mark dark enough to be ink)")
    flat = labels.ravel()
    weights = np.bincount(flat, weights=mass.ravel(), minlength=count + 1)[1:]
    rows, cols = np.indices(labels.shape)
    on = flat > 0
    ids, r, c = flat[on] - 1, rows.ravel()[on], cols.ravel()[on]
    big = labels.shape[0] + labels.shape[1]
    top = np.full(count, big)
    np.minimum.at(top, ids, r)
    bottom = np.full(count, -1)
    np.maximum.at(bottom, ids, r)
    left = np.full(count, big)
    np.minimum.at(left, ids, c)
    right = np.full(count, -1)
    np.maximum.at(right, ids, c)

    main = int(np.argmax(weights))
    chosen = {main}
    box = [int(top[main]), int(bottom[main]), int(left[main]), int(right[main])]
    changed = True
    while changed:
        changed = False
        reach = JOIN * max(box[1] - box[0] + 1, box[3] - box[2] + 1)
        for i in range(count):
            if i in chosen or weights[i] < MIN_SHARE * weights[main]:
                continue
            gap_y = max(box[0] - int(bottom[i]), int(top[i]) - box[1], 0)
            gap_x = max(box[2] - int(right[i]), int(left[i]) - box[3], 0)
            if max(gap_y, gap_x) <= reach:
                chosen.add(i)
                box = [
                    min(box[0], int(top[i])),
                    max(box[1], int(bottom[i])),
                    min(box[2], int(left[i])),
                    max(box[3], int(right[i])),
                ]
                changed = True
    extent = cell * max(box[1] - box[0] + 1, box[3] - box[2] + 1)
    if extent < MIN_SIZE * min(ink.shape):
        raise NoDigitError(
            f"{where}: no digit found: the only mark is too small to be a digit (about "
            f"{extent} pixels across in a {ink.shape[1]}x{ink.shape[0]} picture); write it "
            "bigger or crop closer"
        )
    keep = np.isin(labels, np.array(sorted(chosen)) + 1)
    grown = np.pad(keep, 1)
    keep = np.zeros_like(keep)
    for dy in range(3):  # one cell around the marks: the soft edges of their strokes
        for dx in range(3):
            keep |= grown[dy : dy + labels.shape[0], dx : dx + labels.shape[1]]
    inside = np.repeat(np.repeat(keep, cell, axis=0), cell, axis=1)[: ink.shape[0], : ink.shape[1]]
    return np.where(inside, ink, 0.0).astype(np.float32)
