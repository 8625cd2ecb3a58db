//! The owner's sessions and the login rate limit, held in memory: a hub restart logs the owner
//! out, and a cookie from another hub (or another run) names no session here.
//!
//! Time comes from a [`Clock`] so tests move it instead of sleeping.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, header};
use subtle::ConstantTimeEq;

/// The session cookie's name.
pub(crate) const SESSION_COOKIE: &str = "machinomy_session";
/// The cookie of the double-submit token that guards the login and setup forms (no session yet).
pub(crate) const FORM_COOKIE: &str = "machinomy_form";
/// At most this many live sessions; a new login evicts the least recently used.
pub(crate) const MAX_SESSIONS: usize = 64;
/// A session unused this long ends.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(12 * 3600);
/// A session ends this long after login, used or not.
pub(crate) const MAX_SESSION_AGE: Duration = Duration::from_secs(7 * 86_400);
/// Failed logins allowed before each next one locks the login for a while.
pub(crate) const FREE_FAILURES: u32 = 5;
/// Failures older than this (since the first of a run) are forgotten.
pub(crate) const FAILURE_WINDOW: Duration = Duration::from_secs(15 * 60);
/// The longest lockout; it doubles from one second up to this.
pub(crate) const MAX_LOCKOUT: Duration = Duration::from_secs(15 * 60);

/// Where sessions and the rate limit read the time.
pub(crate) trait Clock: Send + Sync + fmt::Debug + 'static {
    fn now(&self) -> Instant;
}

/// The monotonic system clock.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock tests move by hand.
#[cfg(test)]
#[derive(Debug)]
pub(crate) struct ManualClock {
    now: Mutex<Instant>,
}

#[cfg(test)]
impl ManualClock {
    pub(crate) fn new() -> ManualClock {
        ManualClock { now: Mutex::new(Instant::now()) }
    }

    pub(crate) fn advance(&self, by: Duration) {
        let mut now = self.now.lock().unwrap_or_else(PoisonError::into_inner);
        *now += by;
    }
}

#[cfg(test)]
impl Clock for ManualClock {
    fn now(&self) -> Instant {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The operating system gave no randomness: nothing secret can be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no randomness from the operating system: {0}")]
pub(crate) struct RandomError(String);

/// 32 random bytes as 64 hex characters.
pub(crate) fn random_token() -> Result<String, RandomError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| RandomError(e.to_string()))?;
    Ok(hex::encode(bytes))
}

/// Whether two secrets are equal, in time independent of where they differ.
pub(crate) fn same_secret(a: &str, b: &str) -> bool {
    !a.is_empty() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// The value of cookie `name` among the request's `Cookie` headers.
pub(crate) fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.trim())
}

/// `Set-Cookie` for a new session.
pub(crate) fn session_cookie(id: &str) -> String {
    format!("{SESSION_COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}", MAX_SESSION_AGE.as_secs())
}

/// `Set-Cookie` that ends the session in the browser.
pub(crate) fn cleared_session_cookie() -> String {
    format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// `Set-Cookie` for the login and setup forms' token (gone when the browser closes).
pub(crate) fn form_cookie(token: &str) -> String {
    format!("{FORM_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict")
}

/// A one-time message shown on the next page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Flash {
    pub(crate) ok: bool,
    pub(crate) text: String,
}

/// What a request learns of its session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SessionInfo {
    /// The cookie's value (the session's id).
    pub(crate) id: String,
    /// The token every form and state-changing API call of this session must carry.
    pub(crate) csrf: String,
}

#[derive(Debug)]
struct Session {
    csrf: String,
    created: Instant,
    last_seen: Instant,
    flash: Option<Flash>,
}

impl Session {
    fn expired(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.created) >= MAX_SESSION_AGE
            || now.saturating_duration_since(self.last_seen) >= IDLE_TIMEOUT
    }
}

/// Failed logins and the lockout they earned. One owner, so one counter for everyone: a
/// password guesser elsewhere slows the owner too, at most [`MAX_LOCKOUT`] at a time.
#[derive(Debug, Default)]
struct LoginLimiter {
    failures: u32,
    first_failure: Option<Instant>,
    locked_until: Option<Instant>,
}

impl LoginLimiter {
    fn check(&mut self, now: Instant) -> Result<(), Duration> {
        if let Some(first) = self.first_failure
            && now.saturating_duration_since(first) >= FAILURE_WINDOW
            && self.locked_until.is_none_or(|until| now >= until)
        {
            *self = LoginLimiter::default();
        }
        match self.locked_until {
            Some(until) if now < until => Err(until - now),
            _ => Ok(()),
        }
    }

    fn failed(&mut self, now: Instant) {
        self.failures = self.failures.saturating_add(1);
        self.first_failure.get_or_insert(now);
        if let Some(over) = self.failures.checked_sub(FREE_FAILURES)
            && over > 0
        {
            let lockout = Duration::from_secs(1u64 << (over - 1).min(20)).min(MAX_LOCKOUT);
            self.locked_until = Some(now + lockout);
        }
    }
}

/// The live sessions and the login limiter.
#[derive(Debug)]
pub(crate) struct Sessions {
    clock: Arc<dyn Clock>,
    live: Mutex<HashMap<String, Session>>,
    limiter: Mutex<LoginLimiter>,
}

impl Sessions {
    pub(crate) fn new(clock: Arc<dyn Clock>) -> Sessions {
        Sessions { clock, live: Mutex::new(HashMap::new()), limiter: Mutex::new(LoginLimiter::default()) }
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn limiter(&self) -> std::sync::MutexGuard<'_, LoginLimiter> {
        self.limiter.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts a session; the answer's `id` goes in the cookie.
    pub(crate) fn create(&self) -> Result<SessionInfo, RandomError> {
        let info = SessionInfo { id: random_token()?, csrf: random_token()? };
        let now = self.clock.now();
        let mut live = self.live();
        live.retain(|_, s| !s.expired(now));
        while live.len() >= MAX_SESSIONS {
            let Some(oldest) = live.iter().min_by_key(|(_, s)| s.last_seen).map(|(id, _)| id.clone()) else {
                break;
            };
            live.remove(&oldest);
        }
        let session = Session { csrf: info.csrf.clone(), created: now, last_seen: now, flash: None };
        live.insert(info.id.clone(), session);
        Ok(info)
    }

    /// The live session the request's cookie names, marked as used now.
    pub(crate) fn find(&self, headers: &HeaderMap) -> Option<SessionInfo> {
        let id = cookie(headers, SESSION_COOKIE)?;
        // Only our own ids (64 hex) are looked up.
        if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let now = self.clock.now();
        let mut live = self.live();
        let session = live.get_mut(id)?;
        if session.expired(now) {
            live.remove(id);
            return None;
        }
        session.last_seen = now;
        Some(SessionInfo { id: id.to_owned(), csrf: session.csrf.clone() })
    }

    pub(crate) fn end(&self, id: &str) {
        self.live().remove(id);
    }

    pub(crate) fn set_flash(&self, id: &str, flash: Flash) {
        if let Some(session) = self.live().get_mut(id) {
            session.flash = Some(flash);
        }
    }

    pub(crate) fn take_flash(&self, id: &str) -> Option<Flash> {
        self.live().get_mut(id).and_then(|s| s.flash.take())
    }

    /// Admits a login attempt, counted as failed until [`Sessions::login_succeeded`] (so
    /// attempts in parallel cannot slip past the count); `Err(wait)` while the login is locked.
    pub(crate) fn begin_login(&self) -> Result<(), Duration> {
        let now = self.clock.now();
        let mut limiter = self.limiter();
        limiter.check(now)?;
        limiter.failed(now);
        Ok(())
    }

    pub(crate) fn login_succeeded(&self) {
        *self.limiter() = LoginLimiter::default();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn with_cookie(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_str(value).unwrap());
        headers
    }

    fn sessions() -> (Arc<ManualClock>, Sessions) {
        let clock = Arc::new(ManualClock::new());
        (clock.clone(), Sessions::new(clock))
    }

    #[test]
    fn cookies_are_found_among_others() {
        let headers = with_cookie("a=1; machinomy_session=abc ; b=2");
        assert_eq!(cookie(&headers, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(&headers, "b"), Some("2"));
        assert_eq!(cookie(&headers, "c"), None);
    }

    #[test]
    fn a_session_ends_when_idle_or_old() {
        let (clock, sessions) = sessions();
        let info = sessions.create().unwrap();
        let headers = with_cookie(&format!("{SESSION_COOKIE}={}", info.id));
        assert_eq!(sessions.find(&headers), Some(info.clone()));
        clock.advance(IDLE_TIMEOUT - Duration::from_secs(1));
        assert!(sessions.find(&headers).is_some(), "use keeps it alive");
        clock.advance(IDLE_TIMEOUT - Duration::from_secs(1));
        assert!(sessions.find(&headers).is_some());
        clock.advance(IDLE_TIMEOUT);
        assert_eq!(sessions.find(&headers), None, "idle too long");

        let info = sessions.create().unwrap();
        let headers = with_cookie(&format!("{SESSION_COOKIE}={}", info.id));
        for _ in 0..16 {
            clock.advance(Duration::from_secs(11 * 3600));
            let _ = sessions.find(&headers);
        }
        assert_eq!(sessions.find(&headers), None, "older than seven days");
    }

    #[test]
    fn sessions_are_bounded_and_the_least_recently_used_goes() {
        let (clock, sessions) = sessions();
        let first = sessions.create().unwrap();
        let headers = with_cookie(&format!("{SESSION_COOKIE}={}", first.id));
        clock.advance(Duration::from_secs(1));
        let second = sessions.create().unwrap();
        clock.advance(Duration::from_secs(1));
        assert!(sessions.find(&headers).is_some(), "the first is now the most recently used");
        for _ in 0..MAX_SESSIONS - 1 {
            sessions.create().unwrap();
        }
        assert_eq!(sessions.live().len(), MAX_SESSIONS);
        assert!(sessions.find(&headers).is_some());
        let second = with_cookie(&format!("{SESSION_COOKIE}={}", second.id));
        assert_eq!(sessions.find(&second), None);
    }

    #[test]
    fn failed_logins_lock_for_doubling_times_then_are_forgotten() {
        let (clock, sessions) = sessions();
        for _ in 0..FREE_FAILURES {
            assert_eq!(sessions.begin_login(), Ok(()));
        }
        assert_eq!(sessions.begin_login(), Ok(()), "five failures are free");
        assert_eq!(sessions.begin_login(), Err(Duration::from_secs(1)));
        clock.advance(Duration::from_secs(1));
        assert_eq!(sessions.begin_login(), Ok(()));
        assert_eq!(sessions.begin_login(), Err(Duration::from_secs(2)), "refused attempts do not count");
        clock.advance(Duration::from_secs(2));
        assert_eq!(sessions.begin_login(), Ok(()));
        assert_eq!(sessions.begin_login(), Err(Duration::from_secs(4)));
        clock.advance(FAILURE_WINDOW);
        for _ in 0..=FREE_FAILURES {
            assert_eq!(sessions.begin_login(), Ok(()), "the old run was forgotten");
        }
        assert!(sessions.begin_login().is_err());
    }

    #[test]
    fn the_lockout_is_capped_and_a_success_clears_it() {
        let (clock, sessions) = sessions();
        for _ in 0..40 {
            sessions.limiter().failed(clock.now());
        }
        let wait = sessions.begin_login().unwrap_err();
        assert_eq!(wait, MAX_LOCKOUT);
        clock.advance(wait);
        assert_eq!(sessions.begin_login(), Ok(()));
        sessions.login_succeeded();
        assert_eq!(sessions.begin_login(), Ok(()));
        assert_eq!(sessions.begin_login(), Ok(()));
    }
}
