"""`python -m secure_maas` runs the same CLI as the `secure-maas` console script."""

from secure_maas.cli import main

if __name__ == "__main__":
    main()
