"""`python -m sleep_core.bench SUBCOMMAND ...`: benchmarks that print JSON and draw plots."""
import importlib
import sys

SUBCOMMANDS = ("wake", "capacity", "convergence", "longevity", "conversation", "counterfact", "crash")


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in SUBCOMMANDS:
        print(f"usage: python -m sleep_core.bench {{{','.join(SUBCOMMANDS)}}} [options]  (--help on each)")
        return 2
    module = importlib.import_module(f".{sys.argv[1]}", __package__)
    return module.main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
