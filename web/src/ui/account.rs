//! Setting the owner's password on first run, signing in and out.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use crate::backend::{Backend, BackendError};

use super::password::{self, FieldError};
use super::session::cleared_session_cookie;
use super::view::{LoginPage, SetupPage};
use super::{
    NoFields, PageError, SessionForm, Ui, check_form_token, form_page, form_token, parse_form, signed_in, with_cookie,
};

pub(crate) async fn setup_form<B: Backend>(State(ui): State<Ui<B>>, headers: HeaderMap) -> Result<Response, PageError> {
    if ui.backend.owner_password_hash().await?.is_some() {
        return Err(PageError::Redirect("/login"));
    }
    let (token, new) = form_token(&headers)?;
    let page = SetupPage { form_token: token.clone(), password_error: None, confirm_error: None };
    Ok(form_page(StatusCode::OK, &page, &token, new))
}

#[derive(Debug, Deserialize)]
struct SetupForm {
    #[serde(default)]
    form_token: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    confirm: String,
}

const ALREADY_SET: &str = "The owner's password is already set; sign in with it. (To start over, stop the hub \
                           and remove owner.password from its data directory.)";

pub(crate) async fn setup<B: Backend>(
    State(ui): State<Ui<B>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, PageError> {
    let form: SetupForm = parse_form(&body)?;
    check_form_token(&headers, &form.form_token)?;
    if ui.backend.owner_password_hash().await?.is_some() {
        return Err(PageError::new(StatusCode::CONFLICT, ALREADY_SET));
    }
    if let Err(FieldError { field, message }) = password::check_new(&form.password, &form.confirm) {
        let (password_error, confirm_error) =
            if field == "confirm" { (None, Some(message)) } else { (Some(message), None) };
        let page = SetupPage { form_token: form.form_token.clone(), password_error, confirm_error };
        return Ok(form_page(StatusCode::UNPROCESSABLE_ENTITY, &page, &form.form_token, false));
    }
    let hash = tokio::task::spawn_blocking(move || password::hash(&form.password))
        .await
        .map_err(PageError::internal)?
        .map_err(PageError::internal)?;
    match ui.backend.set_owner_password_hash(hash).await {
        Ok(()) => {}
        // Another setup won the race.
        Err(BackendError::Conflict(_)) => return Err(PageError::new(StatusCode::CONFLICT, ALREADY_SET)),
        Err(e) => return Err(e.into()),
    }
    tracing::info!("the owner's password was set");
    signed_in(&ui.sessions)
}

pub(crate) async fn login_form<B: Backend>(State(ui): State<Ui<B>>, headers: HeaderMap) -> Result<Response, PageError> {
    if ui.backend.owner_password_hash().await?.is_none() {
        return Err(PageError::Redirect("/setup"));
    }
    if ui.sessions.find(&headers).is_some() {
        return Err(PageError::Redirect("/"));
    }
    let (token, new) = form_token(&headers)?;
    let page = LoginPage { form_token: token.clone(), error: None, note: None };
    Ok(form_page(StatusCode::OK, &page, &token, new))
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    #[serde(default)]
    form_token: String,
    #[serde(default)]
    password: String,
}

pub(crate) async fn login<B: Backend>(
    State(ui): State<Ui<B>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, PageError> {
    let form: LoginForm = parse_form(&body)?;
    check_form_token(&headers, &form.form_token)?;
    let Some(stored) = ui.backend.owner_password_hash().await? else {
        return Err(PageError::Redirect("/setup"));
    };
    let page = |error: String| LoginPage { form_token: form.form_token.clone(), error: Some(error), note: None };
    if let Err(wait) = ui.sessions.begin_login() {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        tracing::warn!(wait_secs = secs, "a login was refused: too many wrong passwords");
        let message = format!("Too many wrong passwords. Try again in {secs} s.");
        let mut response = form_page(StatusCode::TOO_MANY_REQUESTS, &page(message), &form.form_token, false);
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        return Ok(response);
    }
    let password = form.password.clone();
    let matches = tokio::task::spawn_blocking(move || password::verify(&password, &stored))
        .await
        .map_err(PageError::internal)?
        .map_err(PageError::internal)?;
    if !matches {
        tracing::warn!("a login failed: wrong password");
        return Ok(form_page(StatusCode::UNAUTHORIZED, &page("Wrong password.".to_owned()), &form.form_token, false));
    }
    ui.sessions.login_succeeded();
    signed_in(&ui.sessions)
}

pub(crate) async fn logout<B: Backend>(
    State(ui): State<Ui<B>>,
    SessionForm { owner, form: NoFields {} }: SessionForm<NoFields>,
) -> Response {
    ui.sessions.end(&owner.id);
    with_cookie(Redirect::to("/login").into_response(), &cleared_session_cookie())
}
