"""The hub: `Hub` (in `facade`) over the registry, membership, delivery, recovery,
presence and lifecycle, and `Connection` with its writer and reader.

The hub knows brokers and the core, never an endpoint, a token scheme or the CLI.
"""
