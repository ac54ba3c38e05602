"""What a person touches: the ``mnistlab`` command and its subcommands."""
