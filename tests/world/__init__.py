"""The integration test world: a network namespace with DNSSEC-signed zones served by bind9,
validated by unbound, and a test CA.  See ``world.build_world`` and ``scenarios``."""
