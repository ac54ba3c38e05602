"""``python -m mnistlab`` is the same as the ``mnistlab`` command."""

from mnistlab.apps.cli import main

raise SystemExit(main())
