"""Assembling a run, once for every front door: the command line, ``--seeds`` and the Python API.

Below ``apps`` and ``api``, above ``training``, ``io`` and ``data``:

- ``session.folder``: run folders, claimed and locked (one run per folder, one training at a time);
- ``session.data``: the data a run trains on, with the bundled sample as MNIST's fall-back;
- ``session.resume``: the checkpoint to go on from and the settings to go on with;
- ``session.assemble``: ``run_training``, which puts these together with the callbacks and runs
  the one training loop.
"""

from mnistlab.session.assemble import Finished, RunRequest, run_training, write_settings
from mnistlab.session.data import load_data
from mnistlab.session.resume import Resumed, resume_state

__all__ = [
    "Finished",
    "Resumed",
    "RunRequest",
    "load_data",
    "resume_state",
    "run_training",
    "write_settings",
]
