"""Lava processes of our own (imported only after ``revsnn.targets.lava`` installs the compat layer)."""
