"""Tests of hamt.train, one file per module (a package, so their names cannot clash with other test folders)."""
