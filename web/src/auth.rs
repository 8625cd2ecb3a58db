//! Who is asking. Every `/api/v1` request passes [`require_auth`], which turns the request's
//! credentials into a [`Principal`] (or a 401) and leaves it in the request's extensions, where
//! handlers take it as an extractor. Two credentials open the API: the admin bearer token (the
//! CLI, scripts), and the owner's web session cookie, which reads freely but changes state only
//! with the session's CSRF token in `X-CSRF-Token` (a cross-site request cannot know it).

use std::fmt;
use std::sync::Arc;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::ui::session::{Sessions, same_secret};

/// The header that carries the session's CSRF token on state-changing API calls.
pub(crate) const CSRF_HEADER: &str = "x-csrf-token";

/// The `WWW-Authenticate` challenge when no credential was sent (RFC 6750 §3).
const CHALLENGE_MISSING: &str = "Bearer realm=\"machinomy-hub\"";
/// The challenge when a credential was sent but not accepted.
const CHALLENGE_INVALID: &str = "Bearer realm=\"machinomy-hub\", error=\"invalid_token\"";

/// Why an admin token cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("the admin token is empty")]
    EmptyToken,
    #[error("the admin token may only contain visible ASCII characters (no spaces)")]
    BadTokenCharacters,
}

/// The admin API's credentials: the bearer token the hub keeps in its data directory.
///
/// Its `Debug` output never shows the token.
#[derive(Clone)]
pub struct AdminAuth {
    token: Box<[u8]>,
}

impl AdminAuth {
    /// Accepts a token that can travel in an `Authorization` header: visible ASCII, no spaces.
    pub fn new(token: impl AsRef<str>) -> Result<AdminAuth, AuthError> {
        let token = token.as_ref();
        if token.is_empty() {
            return Err(AuthError::EmptyToken);
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(AuthError::BadTokenCharacters);
        }
        Ok(AdminAuth { token: token.as_bytes().into() })
    }

    /// The principal behind a request's headers, or the 401 to answer.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, ApiError> {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Err(ApiError::unauthorized(
                "this needs the hub's admin token: send the header `Authorization: Bearer <token>` \
                 (the hub keeps the token in its data directory)",
                CHALLENGE_MISSING,
            ));
        };
        let malformed =
            || ApiError::unauthorized("the Authorization header must be `Bearer <token>`", CHALLENGE_INVALID);
        let value = value.to_str().map_err(|_| malformed())?;
        let (scheme, token) = value.trim().split_once(' ').ok_or_else(malformed)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(malformed());
        }
        // Constant time in the token's contents; only a length mismatch returns early.
        if bool::from(token.trim().as_bytes().ct_eq(&self.token)) {
            Ok(Principal::AdminToken)
        } else {
            Err(ApiError::unauthorized(
                "the admin token is not valid (the hub keeps the current one in its data directory)",
                CHALLENGE_INVALID,
            ))
        }
    }
}

impl fmt::Debug for AdminAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminAuth").field("token", &"<redacted>").finish()
    }
}

/// Who made an authenticated request. Handlers take it as an extractor; it names the decider
/// of an approval.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Principal {
    /// Whoever holds the admin bearer token (the CLI, scripts).
    AdminToken,
    /// The homeowner, signed in to the web UI with the owner's password.
    Owner,
}

impl Principal {
    /// The name recorded as `by` when this principal decides: `admin-token`.
    pub fn name(&self) -> String {
        match self {
            Principal::AdminToken => "admin-token".to_owned(),
            Principal::Owner => "owner".to_owned(),
        }
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Principal, ApiError> {
        // Only `require_auth` puts a principal there; a route outside it has none.
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .ok_or_else(|| ApiError::unauthorized("this needs the hub's admin token", CHALLENGE_MISSING))
    }
}

/// The API's door: the admin token, or a live session of the web UI.
#[derive(Debug)]
pub(crate) struct Gate {
    pub(crate) admin: AdminAuth,
    pub(crate) sessions: Arc<Sessions>,
}

impl Gate {
    /// A bearer token decides alone when sent; otherwise a session cookie, with the CSRF
    /// header for anything but reading.
    fn authenticate(&self, method: &Method, headers: &HeaderMap) -> Result<Principal, ApiError> {
        if headers.contains_key(header::AUTHORIZATION) {
            return self.admin.authenticate(headers);
        }
        let Some(session) = self.sessions.find(headers) else {
            return self.admin.authenticate(headers);
        };
        if method == Method::GET || method == Method::HEAD {
            return Ok(Principal::Owner);
        }
        if crate::ui::from_another_site(headers) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "a change made with the web session must come from the hub's own pages, not another site",
            ));
        }
        match headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok()) {
            Some(token) if same_secret(token, &session.csrf) => Ok(Principal::Owner),
            _ => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "a change made with the web session needs the session's token in the header `X-CSRF-Token` \
                 (the pages carry it in <meta name=\"csrf-token\">)",
            )),
        }
    }
}

/// Middleware: authenticates the request, stores its [`Principal`], and marks the answer
/// uncacheable (it may carry private data).
pub(crate) async fn require_auth(State(gate): State<Arc<Gate>>, mut request: Request, next: Next) -> Response {
    let mut response = match gate.authenticate(request.method(), request.headers()) {
        Ok(principal) => {
            request.extensions_mut().insert(principal);
            next.run(request).await
        }
        Err(error) => error.into_response(),
    };
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    fn headers(authorization: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_str(authorization).unwrap());
        headers
    }

    #[test]
    fn tokens_that_cannot_travel_in_a_header_are_refused() {
        assert_eq!(AdminAuth::new("").unwrap_err(), AuthError::EmptyToken);
        assert_eq!(AdminAuth::new("two words").unwrap_err(), AuthError::BadTokenCharacters);
        assert_eq!(AdminAuth::new("naïve").unwrap_err(), AuthError::BadTokenCharacters);
    }

    #[test]
    fn debug_output_hides_the_token() {
        let auth = AdminAuth::new("s3cret-token").unwrap();
        assert!(!format!("{auth:?}").contains("s3cret"));
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_the_token_exact() {
        let auth = AdminAuth::new("s3cret").unwrap();
        assert_eq!(auth.authenticate(&headers("Bearer s3cret")).unwrap(), Principal::AdminToken);
        assert_eq!(auth.authenticate(&headers("bearer s3cret")).unwrap(), Principal::AdminToken);
        assert!(auth.authenticate(&headers("Bearer s3cre")).is_err());
        assert!(auth.authenticate(&headers("Bearer s3cret2")).is_err());
        assert!(auth.authenticate(&headers("Bearer S3CRET")).is_err());
        assert!(auth.authenticate(&headers("Basic s3cret")).is_err());
        assert!(auth.authenticate(&headers("s3cret")).is_err());
        assert!(auth.authenticate(&HeaderMap::new()).is_err());
    }

    #[test]
    fn the_admin_token_decides_as_admin_token_and_a_session_as_owner() {
        assert_eq!(Principal::AdminToken.name(), "admin-token");
        assert_eq!(Principal::Owner.name(), "owner");
    }
}
