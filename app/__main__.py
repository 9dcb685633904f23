"""`python -m app` is the `bmo` command."""

from app.cli.main import main

if __name__ == "__main__":
    main()
