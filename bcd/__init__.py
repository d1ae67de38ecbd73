"""The `bcd` command: one entry point over the train, export, runtime and demo packages."""
