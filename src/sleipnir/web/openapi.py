"""The OpenAPI 3.1 document of the JSON API (served at ``/api/openapi.json``).

Written by hand next to the routes; a test checks that every route is in it,
with the status codes the route answers, and nothing else.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .state import WebState

__all__ = ["openapi_document"]


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _ok(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_UNAUTHORIZED = _error("no or wrong `Authorization: Bearer <token>` (when a token is set)")
_UNAVAILABLE = {
    **_error("the broker or result store is unreachable; try again after Retry-After seconds"),
    "headers": {"Retry-After": {"schema": {"type": "integer"}}},
}
_SELECTION = {
    "required": True,
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Selection"}}},
}


def openapi_document(web: WebState | None = None) -> dict[str, Any]:
    """The document; ``web`` adds the task names this server knows as an enum."""
    tasks = sorted(web.app.tasks) if web is not None else []
    task_schema: dict[str, Any] = {"type": "string", "description": "a registered task's name"}
    if tasks:
        task_schema["enum"] = tasks
    job_id = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
    obj = {"type": "object"}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Sleipnir HTTP API",
            "version": "1",
            "description": "Enqueue background jobs (202 Accepted), cancel them, and look at "
            "queues, periodic jobs, workers and dead letters. Every path but /healthz needs "
            "`Authorization: Bearer <SLEIPNIR_API_TOKEN>` when a token is set.",
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "properties": {"error": {"type": "string"}},
                    "required": ["error"],
                },
                "JobRequest": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["task"],
                    "properties": {
                        "task": task_schema,
                        "args": {"type": "array", "default": []},
                        "kwargs": {"type": "object", "default": {}},
                        "queue": {"type": ["string", "null"]},
                        "delay": {"type": ["number", "null"], "minimum": 0},
                        "priority": {"type": ["integer", "null"], "minimum": -255, "maximum": 255},
                    },
                },
                "Accepted": {
                    "type": "object",
                    "required": ["id", "status_url"],
                    "properties": {"id": {"type": "string"}, "status_url": {"type": "string"}},
                },
                "Job": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string"},
                        "state": {
                            "enum": [
                                "queued",
                                "scheduled",
                                "running",
                                "retrying",
                                "succeeded",
                                "failed",
                                "cancelled",
                            ]
                        },
                        "task": {"type": ["string", "null"]},
                        "queue": {"type": ["string", "null"]},
                        "attempts": {"type": "integer"},
                        "created_at": {"type": ["number", "null"]},
                        "started_at": {"type": ["number", "null"]},
                        "finished_at": {"type": ["number", "null"]},
                        "result": {},
                        "error": {"type": ["string", "null"]},
                        "args": {"type": ["array", "null"]},
                        "kwargs": {"type": ["object", "null"]},
                        "progress": {
                            "oneOf": [{"$ref": "#/components/schemas/Progress"}, {"type": "null"}]
                        },
                    },
                },
                "Progress": {
                    "type": "object",
                    "description": "what the job last reported with ctx.progress(done, total)",
                    "required": ["done", "total"],
                    "properties": {
                        "done": {"type": "number"},
                        "total": {"type": ["number", "null"]},
                    },
                },
                "Cancelled": {
                    "type": "object",
                    "required": ["id", "status"],
                    "properties": {"id": {"type": "string"}, "status": {"const": "cancelled"}},
                },
                "Schedule": {
                    "type": "object",
                    "properties": {
                        "task": {"type": "string"},
                        "queue": {"type": "string"},
                        "schedule": {
                            "type": "string",
                            "description": "`every 30s` or `cron '0 6 * * *' (Europe/Oslo)`",
                        },
                        "catch_up": {"type": "number"},
                        "next_run_at": {"type": "number"},
                        "next_run_in": {"type": "number"},
                        "last_tick_at": {"type": "number"},
                        "last_tick": {
                            "enum": ["fired", "pending", "missed", "expired", "unknown"],
                            "description": "fired; pending: due, not fired yet; missed: its "
                            "catch-up window passed unfired; expired: too old to tell; unknown: "
                            "the result store keeps no claimed keys",
                        },
                        "fired_by": {"type": ["string", "null"]},
                    },
                },
                "Queue": {
                    "type": "object",
                    "properties": {
                        "queue": {"type": "string"},
                        "ready": {"type": "integer"},
                        "scheduled": {"type": "integer"},
                        "running": {"type": "integer"},
                        "dead": {"type": "integer"},
                        "oldest_ready_at": {"type": ["number", "null"]},
                        "oldest_ready_age": {
                            "type": ["number", "null"],
                            "description": "seconds the oldest ready job has waited",
                        },
                        "next_scheduled_at": {
                            "type": ["number", "null"],
                            "description": "when the next scheduled job comes due (epoch "
                            "seconds); null when none is scheduled or the backend cannot tell",
                        },
                        "next_scheduled_in": {
                            "type": ["number", "null"],
                            "minimum": 0,
                            "description": "seconds until then (0 when already due)",
                        },
                    },
                },
                "Selection": {
                    "type": "object",
                    "additionalProperties": False,
                    "description": 'either {"ids": [...]} or {"all": true}; with "all", '
                    '"queue" and "q" narrow it to the dead letters GET /api/dead shows for '
                    "the same filter (without them: every dead letter)",
                    "properties": {
                        "ids": {"type": "array", "items": {"type": "string"}},
                        "all": {"type": "boolean"},
                        "queue": {"type": "string", "description": "only this queue's"},
                        "q": {
                            "type": "string",
                            "description": "only those whose id, task or reason contains "
                            "this text (case-insensitive)",
                        },
                        "expect": {
                            "type": "integer",
                            "minimum": 0,
                            "description": "how many the client saw match; if another "
                            "number matches now, nothing is done (409)",
                        },
                    },
                },
            },
        },
        "security": [{"bearer": []}],
        "paths": {
            "/api/jobs": {
                "post": {
                    "summary": "Enqueue a job",
                    "parameters": [
                        {
                            "name": "Idempotency-Key",
                            "in": "header",
                            "required": False,
                            "schema": {"type": "string", "maxLength": 255},
                            "description": "the same key within its window gives the same job",
                        }
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/JobRequest"}
                            }
                        },
                    },
                    "responses": {
                        "202": {
                            **_ok(
                                "stored durably; ask status_url",
                                {"$ref": "#/components/schemas/Accepted"},
                            ),
                            "headers": {"Location": {"schema": {"type": "string"}}},
                        },
                        "400": _error("malformed JSON or a malformed header"),
                        "401": _UNAUTHORIZED,
                        "413": _error("body (or the encoded job) over the payload limit"),
                        "415": _error("the body is not Content-Type: application/json"),
                        "422": _error(
                            "unknown task, arguments that do not fit it, bad options, or an "
                            "Idempotency-Key reused with another body"
                        ),
                        "503": _UNAVAILABLE,
                    },
                }
            },
            "/api/jobs/{job_id}": {
                "get": {
                    "summary": "A job's state, attempts, result or error, timestamps",
                    "parameters": [job_id],
                    "responses": {
                        "200": _ok("the job", {"$ref": "#/components/schemas/Job"}),
                        "401": _UNAUTHORIZED,
                        "404": _error("never enqueued here, or its record expired"),
                        "503": _UNAVAILABLE,
                    },
                }
            },
            "/api/jobs/{job_id}/cancel": {
                "post": {
                    "summary": "Cancel a job: a queued job never runs, a running one is stopped",
                    "description": "Send `Content-Type: application/json` (an empty body or "
                    "`{}`). Asking again for a job not finished yet answers 202 again.",
                    "parameters": [job_id],
                    "responses": {
                        "202": _ok(
                            "cancellation asked for; the job's state reads cancelled",
                            {"$ref": "#/components/schemas/Cancelled"},
                        ),
                        "401": _UNAUTHORIZED,
                        "404": _error("never enqueued here, or its record expired"),
                        "409": _error("the job already finished: nothing to cancel"),
                        "415": _error("the request is not Content-Type: application/json"),
                        "503": _UNAVAILABLE,
                    },
                }
            },
            "/api/schedules": {
                "get": {
                    "summary": "Periodic tasks: schedule, next run, whether the last tick fired",
                    "responses": {
                        "200": _ok(
                            "the periodic tasks",
                            {
                                "type": "object",
                                "properties": {
                                    "schedules": {
                                        "type": "array",
                                        "items": {"$ref": "#/components/schemas/Schedule"},
                                    }
                                },
                            },
                        ),
                        "401": _UNAUTHORIZED,
                        "503": _UNAVAILABLE,
                    },
                }
            },
            "/api/queues": {
                "get": {
                    "summary": "Counts per queue, the oldest ready job's age and when the "
                    "next scheduled job comes due",
                    "responses": {
                        "200": _ok(
                            "the queues",
                            {
                                "type": "object",
                                "properties": {
                                    "queues": {
                                        "type": "array",
                                        "items": {"$ref": "#/components/schemas/Queue"},
                                    }
                                },
                            },
                        ),
                        "401": _UNAUTHORIZED,
                        "503": _UNAVAILABLE,
                    },
                }
            },
            "/api/workers": {
                "get": {
                    "summary": "Live workers, from their heartbeats, with the jobs they run",
                    "responses": {
                        "200": _ok("the workers", obj),
                        "401": _UNAUTHORIZED,
                        "503": _UNAVAILABLE,
                    },
                }
            },
            "/api/hosts": {
                "get": {
                    "summary": "Hosts of live workers and their figures (CPU steal, load, memory)",
                    "responses": {
                        "200": _ok("the hosts", obj),
                        "401": _UNAUTHORIZED,
                        "503": _UNAVAILABLE,
                    },
                }
            },
            "/api/tasks": {
                "get": {
                    "summary": "Per task and queue: counts, queue wait and run time quantiles",
                    "responses": {
                        "200": _ok("the tasks", obj),
                        "401": _UNAUTHORIZED,
                        "503": _UNAVAILABLE,
                    },
                }
            },
            "/api/dead": {
                "get": {
                    "summary": "Dead letters, oldest first",
                    "parameters": [
                        {"name": "queue", "in": "query", "schema": {"type": "string"}},
                        {
                            "name": "q",
                            "in": "query",
                            "schema": {"type": "string"},
                            "description": "text in the id, task or reason (case-insensitive)",
                        },
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 10000},
                        },
                    ],
                    "responses": {
                        "200": _ok("the dead letters", obj),
                        "400": _error("a bad limit"),
                        "401": _UNAUTHORIZED,
                        "503": _UNAVAILABLE,
                    },
                }
            },
            "/api/dead/retry": {
                "post": {
                    "summary": "Put dead letters back on their queues",
                    "requestBody": _SELECTION,
                    "responses": {
                        "200": _ok("what moved and what was not a dead letter", obj),
                        "400": _error("malformed JSON"),
                        "401": _UNAUTHORIZED,
                        "409": _error("another number than expect matches now; nothing done"),
                        "413": _error("body over the limit"),
                        "415": _error("the body is not Content-Type: application/json"),
                        "422": _error("neither ids nor all, or a filter with ids"),
                        "503": _UNAVAILABLE,
                    },
                }
            },
            "/api/dead/delete": {
                "post": {
                    "summary": "Delete dead letters",
                    "requestBody": _SELECTION,
                    "responses": {
                        "200": _ok("how many were deleted", obj),
                        "400": _error("malformed JSON"),
                        "401": _UNAUTHORIZED,
                        "409": _error("another number than expect matches now; nothing done"),
                        "413": _error("body over the limit"),
                        "415": _error("the body is not Content-Type: application/json"),
                        "422": _error("neither ids nor all, or a filter with ids"),
                        "503": _UNAVAILABLE,
                    },
                }
            },
            "/api/dead/{job_id}": {
                "delete": {
                    "summary": "Delete one dead letter",
                    "parameters": [job_id],
                    "responses": {
                        "204": {"description": "deleted"},
                        "401": _UNAUTHORIZED,
                        "404": _error("no such dead letter"),
                        "503": _UNAVAILABLE,
                    },
                }
            },
            "/api/openapi.json": {
                "get": {
                    "summary": "This document",
                    "responses": {"200": _ok("the document", obj), "401": _UNAUTHORIZED},
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus text exposition",
                    "responses": {
                        "200": {
                            "description": "metrics",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        },
                        "401": _UNAUTHORIZED,
                        "503": _UNAVAILABLE,
                    },
                }
            },
            "/healthz": {
                "get": {
                    "summary": "Liveness; needs no token",
                    "security": [],
                    "responses": {"200": _ok("the server runs", obj)},
                }
            },
        },
    }
