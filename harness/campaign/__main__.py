"""`python -m harness.campaign`: see harness/campaign/__init__.py."""
from harness.campaign import main
from harness.cli import run_cli

if __name__ == "__main__":
    run_cli(main)
