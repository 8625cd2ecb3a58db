//! The one error type of the HTTP layer. Every failure a handler, an extractor or the auth
//! check can meet becomes an [`ApiError`], which answers `{"error": "..."}` with a status that
//! says whose fault it was. Internal details go to the log, never to the client.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::backend::BackendError;
use crate::model::ErrorBody;

/// What the client is told when the hub broke; the detail is in the hub's log.
pub const INTERNAL_ERROR_MESSAGE: &str = "internal error (the hub's log has the details)";

/// An HTTP error answer: a status and a message a homeowner can read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    status: StatusCode,
    message: String,
    /// The `WWW-Authenticate` challenge of a 401.
    challenge: Option<&'static str>,
}

impl ApiError {
    /// An answer with any status; prefer the named constructors.
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into(), challenge: None }
    }

    /// 400: the request itself is wrong.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    /// 401 with a `WWW-Authenticate` challenge.
    pub fn unauthorized(message: impl Into<String>, challenge: &'static str) -> ApiError {
        ApiError { status: StatusCode::UNAUTHORIZED, message: message.into(), challenge: Some(challenge) }
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }

    /// 500: logs `detail` and tells the client only that something broke.
    pub fn internal(detail: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %detail, "internal error while answering an API request");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, INTERNAL_ERROR_MESSAGE)
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// What the client sees in `{"error": ...}`.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl From<BackendError> for ApiError {
    fn from(error: BackendError) -> ApiError {
        match error {
            BackendError::NotFound(m) => ApiError::not_found(m),
            BackendError::Invalid(m) => ApiError::bad_request(m),
            BackendError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, m),
            BackendError::TooLarge(m) => ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, m),
            BackendError::Unavailable(m) => {
                tracing::warn!(error = %m, "backend unavailable");
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, m)
            }
            BackendError::Internal(detail) => ApiError::internal(detail),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(ErrorBody { error: self.message })).into_response();
        if let Some(challenge) = self.challenge {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
        }
        response
    }
}
