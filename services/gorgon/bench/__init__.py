"""Benchmarks, one `gorgon bench` command each. A command's module holds its flags and prints its report; what
it measures lives in the module named `<command>_run`, imported inside `run`, so that building the command line
(`gorgon --help`) never loads torch, the engine or the services."""
