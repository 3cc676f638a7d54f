"""`python -m harness.bench` (and `accelerate launch -m harness.bench` for N processes)."""
from harness.bench.cli import main
from harness.cli import run_cli

if __name__ == "__main__":
    run_cli(main)
