"""`python -m sleep_core.bench SUBCOMMAND ...`: benchmarks that print JSON and draw plots."""
import importlib
import sys

SUBCOMMANDS = {"wake": "wake", "capacity": "capacity", "convergence": "convergence",
               "longevity": "longevity", "conversation": "conversation", "counterfact": "counterfact"}


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in SUBCOMMANDS:
        print(f"usage: python -m sleep_core.bench {{{','.join(SUBCOMMANDS)}}} [options]  (--help on each)")
        return 2
    module = importlib.import_module(f".{SUBCOMMANDS[sys.argv[1]]}", __package__)
    return module.main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
