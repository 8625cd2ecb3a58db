//! Budgets: what each device, plugin or invoicing peer may spend per period, how much of it is
//! spent, and the form that sets one (amounts typed in the currency's units).

use askama::Template;
use axum::extract::{RawQuery, State};
use axum::response::Response;
use machinomy_core::{AmountError, Budget, Currency, Period, Subject};
use serde::Deserialize;

use crate::backend::{Backend, BackendError};

use super::session::SessionInfo;
use super::view::{BudgetRow, Layout, money};
use super::{Frame, Owner, PageError, SessionForm, Ui, done, invalid, render};

/// The budget form as typed, with what is wrong beside each field.
#[derive(Clone, Debug, Default, Deserialize)]
pub(crate) struct BudgetForm {
    #[serde(default)]
    pub(crate) subject: String,
    #[serde(default)]
    pub(crate) period: String,
    #[serde(default)]
    pub(crate) limit: String,
    #[serde(default)]
    pub(crate) auto_approve: String,
}

#[derive(Clone, Debug, Default)]
pub(crate) struct BudgetErrors {
    pub(crate) subject: Option<String>,
    pub(crate) period: Option<String>,
    pub(crate) limit: Option<String>,
    pub(crate) auto_approve: Option<String>,
}

impl BudgetErrors {
    fn any(&self) -> bool {
        self.subject.is_some() || self.period.is_some() || self.limit.is_some() || self.auto_approve.is_some()
    }
}

#[derive(Template, Debug)]
#[template(path = "budgets.html")]
pub(crate) struct BudgetsPage {
    pub(crate) layout: Layout,
    pub(crate) budgets: Vec<BudgetRow>,
    pub(crate) currency: String,
    pub(crate) form: BudgetForm,
    pub(crate) errors: BudgetErrors,
}

impl BudgetsPage {
    pub(crate) fn periods(&self) -> &'static [&'static str] {
        &["day", "week", "month"]
    }
}

async fn budgets_page<B: Backend>(
    ui: &Ui<B>,
    owner: &SessionInfo,
    form: BudgetForm,
    errors: BudgetErrors,
) -> Result<BudgetsPage, PageError> {
    let (frame, budgets) = tokio::join!(Frame::load(ui), ui.backend.budgets());
    let (frame, budgets) = (frame?, budgets?);
    Ok(BudgetsPage {
        budgets: budgets.iter().map(|b| BudgetRow::new(b, &frame.zone)).collect(),
        currency: frame.status.currency.code().to_owned(),
        layout: frame.layout(&ui.sessions, owner, "Budgets", "budgets", "payment"),
        form,
        errors,
    })
}

#[derive(Debug, Default, Deserialize)]
struct EditParams {
    #[serde(default)]
    edit: String,
}

/// The list, with the form filled in from `?edit=<subject>` when that budget exists.
pub(crate) async fn page<B: Backend>(
    State(ui): State<Ui<B>>,
    Owner(owner): Owner,
    RawQuery(query): RawQuery,
) -> Result<Response, PageError> {
    let edit: EditParams = query.and_then(|q| serde_urlencoded::from_str(&q).ok()).unwrap_or_default();
    let mut page = budgets_page(&ui, &owner, BudgetForm::default(), BudgetErrors::default()).await?;
    page.form.period = "month".to_owned();
    if let Some(row) = page.budgets.iter().find(|b| b.subject == edit.edit) {
        page.form = BudgetForm {
            subject: row.subject.clone(),
            period: row.period.clone(),
            limit: row.limit_units.clone(),
            auto_approve: row.auto_approve_units.clone(),
        };
    }
    Ok(render(&page))
}

/// The form read into a budget, or what is wrong with each field.
fn read(form: &BudgetForm, currency: &Currency) -> Result<Budget, BudgetErrors> {
    let mut errors = BudgetErrors::default();
    let subject = match form.subject.trim() {
        "" => {
            errors.subject = Some("Whose budget: device:<id>, plugin:<name> or peer:<key>.".into());
            None
        }
        text => text.parse::<Subject>().map_err(|e| errors.subject = Some(format!("{e}."))).ok(),
    };
    let period = form.period.parse::<Period>().map_err(|_| errors.period = Some("Day, week or month.".into())).ok();
    let amount = |text: &str, slot: &mut Option<String>| {
        let text = text.trim();
        currency.parse(text).map_err(|e| *slot = Some(amount_problem(text, &e, currency))).ok()
    };
    let limit = amount(&form.limit, &mut errors.limit);
    let auto_approve = amount(&form.auto_approve, &mut errors.auto_approve);
    match (subject, period, limit, auto_approve) {
        (Some(subject), Some(period), Some(limit), Some(auto_approve)) if !errors.any() => {
            Budget::new(subject, period, limit, auto_approve).map_err(|_| BudgetErrors {
                auto_approve: Some(
                    "Spends up to this amount are paid without asking; it cannot be above the limit.".into(),
                ),
                ..BudgetErrors::default()
            })
        }
        _ => Err(errors),
    }
}

/// What is wrong with an amount typed into the form, in the owner's words.
fn amount_problem(text: &str, error: &AmountError, currency: &Currency) -> String {
    let code = currency.code();
    match error {
        AmountError::Empty => format!("Enter an amount in {code}, such as 2.50."),
        _ if text.starts_with('-') => "An amount cannot be negative.".to_owned(),
        AmountError::TooPrecise { decimals, .. } => format!("{code} has at most {decimals} decimal places."),
        AmountError::Overflow => "That is more than this hub can count.".to_owned(),
        _ => format!("An amount in {code}, such as 2.50 (digits, at most one '.')."),
    }
}

pub(crate) async fn set<B: Backend>(
    State(ui): State<Ui<B>>,
    SessionForm { owner, form }: SessionForm<BudgetForm>,
) -> Result<Response, PageError> {
    let currency = ui.backend.status().await?.currency;
    let errors = match read(&form, &currency) {
        Ok(budget) => {
            let subject = budget.subject.to_string();
            match ui.backend.set_budget(budget).await {
                Ok(view) => {
                    let text = format!(
                        "{subject} may spend {} per {}, and is asked about anything over {}.",
                        money(&currency, view.budget.limit),
                        view.budget.period,
                        money(&currency, view.budget.auto_approve)
                    );
                    return Ok(done(&ui.sessions, &owner, true, text, "/budgets"));
                }
                // Set in hub.toml, or otherwise refused: say so beside the subject.
                Err(BackendError::Conflict(m) | BackendError::Invalid(m)) => {
                    BudgetErrors { subject: Some(m), ..BudgetErrors::default() }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(errors) => errors,
    };
    Ok(invalid(&budgets_page(&ui, &owner, form, errors).await?))
}

#[derive(Clone, Debug, Default, Deserialize)]
pub(crate) struct RemoveForm {
    #[serde(default)]
    subject: String,
}

/// Removes a budget; the answer is a message on the budgets page either way.
pub(crate) async fn remove<B: Backend>(
    State(ui): State<Ui<B>>,
    SessionForm { owner, form }: SessionForm<RemoveForm>,
) -> Result<Response, PageError> {
    let Ok(subject) = form.subject.parse::<Subject>() else {
        let text = format!("{:?} is not a budget's subject.", form.subject);
        return Ok(done(&ui.sessions, &owner, false, text, "/budgets"));
    };
    let (ok, text) = match ui.backend.remove_budget(subject.clone()).await {
        Ok(_) => (true, format!("Removed the budget of {subject}: it may spend nothing until it has one again.")),
        Err(BackendError::NotFound(m) | BackendError::Conflict(m)) => (false, m),
        Err(e) => return Err(e.into()),
    };
    Ok(done(&ui.sessions, &owner, ok, text, "/budgets"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use machinomy_core::Amount;

    use super::*;

    fn form(subject: &str, period: &str, limit: &str, auto_approve: &str) -> BudgetForm {
        BudgetForm {
            subject: subject.into(),
            period: period.into(),
            limit: limit.into(),
            auto_approve: auto_approve.into(),
        }
    }

    #[test]
    fn a_good_form_is_a_budget_in_base_units() {
        let budget = read(&form(" device:fridge ", "week", "20", "2.50"), &Currency::usd()).unwrap();
        assert_eq!(budget.subject, Subject::Device("fridge".into()));
        assert_eq!(budget.period, Period::Week);
        assert_eq!(budget.limit, Amount::from_base_units(20_000_000_000));
        assert_eq!(budget.auto_approve, Amount::from_base_units(2_500_000_000));
    }

    #[test]
    fn each_bad_field_has_its_own_error() {
        let errors = read(&form("fridge", "year", "lots", "-1"), &Currency::usd()).unwrap_err();
        assert!(errors.subject.unwrap().contains("device:<id>"));
        assert!(errors.period.is_some());
        assert!(errors.limit.unwrap().contains("USD"));
        assert!(errors.auto_approve.is_some());
        let above = read(&form("plugin:weather", "day", "1", "2"), &Currency::usd()).unwrap_err();
        assert!(above.auto_approve.unwrap().contains("above the limit"));
        assert!(above.subject.is_none() && above.limit.is_none());
        let too_precise = read(&form("device:fridge", "day", "0.0000000001", "0"), &Currency::usd()).unwrap_err();
        assert!(too_precise.limit.is_some());
    }
}
