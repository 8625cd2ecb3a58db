//! Devices: the registry with each device's state and availability, pairing (the credentials
//! are shown once), one device's page with the command form, and unpairing.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use machinomy_core::{DeviceId, PublicKey};
use serde::Deserialize;

use crate::backend::{Backend, BackendError};
use crate::model::{DeviceView, NewDevice, PairedDevice};

use super::session::SessionInfo;
use super::view::{Layout, When, short};
use super::{Frame, NoFields, Owner, PageError, SessionForm, Ui, done, invalid, optional, render};

/// The longest command payload the form takes, in bytes (a device's own limit is 64 KiB).
const MAX_PAYLOAD: usize = 16 * 1024;
/// State fields shown in the list; the device's page has them all.
const LIST_FIELDS: usize = 4;

/// A device as listed.
#[derive(Clone, Debug)]
pub(crate) struct DeviceRow {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) kind: String,
    pub(crate) online: bool,
    pub(crate) last_seen: Option<When>,
    /// `field: value` pairs of its latest state.
    pub(crate) state: Vec<(String, String)>,
    pub(crate) more_fields: usize,
    pub(crate) can_spend: bool,
}

/// A state value as text: strings bare, everything else as JSON.
fn show_value(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl DeviceRow {
    fn new(device: &DeviceView, zone: &jiff::tz::TimeZone, fields: usize) -> DeviceRow {
        DeviceRow {
            id: device.id.as_str().to_owned(),
            name: device.name.clone(),
            kind: device.kind.clone(),
            online: device.online,
            last_seen: device.last_seen.map(|at| When::new(at, zone)),
            state: device.state.iter().take(fields).map(|(k, v)| (k.clone(), show_value(v))).collect(),
            more_fields: device.state.len().saturating_sub(fields),
            can_spend: device.public_key.is_some(),
        }
    }
}

/// The pairing form as typed.
#[derive(Clone, Debug, Default, Deserialize)]
pub(crate) struct PairForm {
    #[serde(default)]
    pub(crate) id: String,
    #[serde(default)]
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) public_key: String,
}

#[derive(Clone, Debug, Default)]
pub(crate) struct PairErrors {
    pub(crate) id: Option<String>,
    pub(crate) name: Option<String>,
    pub(crate) public_key: Option<String>,
}

#[derive(Template, Debug)]
#[template(path = "devices.html")]
pub(crate) struct DevicesPage {
    pub(crate) layout: Layout,
    /// `None`: the appliance bridge is not running.
    pub(crate) devices: Option<Vec<DeviceRow>>,
    pub(crate) form: PairForm,
    pub(crate) errors: PairErrors,
}

#[derive(Template, Debug)]
#[template(path = "paired.html")]
pub(crate) struct PairedPage {
    pub(crate) layout: Layout,
    pub(crate) id: String,
    pub(crate) broker: Option<String>,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<String>,
    pub(crate) secret_key: Option<String>,
    pub(crate) next_steps: Vec<String>,
}

/// An event a device sent.
#[derive(Clone, Debug)]
pub(crate) struct EventRow {
    pub(crate) at: When,
    pub(crate) name: String,
    pub(crate) payload: String,
}

/// The command form as typed.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct CommandForm {
    #[serde(default)]
    pub(crate) name: String,
    #[serde(default = "empty_object")]
    pub(crate) payload: String,
}

fn empty_object() -> String {
    "{}".to_owned()
}

impl Default for CommandForm {
    fn default() -> Self {
        CommandForm { name: String::new(), payload: empty_object() }
    }
}

#[derive(Clone, Debug, Default)]
pub(crate) struct CommandErrors {
    pub(crate) name: Option<String>,
    pub(crate) payload: Option<String>,
}

#[derive(Template, Debug)]
#[template(path = "device.html")]
pub(crate) struct DevicePage {
    pub(crate) layout: Layout,
    pub(crate) device: DeviceRow,
    pub(crate) address: Option<String>,
    pub(crate) profile: Option<String>,
    pub(crate) public_key: Option<String>,
    pub(crate) added: When,
    /// Its latest events, newest first.
    pub(crate) events: Vec<EventRow>,
    pub(crate) form: CommandForm,
    pub(crate) errors: CommandErrors,
}

async fn devices_page<B: Backend>(
    ui: &Ui<B>,
    owner: &SessionInfo,
    form: PairForm,
    errors: PairErrors,
) -> Result<DevicesPage, PageError> {
    let (frame, devices) = tokio::join!(Frame::load(ui), ui.backend.devices());
    let frame = frame?;
    let devices =
        optional(devices)?.map(|list| list.iter().map(|d| DeviceRow::new(d, &frame.zone, LIST_FIELDS)).collect());
    Ok(DevicesPage { layout: frame.layout(&ui.sessions, owner, "Devices", "devices", "device"), devices, form, errors })
}

pub(crate) async fn list<B: Backend>(State(ui): State<Ui<B>>, Owner(owner): Owner) -> Result<Response, PageError> {
    Ok(render(&devices_page(&ui, &owner, PairForm::default(), PairErrors::default()).await?))
}

pub(crate) fn device_id(text: &str) -> Result<DeviceId, PageError> {
    text.parse().map_err(|e: machinomy_core::DeviceError| PageError::new(StatusCode::BAD_REQUEST, format!("{e}.")))
}

/// The longest display name, in characters.
const MAX_NAME_CHARS: usize = 100;

fn read_pairing(form: &PairForm) -> Result<NewDevice, PairErrors> {
    let mut errors = PairErrors::default();
    let id = form.id.trim().parse::<DeviceId>().map_err(|e| errors.id = Some(format!("{e}."))).ok();
    let name = form.name.trim();
    if name.chars().count() > MAX_NAME_CHARS || name.chars().any(char::is_control) {
        errors.name = Some(format!("Up to {MAX_NAME_CHARS} characters, on one line."));
    }
    let key = form.public_key.trim();
    let public_key = if key.is_empty() {
        None
    } else {
        key.parse::<PublicKey>()
            .map_err(|_| errors.public_key = Some("The device's ed25519 public key: 64 hex characters.".into()))
            .ok()
    };
    match id {
        Some(id) if errors.name.is_none() && errors.public_key.is_none() => {
            Ok(NewDevice { id, name: (!name.is_empty()).then(|| name.to_owned()), public_key, ble: None })
        }
        _ => Err(errors),
    }
}

pub(crate) async fn pair<B: Backend>(
    State(ui): State<Ui<B>>,
    SessionForm { owner, form }: SessionForm<PairForm>,
) -> Result<Response, PageError> {
    let errors = match read_pairing(&form) {
        Ok(new) => match ui.backend.add_device(new).await {
            Ok(paired) => return paired_page(&ui, &owner, paired).await,
            Err(BackendError::Conflict(m) | BackendError::Invalid(m)) => {
                PairErrors { id: Some(m), ..PairErrors::default() }
            }
            Err(e) => return Err(e.into()),
        },
        Err(errors) => errors,
    };
    Ok(invalid(&devices_page(&ui, &owner, form, errors).await?))
}

/// The one time the device's secrets are shown: rendered in the answer to the post, never
/// stored for a later page.
async fn paired_page<B: Backend>(ui: &Ui<B>, owner: &SessionInfo, paired: PairedDevice) -> Result<Response, PageError> {
    let frame = Frame::load(ui).await?;
    let id = paired.device.id.as_str().to_owned();
    let page = PairedPage {
        layout: frame.layout(&ui.sessions, owner, format!("Paired {id}"), "devices", ""),
        broker: paired.credentials.as_ref().map(|c| c.broker.clone()),
        username: paired.credentials.as_ref().map(|c| c.username.clone()),
        password: paired.credentials.map(|c| c.password),
        secret_key: paired.secret_key,
        next_steps: paired.next_steps,
        id,
    };
    Ok((StatusCode::CREATED, render(&page)).into_response())
}

async fn device_page<B: Backend>(
    ui: &Ui<B>,
    owner: &SessionInfo,
    id: DeviceId,
    form: CommandForm,
    errors: CommandErrors,
) -> Result<DevicePage, PageError> {
    let (frame, device) = tokio::join!(Frame::load(ui), ui.backend.device(id));
    let (frame, device) = (frame?, device?);
    Ok(DevicePage {
        layout: frame.layout(&ui.sessions, owner, device.name.clone(), "devices", "device"),
        device: DeviceRow::new(&device, &frame.zone, usize::MAX),
        address: device.address.clone(),
        profile: device.profile.clone(),
        public_key: device.public_key.map(|k| k.to_hex()),
        added: When::new(device.added_at, &frame.zone),
        events: device
            .recent_events
            .iter()
            .rev()
            .map(|e| EventRow { at: When::new(e.at, &frame.zone), name: e.name.clone(), payload: e.payload.clone() })
            .collect(),
        form,
        errors,
    })
}

pub(crate) async fn show<B: Backend>(
    State(ui): State<Ui<B>>,
    Owner(owner): Owner,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let id = device_id(&id)?;
    Ok(render(&device_page(&ui, &owner, id, CommandForm::default(), CommandErrors::default()).await?))
}

fn read_command(form: &CommandForm) -> Result<(String, serde_json::Value), CommandErrors> {
    let mut errors = CommandErrors::default();
    let name = form.name.trim();
    if let Err(e) = machinomy_core::device::check_name("command", name) {
        errors.name = Some(format!("{e}."));
    }
    let text = if form.payload.trim().is_empty() { "{}" } else { form.payload.trim() };
    let payload = if text.len() > MAX_PAYLOAD {
        errors.payload = Some(format!("At most {MAX_PAYLOAD} bytes (this is {}).", text.len()));
        None
    } else {
        serde_json::from_str::<serde_json::Value>(text)
            .map_err(|e| errors.payload = Some(format!("Not JSON: {e}.")))
            .ok()
    };
    match payload {
        Some(payload) if errors.name.is_none() => Ok((name.to_owned(), payload)),
        _ => Err(errors),
    }
}

pub(crate) async fn command<B: Backend>(
    State(ui): State<Ui<B>>,
    Path(id): Path<String>,
    SessionForm { owner, form }: SessionForm<CommandForm>,
) -> Result<Response, PageError> {
    let id = device_id(&id)?;
    let errors = match read_command(&form) {
        Ok((name, payload)) => match ui.backend.send_command(id.clone(), name.clone(), payload).await {
            Ok(()) => {
                let text = format!("Sent {name} to {id}; its state shows what it did.");
                return Ok(done(&ui.sessions, &owner, true, text, &format!("/devices/{id}")));
            }
            Err(BackendError::Invalid(m) | BackendError::Conflict(m) | BackendError::Unavailable(m)) => {
                CommandErrors { name: Some(m), ..CommandErrors::default() }
            }
            Err(e) => return Err(e.into()),
        },
        Err(errors) => errors,
    };
    Ok(invalid(&device_page(&ui, &owner, id, form, errors).await?))
}

pub(crate) async fn remove<B: Backend>(
    State(ui): State<Ui<B>>,
    Path(id): Path<String>,
    SessionForm { owner, form: NoFields {} }: SessionForm<NoFields>,
) -> Result<Response, PageError> {
    let id = device_id(&id)?;
    let removed = ui.backend.remove_device(id).await?;
    let text = format!("Unpaired {} ({}): it can no longer log in or spend.", removed.name, short(removed.id.as_str()));
    Ok(done(&ui.sessions, &owner, true, text, "/devices"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn pairing_forms_are_read_field_by_field() {
        let form =
            |id: &str, name: &str, key: &str| PairForm { id: id.into(), name: name.into(), public_key: key.into() };
        let new = read_pairing(&form(" fridge ", "Kitchen fridge", "")).unwrap();
        assert_eq!((new.id.as_str(), new.name.as_deref(), new.public_key), ("fridge", Some("Kitchen fridge"), None));
        let key = "ab".repeat(32);
        assert!(read_pairing(&form("fridge", "", &key)).unwrap().public_key.is_some());
        let errors = read_pairing(&form("Fridge/1", "a\nb", "xyz")).unwrap_err();
        assert!(errors.id.is_some() && errors.name.is_some() && errors.public_key.is_some());
    }

    #[test]
    fn commands_need_a_name_and_json() {
        let form = |name: &str, payload: &str| CommandForm { name: name.into(), payload: payload.into() };
        assert_eq!(read_command(&form("defrost", "")).unwrap(), ("defrost".to_owned(), serde_json::json!({})));
        assert_eq!(read_command(&form("set", r#"{"on": true}"#)).unwrap().1, serde_json::json!({"on": true}));
        let errors = read_command(&form("a/b", "{nope")).unwrap_err();
        assert!(errors.name.is_some() && errors.payload.unwrap().starts_with("Not JSON"));
        let big = format!("\"{}\"", "x".repeat(MAX_PAYLOAD));
        assert!(read_command(&form("set", &big)).unwrap_err().payload.unwrap().contains("At most"));
    }
}
