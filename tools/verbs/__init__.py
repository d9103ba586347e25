"""One module per CLI verb. Each defines NAME, HELP, add_arguments(parser) and run(args) -> exit status."""
