"""``python -m mnistlab`` is the same as the ``mnistlab`` command."""

try:
    from mnistlab.apps.cli import main
except KeyboardInterrupt:  # Ctrl-C in the first instants, before main() can catch it
    import sys

    sys.stderr.write("mnistlab: interrupted\n")
    raise SystemExit(130) from None

raise SystemExit(main())
