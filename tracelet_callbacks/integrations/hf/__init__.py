"""Hugging Face ``Trainer``: the callback (``callback``) and what it reads off the trainer (``info``)."""
