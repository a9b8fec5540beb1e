"""The REST API: a FastAPI app factory over the service layer."""
