"""Every error is JSON: {"error": {"code", "message", "details"}}, never an HTML page or a 500 for bad input."""

from flask import Flask, jsonify
from pydantic import ValidationError
from sqlalchemy.exc import DataError, InterfaceError, OperationalError
from werkzeug.exceptions import HTTPException


class APIError(Exception):
    def __init__(self, status: int, code: str, message: str, details=None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details
        self.headers = headers or {}


def error_response(status: int, code: str, message: str, details=None, headers: dict | None = None):
    return jsonify({"error": {"code": code, "message": message, "details": details}}), status, headers or {}


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(APIError)
    def api_error(e: APIError):
        return error_response(e.status, e.code, e.message, e.details, e.headers)

    @app.errorhandler(ValidationError)
    def validation_error(e: ValidationError):
        details = [{"field": ".".join(str(p) for p in err["loc"]), "message": err["msg"]} for err in e.errors()]
        summary = "; ".join(f"{d['field'] or 'body'}: {d['message']}" for d in details)
        return error_response(422, "validation_error", f"invalid request: {summary}", details)

    @app.errorhandler(HTTPException)
    def http_error(e: HTTPException):
        code = (e.name or "error").lower().replace(" ", "_")
        return error_response(e.code or 500, code, e.description or e.name)

    @app.errorhandler(DataError)
    def unstorable_value(e):
        # PostgreSQL refuses some values outright (a NUL character in a text): the request's fault.
        return error_response(400, "invalid_value", "a value of the request cannot be stored or searched for")

    @app.errorhandler(OperationalError)
    @app.errorhandler(InterfaceError)
    def database_unavailable(e):
        app.logger.warning("database unavailable: %s", e.__class__.__name__)  # the URL and password stay out
        return error_response(503, "database_unavailable", "the database is unavailable; retry shortly")

    @app.errorhandler(Exception)
    def unexpected(e: Exception):
        app.logger.exception("unhandled error")
        return error_response(500, "internal_error", "internal error")
