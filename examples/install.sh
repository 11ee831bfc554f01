#!/usr/bin/env bash
# From a checkout of this repository. The first line makes .venv (pinning torch==2.13.0 makes pip
# take the CPU build), then trains the main example on CPU and logs it to ./.aim. The second line
# installs the test extras instead and runs the whole suite: it is the command CI runs (.ci/run).
# Each line stands alone: run either, or both.
python3 -m venv .venv && .venv/bin/pip install -q torch==2.13.0 -e ".[tensorboard]" && .venv/bin/python examples/complete_example.py
python3 -m venv .venv && .venv/bin/pip install -q torch==2.13.0 -e ".[test]" && .venv/bin/python -m pytest
