"""Server glue: the protocol endpoint, the FastAPI mount, JWT auth, Origin checks, and
`wshub serve` (uvicorn settings, graceful shutdown, workers) in `serve`.
"""
