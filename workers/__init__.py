"""The conversion worker: the RQ job (convert.py), one stage module per kind, and the error classes."""
