"""``python -m tracelet_callbacks COMMAND``: see :mod:`tracelet_callbacks.cli`."""

from .cli import main

if __name__ == "__main__":
    main()
