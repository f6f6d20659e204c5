"""`python -m pmmrec` runs the command-line interface (also under torchrun)."""

from pmmrec.cli import main

if __name__ == "__main__":
    main()
