//! The dashboard and the approvals page: what waits for the owner, and deciding it.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use machinomy_core::Verdict;
use serde::Deserialize;

use crate::auth::Principal;
use crate::backend::{Backend, BackendError};
use crate::model::DeviceView;

use super::session::SessionInfo;
use super::view::{self, BudgetRow, Count, DecidedRow, Layout, PaymentRow, PendingRow};
use super::{Frame, MAX_REASON_CHARS, NoFields, Owner, PageError, SessionForm, Ui, done, optional, render};

/// Pending approvals the dashboard lists (the approvals page has them all).
const DASHBOARD_PENDING: usize = 5;
/// Payments the dashboard lists.
pub(crate) const DASHBOARD_PAYMENTS: usize = 10;
/// Decided approvals the approvals page lists.
const DECIDED_SHOWN: usize = 20;

#[derive(Template, Debug)]
#[template(path = "dashboard.html")]
pub(crate) struct DashboardPage {
    pub(crate) layout: Layout,
    pub(crate) pending_total: usize,
    pub(crate) pending_head: Vec<PendingRow>,
    pub(crate) budgets: Vec<BudgetRow>,
    pub(crate) payments: Vec<PaymentRow>,
    pub(crate) channels_open: u64,
    pub(crate) devices: Option<Count>,
    pub(crate) plugins: Option<Count>,
    pub(crate) peers: Option<Count>,
}

#[derive(Template, Debug)]
#[template(path = "approvals.html")]
pub(crate) struct ApprovalsPage {
    pub(crate) layout: Layout,
    pub(crate) pending: Vec<PendingRow>,
    pub(crate) decided: Vec<DecidedRow>,
}

pub(crate) async fn dashboard<B: Backend>(State(ui): State<Ui<B>>, Owner(owner): Owner) -> Result<Response, PageError> {
    let b = &ui.backend;
    let (frame, pending, budgets, payments, devices, plugins, peers) = tokio::join!(
        Frame::load(&ui),
        b.approvals(true),
        b.budgets(),
        b.recent_payments(DASHBOARD_PAYMENTS),
        b.devices(),
        b.plugins(),
        b.peers()
    );
    let (pending, budgets, payments) = (pending?, budgets?, payments?);
    let frame = frame?.with_pending(pending.len());
    let devices = optional(devices)?;
    let device_list: &[DeviceView] = devices.as_deref().unwrap_or_default();
    let (currency, zone) = (&frame.status.currency, &frame.zone);
    let page = DashboardPage {
        layout: frame.layout(&ui.sessions, &owner, "Dashboard", "dashboard", "approval payment channel device plugin"),
        pending_total: pending.len(),
        pending_head: pending
            .iter()
            .take(DASHBOARD_PENDING)
            .map(|a| PendingRow::new(a, currency, device_list, zone))
            .collect(),
        budgets: budgets.iter().map(|b| BudgetRow::new(b, zone)).collect(),
        payments: payments.iter().map(|p| PaymentRow::new(p, currency, zone)).collect(),
        channels_open: frame.status.channels_open,
        devices: devices.as_ref().map(|d| Count { up: d.iter().filter(|d| d.online).count(), total: d.len() }),
        plugins: optional(plugins)?.map(|p| Count { up: p.iter().filter(|p| p.running).count(), total: p.len() }),
        peers: optional(peers)?.map(|p| Count { up: p.iter().filter(|p| p.connected).count(), total: p.len() }),
    };
    Ok(render(&page))
}

/// The approvals page, with `reason_error` beside the deny form of approval `.0`.
async fn approvals_page<B: Backend>(
    ui: &Ui<B>,
    owner: &SessionInfo,
    reason_error: Option<(u64, String, String)>,
) -> Result<ApprovalsPage, PageError> {
    let b = &ui.backend;
    let (frame, all, devices) = tokio::join!(Frame::load(ui), b.approvals(false), b.devices());
    let all = all?;
    let devices = optional(devices)?.unwrap_or_default();
    let frame = frame?;
    let (currency, zone) = (&frame.status.currency, &frame.zone);
    let mut pending: Vec<PendingRow> =
        all.iter().filter(|a| a.is_pending()).map(|a| PendingRow::new(a, currency, &devices, zone)).collect();
    if let Some((id, reason, error)) = reason_error
        && let Some(row) = pending.iter_mut().find(|r| r.id == id)
    {
        row.reason = reason;
        row.reason_error = Some(error);
    }
    let decided = all
        .iter()
        .filter(|a| !a.is_pending())
        .take(DECIDED_SHOWN)
        .map(|a| DecidedRow::new(a, currency, &devices, zone))
        .collect();
    let frame = frame.with_pending(pending.len());
    Ok(ApprovalsPage {
        layout: frame.layout(&ui.sessions, owner, "Approvals", "approvals", "approval"),
        pending,
        decided,
    })
}

pub(crate) async fn approvals<B: Backend>(State(ui): State<Ui<B>>, Owner(owner): Owner) -> Result<Response, PageError> {
    Ok(render(&approvals_page(&ui, &owner, None).await?))
}

pub(crate) fn approval_id(text: &str) -> Result<u64, PageError> {
    text.parse::<u64>()
        .ok()
        .filter(|_| text.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| PageError::new(StatusCode::BAD_REQUEST, format!("{text:?} is not an approval number.")))
}

/// Records the owner's verdict and goes back to the approvals page with what came of it.
async fn decide<B: Backend>(ui: &Ui<B>, owner: &SessionInfo, id: u64, verdict: Verdict) -> Result<Response, PageError> {
    let approving = verdict == Verdict::Approve;
    let (ok, text) = match ui.backend.decide(id, verdict, Principal::Owner.name()).await {
        Ok(approval) => {
            let what = if approving { "Approved" } else { "Denied" };
            // The decision is made; a failure to read the currency only shortens the message.
            match ui.backend.status().await {
                Ok(status) => {
                    let amount = view::money(&status.currency, approval.request.amount);
                    (true, format!("{what} #{id}: {amount} to {}.", view::short(&approval.request.payee)))
                }
                Err(_) => (true, format!("{what} #{id}.")),
            }
        }
        // Already decided, expired or gone: say so on the page rather than as an error page.
        Err(BackendError::Conflict(m) | BackendError::NotFound(m)) => (false, m),
        Err(e) => return Err(e.into()),
    };
    Ok(done(&ui.sessions, owner, ok, text, "/approvals"))
}

pub(crate) async fn approve<B: Backend>(
    State(ui): State<Ui<B>>,
    Path(id): Path<String>,
    SessionForm { owner, form: NoFields {} }: SessionForm<NoFields>,
) -> Result<Response, PageError> {
    decide(&ui, &owner, approval_id(&id)?, Verdict::Approve).await
}

#[derive(Debug, Deserialize)]
pub(crate) struct DenyForm {
    #[serde(default)]
    reason: String,
}

pub(crate) async fn deny<B: Backend>(
    State(ui): State<Ui<B>>,
    Path(id): Path<String>,
    SessionForm { owner, form }: SessionForm<DenyForm>,
) -> Result<Response, PageError> {
    let id = approval_id(&id)?;
    let reason = form.reason.trim();
    let chars = reason.chars().count();
    if chars > MAX_REASON_CHARS {
        let error = format!("Keep the reason to {MAX_REASON_CHARS} characters (this has {chars}).");
        let page = approvals_page(&ui, &owner, Some((id, form.reason.clone(), error))).await?;
        return Ok((StatusCode::UNPROCESSABLE_ENTITY, render(&page)).into_response());
    }
    decide(&ui, &owner, id, Verdict::Deny { reason: reason.to_owned() }).await
}
