"""`python -m amc_data` runs the `amc-data` command line."""

from amc_data_cli.main import main

if __name__ == "__main__":
    main()
