"""Running the benchmark on a lent GPU machine: kit.py builds what it lacks here, run.sh runs
the GPU rows there."""
