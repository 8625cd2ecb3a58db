//! Extractors whose every rejection is an [`ApiError`] with a message a person can act on.
//!
//! Request bodies are read as bytes (so [`axum::extract::DefaultBodyLimit`] applies, answering
//! 413) and parsed here with the JSON path of whatever field was wrong.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// The request body limit, in bytes (64 KiB): far above any admin request.
pub const BODY_LIMIT: usize = 64 * 1024;

/// The largest plugin module an upload may carry, in bytes (16 MiB). The hub's own limit
/// (`plugin::MAX_WASM`) is checked against it where the hub implements the backend.
pub const PLUGIN_WASM_LIMIT: usize = 16 * 1024 * 1024;

/// The request body limit of a plugin install or upgrade: the largest module as base64, and
/// 1 MiB for the manifest (at most 64 KiB, JSON-escaped), the owner's config and the JSON
/// around them.
pub const PLUGIN_BODY_LIMIT: usize = PLUGIN_WASM_LIMIT.div_ceil(3) * 4 + 1024 * 1024;

/// A JSON request body. Needs `Content-Type: application/json`.
#[derive(Debug, Clone)]
pub(crate) struct JsonBody<T>(pub(crate) T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        required_json(request, state, BODY_LIMIT).await.map(JsonBody)
    }
}

/// A JSON body carrying a plugin upload, up to [`PLUGIN_BODY_LIMIT`] (the route must raise
/// [`axum::extract::DefaultBodyLimit`] to that).
#[derive(Debug, Clone)]
pub(crate) struct UploadBody<T>(pub(crate) T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for UploadBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        required_json(request, state, PLUGIN_BODY_LIMIT).await.map(UploadBody)
    }
}

/// A required JSON body; `limit` is the body limit the route applies (for the 413's message).
async fn required_json<S: Send + Sync, T: DeserializeOwned>(
    request: Request,
    state: &S,
    limit: usize,
) -> Result<T, ApiError> {
    let headers = request.headers().clone();
    let bytes = read_body(request, state, limit).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("the request needs a JSON body"));
    }
    parse_json(&headers, &bytes)
}

/// An optional JSON body: an empty body means `T::default()`.
#[derive(Debug, Clone)]
pub(crate) struct OptionalJson<T>(pub(crate) T);

impl<S: Send + Sync, T: DeserializeOwned + Default> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let headers = request.headers().clone();
        let bytes = read_body(request, state, BODY_LIMIT).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJson(T::default()));
        }
        parse_json(&headers, &bytes).map(OptionalJson)
    }
}

async fn read_body<S: Send + Sync>(request: Request, state: &S, limit: usize) -> Result<Bytes, ApiError> {
    Bytes::from_request(request, state).await.map_err(|rejection| body_rejection(&rejection, limit))
}

fn body_rejection(rejection: &BytesRejection, limit: usize) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        const MIB: usize = 1024 * 1024;
        let limit = if limit >= MIB {
            format!("{}.{} MiB", limit / MIB, limit % MIB * 10 / MIB)
        } else {
            format!("{} KiB", limit / 1024)
        };
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("the request body is too large (the limit is {limit})"))
    } else {
        ApiError::bad_request(format!("could not read the request body: {}", rejection.body_text()))
    }
}

fn is_json_content_type(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

fn parse_json<T: DeserializeOwned>(headers: &HeaderMap, bytes: &[u8]) -> Result<T, ApiError> {
    if !is_json_content_type(headers) {
        return Err(ApiError::bad_request("the request body must be JSON, sent with `Content-Type: application/json`"));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        // An unknown field's message names it already.
        let names_the_field = path == "." || inner.to_string().starts_with("unknown field");
        if inner.is_data() && !names_the_field {
            ApiError::bad_request(format!("invalid request body: `{path}`: {inner}"))
        } else if inner.is_data() {
            ApiError::bad_request(format!("invalid request body: {inner}"))
        } else {
            ApiError::bad_request(format!("the request body is not valid JSON: {inner}"))
        }
    })?;
    deserializer
        .end()
        .map_err(|error| ApiError::bad_request(format!("the request body is not valid JSON: {error}")))?;
    Ok(value)
}

/// Path parameters; a bad one is a 400.
#[derive(Debug, Clone)]
pub(crate) struct ApiPath<T>(pub(crate) T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(ApiPath(value)),
            Err(rejection @ PathRejection::MissingPathParams(_)) => Err(ApiError::internal(rejection.body_text())),
            Err(rejection) => Err(ApiError::bad_request(format!("bad path: {}", rejection.body_text()))),
        }
    }
}

/// Query parameters; unknown or repeated ones are a 400 that names them.
#[derive(Debug, Clone)]
pub(crate) struct ApiQuery<T>(pub(crate) T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(value)) => Ok(ApiQuery(value)),
            Err(rejection) => Err(query_rejection(&rejection)),
        }
    }
}

fn query_rejection(rejection: &QueryRejection) -> ApiError {
    let text = rejection.body_text();
    let detail = text.strip_prefix("Failed to deserialize query string: ").unwrap_or(&text);
    ApiError::bad_request(format!("bad query string: {detail}"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn json_headers(content_type: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_str(content_type).unwrap());
        headers
    }

    #[test]
    fn json_content_types_are_recognised_with_parameters_and_suffixes() {
        assert!(is_json_content_type(&json_headers("application/json")));
        assert!(is_json_content_type(&json_headers("Application/JSON; charset=utf-8")));
        assert!(is_json_content_type(&json_headers("application/merge-patch+json")));
        assert!(!is_json_content_type(&json_headers("text/plain")));
        assert!(!is_json_content_type(&json_headers("application/jsonx")));
        assert!(!is_json_content_type(&HeaderMap::new()));
    }

    #[test]
    fn trailing_garbage_after_the_json_value_is_refused() {
        let error = parse_json::<serde_json::Value>(&json_headers("application/json"), b"{} {}").unwrap_err();
        assert!(error.message().contains("not valid JSON"), "{}", error.message());
    }
}
