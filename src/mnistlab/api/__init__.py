"""The Python API for notebooks and scripts.

    import mnistlab
    result = mnistlab.train("seed-mlp", steps=2000, dataset="mnist-sample")
    result.test_accuracy, result.history["val_accuracy"], result.figure()
    mnistlab.evaluate(result.model).plot()
    model = mnistlab.load("runs/my-run")          # a run folder, RUN:best or a checkpoint file
    model.predict("digit.png").label
    model.save("mlp.pt"); model.export("mlp.onnx")

Beside ``apps`` at the top of the layers: it assembles runs through ``mnistlab.session`` as the
command line does, and imports nothing of ``mnistlab.apps``.
"""

from mnistlab.api.evaluation import Evaluation, evaluate
from mnistlab.api.model import (
    SERVE_MAX_PIXELS,
    Model,
    Prediction,
    _as_digit,
    decode_image,
    digit_image,
    load,
)
from mnistlab.api.training import History, TrainingResult, make_config, train

__all__ = [
    "SERVE_MAX_PIXELS",
    "Evaluation",
    "History",
    "Model",
    "Prediction",
    "TrainingResult",
    "_as_digit",
    "decode_image",
    "digit_image",
    "evaluate",
    "load",
    "make_config",
    "train",
]
