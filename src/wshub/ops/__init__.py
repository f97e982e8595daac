"""Operations, beside the hub and reading it: Prometheus metrics, the HTTP API, the
AsyncAPI document and the log formats.
"""
