"""``python -m eval`` is ``python -m eval.run``."""

from eval.run import main

if __name__ == "__main__":
    main()
