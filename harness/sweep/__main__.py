"""`python -m harness.sweep`: see harness/sweep/__init__.py."""
from harness.cli import run_cli
from harness.sweep.cli import main

if __name__ == "__main__":
    run_cli(main)
