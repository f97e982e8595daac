"""The Sans-I/O core: the wire protocol, codecs, send queue and the vocabulary types.

Nothing here imports an event loop, a web framework, a broker or the hub (a test
walks the imports to keep it so): bytes in, frames out, testable without sockets.
"""
