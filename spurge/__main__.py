"""``python -m spurge``: the same command line as the ``spurge`` script."""

from spurge.cli import main

if __name__ == "__main__":
    main()
