"""Pure request validation and response building for the gateway (no I/O, no trio, no HTTP).

The HTTP layer (app.py) turns bytes into a parsed JSON object, hands it to `parse_*`, and
renders what `*_response` returns. Every error is an `ApiError` carrying the HTTP status and
OpenAI's error body `{"error": {"message", "type", "param", "code"}}`, so the official clients
raise their usual exception classes (400 BadRequestError, 401 AuthenticationError, 404
NotFoundError, ...).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dsonode.core.constants import CODE_BYTES, DIM, PREFIX_DIMS
from dsonode.core.errors import DsoError

#: Output dimensions a client may ask for: the native one or a Matryoshka prefix.
ALLOWED_DIMS = (*PREFIX_DIMS, DIM)
#: `encoding_format` values. "bitdelta" is our extension: the 964-byte code, base64.
ENCODINGS = ("float", "base64", "bitdelta")


class ApiError(DsoError):
    """A request the gateway refuses, with the HTTP status and OpenAI's error fields."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


@dataclass(frozen=True)
class Limits:
    """Bounds on what one request may ask for (the body size is bounded before parsing)."""

    max_inputs: int = 2048  # OpenAI's own limit on inputs per embeddings request
    max_input_chars: int = 32_768  # per input/query/document (the encoder truncates anyway)
    max_documents: int = 1000  # per rerank request (Cohere's recommended ceiling)


@dataclass(frozen=True)
class EmbeddingsRequest:
    texts: tuple[str, ...]
    dim: int
    encoding: str  # one of ENCODINGS


@dataclass(frozen=True)
class RerankRequest:
    query: str
    documents: tuple[str, ...]
    top_n: int  # already clamped to len(documents)
    return_documents: bool


def _require_object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object", code="invalid_body")
    return body


def check_model(body: dict[str, Any], model_name: str, *, required: bool) -> None:
    """The `model` field must name this node's model; unknown names get OpenAI's 404."""
    model = body.get("model")
    if model is None:
        if required:
            raise ApiError(
                400,
                f"you must provide a model parameter (this node serves {model_name!r})",
                param="model",
                code="missing_required_parameter",
            )
        return
    if not isinstance(model, str):
        raise ApiError(400, "'model' must be a string", param="model", code="invalid_type")
    if model != model_name:
        raise ApiError(
            404,
            f"The model `{model[:200]}` does not exist or you do not have access to it. "
            f"This node serves `{model_name}`.",
            param="model",
            code="model_not_found",
        )


def _check_text(value: Any, what: str, param: str, limits: Limits) -> str:
    if not isinstance(value, str):
        raise ApiError(400, f"{what} must be a string", param=param, code="invalid_type")
    if not value:
        raise ApiError(400, f"{what} cannot be an empty string", param=param, code="invalid_value")
    if len(value) > limits.max_input_chars:
        raise ApiError(
            400,
            f"{what} is {len(value)} characters long; the limit is {limits.max_input_chars}",
            param=param,
            code="input_too_long",
        )
    return value


def _is_token_array(value: Any) -> bool:
    if isinstance(value, list) and value:
        first = value[0]
        return (isinstance(first, int) and not isinstance(first, bool)) or (
            isinstance(first, list) and (not first or isinstance(first[0], int))
        )
    return False


def parse_embeddings_request(body: Any, model_name: str, limits: Limits) -> EmbeddingsRequest:
    """Validate an OpenAI `POST /v1/embeddings` body. Unknown extra fields are ignored."""
    body = _require_object(body)
    check_model(body, model_name, required=True)

    raw = body.get("input")
    if raw is None:
        raise ApiError(
            400,
            "you must provide an 'input' (a string or a list of strings)",
            param="input",
            code="missing_required_parameter",
        )
    if _is_token_array(raw):
        # OpenAI accepts arrays of tiktoken ids; they mean nothing to this node's tokenizer.
        raise ApiError(
            400,
            "token-array inputs are not supported: this model does not use OpenAI's tokenizer; "
            "send the text as strings (LangChain: OpenAIEmbeddings(check_embedding_ctx_length="
            "False))",
            param="input",
            code="unsupported_input",
        )
    if isinstance(raw, str):
        texts: tuple[str, ...] = (_check_text(raw, "'input'", "input", limits),)
    elif isinstance(raw, list):
        if not raw:
            raise ApiError(
                400, "'input' cannot be an empty list", param="input", code="invalid_value"
            )
        if len(raw) > limits.max_inputs:
            raise ApiError(
                400,
                f"'input' has {len(raw)} items; the limit is {limits.max_inputs} per request",
                param="input",
                code="too_many_inputs",
            )
        texts = tuple(
            _check_text(item, f"'input[{i}]'", "input", limits) for i, item in enumerate(raw)
        )
    else:
        raise ApiError(
            400, "'input' must be a string or a list of strings", param="input", code="invalid_type"
        )

    dim = body.get("dimensions")
    if dim is None:
        dim = DIM
    elif isinstance(dim, bool) or not isinstance(dim, int) or dim not in ALLOWED_DIMS:
        raise ApiError(
            400,
            f"'dimensions' must be one of {list(ALLOWED_DIMS)} (the native {DIM} or a "
            f"Matryoshka prefix), got {str(dim)[:50]}",
            param="dimensions",
            code="invalid_value",
        )

    encoding = body.get("encoding_format")
    if encoding is None:
        encoding = "float"
    if not isinstance(encoding, str) or encoding not in ENCODINGS:
        raise ApiError(
            400,
            f"'encoding_format' must be one of {list(ENCODINGS)}, got {str(encoding)[:50]!r}",
            param="encoding_format",
            code="invalid_value",
        )
    if encoding == "bitdelta" and dim != DIM:
        raise ApiError(
            400,
            f"'encoding_format': 'bitdelta' codes cover all {DIM} dimensions; "
            "omit 'dimensions' or set it to 7680",
            param="dimensions",
            code="invalid_value",
        )
    return EmbeddingsRequest(texts=texts, dim=dim, encoding=encoding)


def parse_rerank_request(body: Any, model_name: str, limits: Limits) -> RerankRequest:
    """Validate a Cohere/Jina-style `POST /v1/rerank` body. `model` is optional here."""
    body = _require_object(body)
    check_model(body, model_name, required=False)
    query = _check_text(body.get("query"), "'query'", "query", limits)

    raw_docs = body.get("documents")
    if not isinstance(raw_docs, list) or not raw_docs:
        raise ApiError(
            400,
            "'documents' must be a non-empty list of strings or of objects with a 'text' string",
            param="documents",
            code="invalid_value",
        )
    if len(raw_docs) > limits.max_documents:
        raise ApiError(
            400,
            f"'documents' has {len(raw_docs)} items; the limit is {limits.max_documents}",
            param="documents",
            code="too_many_documents",
        )
    docs = []
    for i, doc in enumerate(raw_docs):
        if isinstance(doc, dict):
            doc = doc.get("text")
        docs.append(_check_text(doc, f"'documents[{i}]' (or its 'text')", "documents", limits))

    top_n = body.get("top_n")
    if top_n is None:
        top_n = len(docs)
    elif isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 1:
        raise ApiError(
            400, "'top_n' must be a positive integer", param="top_n", code="invalid_value"
        )
    return_documents = body.get("return_documents", False)
    if return_documents is None:
        return_documents = False
    if not isinstance(return_documents, bool):
        raise ApiError(
            400,
            "'return_documents' must be a boolean",
            param="return_documents",
            code="invalid_type",
        )
    return RerankRequest(
        query=query,
        documents=tuple(docs),
        top_n=min(top_n, len(docs)),
        return_documents=return_documents,
    )


def matryoshka_prefix(vectors: np.ndarray, dim: int) -> np.ndarray:
    """The first `dim` coordinates of unit vectors, renormalised to unit L2 norm (float32)."""
    if dim == vectors.shape[1]:
        return np.ascontiguousarray(vectors, dtype=np.float32)
    prefix = np.asarray(vectors[:, :dim], dtype=np.float32)
    norms = np.linalg.norm(prefix, axis=1, keepdims=True)
    return (prefix / np.maximum(norms, 1e-12)).astype(np.float32)


def embeddings_response(
    vectors: np.ndarray,
    token_counts: Sequence[int],
    model_name: str,
    encoding: str,
    *,
    codes: np.ndarray | None = None,
    space_id: str | None = None,
) -> dict[str, Any]:
    """The OpenAI embeddings response. `vectors` are float32 (n, d) unit vectors.

    float: lists of numbers (orjson writes float32 shortest round-trip reprs);
    base64: little-endian float32 bytes, as the openai client decodes them;
    bitdelta: `codes` (n, 964) uint8 as base64, plus `x_dso_space_id` so the caller knows
    which embedding space (and reference vector) the codes belong to.
    """
    data: list[dict[str, Any]] = []
    if encoding == "float":
        items: Sequence[Any] = list(vectors)
    elif encoding == "base64":
        le = np.ascontiguousarray(vectors, dtype="<f4")
        items = [base64.b64encode(row.tobytes()).decode("ascii") for row in le]
    elif encoding == "bitdelta":
        if codes is None or codes.shape != (len(vectors), CODE_BYTES):
            raise ValueError("bitdelta encoding needs one 964-byte code per vector")
        items = [base64.b64encode(row.tobytes()).decode("ascii") for row in codes]
    else:  # parse_embeddings_request never lets this through
        raise ValueError(f"unknown encoding {encoding!r}")
    for i, item in enumerate(items):
        data.append({"object": "embedding", "index": i, "embedding": item})
    total = int(sum(token_counts))
    response: dict[str, Any] = {
        "object": "list",
        "data": data,
        "model": model_name,
        "usage": {"prompt_tokens": total, "total_tokens": total},
    }
    if encoding == "bitdelta":
        response["x_dso_space_id"] = space_id
    return response


def rerank_response(
    req: RerankRequest,
    query_vector: np.ndarray,
    doc_vectors: np.ndarray,
    token_counts: Sequence[int],
    model_name: str,
    request_id: str,
) -> dict[str, Any]:
    """Rank documents by cosine similarity to the query (unit vectors: a dot product).

    `relevance_score` is that cosine, in [-1, 1]; results are sorted best first (ties by
    index) and cut to `top_n`.
    """
    scores = doc_vectors @ query_vector
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))[: req.top_n]
    results = []
    for i in order:
        result: dict[str, Any] = {"index": i, "relevance_score": float(scores[i])}
        if req.return_documents:
            result["document"] = {"text": req.documents[i]}
        results.append(result)
    total = int(sum(token_counts))
    return {
        "id": request_id,
        "model": model_name,
        "results": results,
        "usage": {"prompt_tokens": total, "total_tokens": total},
    }
