"""Reference applications built on mailbag; not part of the library."""
