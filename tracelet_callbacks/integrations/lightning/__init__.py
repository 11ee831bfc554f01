"""Lightning: the framework-free logger core (``core``), trainer introspection (``info``) and the two
thin ``Logger`` classes, one for ``lightning`` (``logger``) and one for ``pytorch_lightning``."""
