"""`python -m abaw` runs the command-line interface (also used by `torchrun -m abaw`)."""

from abaw.cli import main

if __name__ == "__main__":
    main()
