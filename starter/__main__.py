"""`python -m starter` is the `parcours` command."""

from starter.cli import main

if __name__ == "__main__":
    main()
