//! The hub's HTTP surface. Knows HTTP, JSON and HTML and nothing else: the hub plugs in through
//! the [`Backend`] trait and serves [`router`] (the admin API and the homeowner's web UI).
//!
//! ```text
//! let app = machinomy_web::router(Arc::new(hub_backend), AdminAuth::new(token)?);
//! axum::serve(listener, app).with_graceful_shutdown(shutdown).await?;
//! ```

mod api;
mod auth;
pub mod backend;
mod csv;
mod error;
mod events;
mod extract;
pub mod model;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
mod ui;

pub use api::router;
pub use auth::{AdminAuth, AuthError, Principal};
pub use backend::{Backend, BackendError};
pub use error::{ApiError, INTERNAL_ERROR_MESSAGE};
pub use events::MAX_STREAMS;
pub use extract::{BODY_LIMIT, PLUGIN_BODY_LIMIT, PLUGIN_WASM_LIMIT};

/// How far `zone` runs ahead of UTC at `at`, in seconds: the core's [`UtcOffset`] rule for the
/// hub's time zone, where the backend groups reports by its days.
///
/// [`UtcOffset`]: machinomy_core::UtcOffset
pub fn zone_offset(zone: &jiff::tz::TimeZone, at: machinomy_core::Timestamp) -> i32 {
    zone.to_offset(ui::to_jiff(at)).seconds()
}
