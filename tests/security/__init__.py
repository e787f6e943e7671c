"""Attacks on the registry, the daemon and the client (issue #19), each performed against real processes."""
