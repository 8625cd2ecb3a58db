//! Plugins: what is installed and whether it runs, one plugin's grants, state, quarantine reason
//! and log, installing and upgrading by upload, and enabling, disabling, approving an upgrade
//! and removing.

use askama::Template;
use axum::extract::{FromRequest, FromRequestParts, Multipart, Path, Request, State};
use axum::http::{StatusCode, header};
use axum::response::Response;
use jiff::tz::TimeZone;
use machinomy_core::Currency;

use crate::PLUGIN_WASM_LIMIT;
use crate::backend::{Backend, BackendError, PluginUpload};
use crate::model::{InstallStatus, PluginInstalled, PluginStateName, PluginView, parse_setting};

use super::session::{SessionInfo, same_secret};
use super::view::{Layout, When, money};
use super::{CSRF_REFUSED, Frame, NoFields, Owner, PageError, SessionForm, Ui, done, invalid, optional, render};

/// The body limit of an upload form: the largest module, and room for the manifest, the
/// settings and the form's framing.
pub(crate) const UPLOAD_LIMIT: usize = PLUGIN_WASM_LIMIT + 1024 * 1024;
/// The largest manifest the form takes (the hub's own limit).
const MAX_MANIFEST: usize = 64 * 1024;
/// The largest settings box, in bytes: room for the largest `[config]` a manifest may have,
/// as lines.
const MAX_SETTINGS: usize = 2 * machinomy_core::plugin::MAX_CONFIG;
/// Log lines shown on a plugin's page.
const LOG_SHOWN: usize = 50;

/// A plugin as listed.
#[derive(Clone, Debug)]
pub(crate) struct PluginRow {
    pub(crate) name: String,
    pub(crate) version: String,
    pub(crate) description: String,
    pub(crate) state: &'static str,
    pub(crate) running: bool,
    pub(crate) quarantine_reason: Option<String>,
    pub(crate) faults: u64,
    pub(crate) refused: u64,
    pub(crate) events: u64,
    pub(crate) upgrade_waiting: Option<String>,
}

impl PluginRow {
    fn new(view: &PluginView) -> PluginRow {
        PluginRow {
            name: view.name.clone(),
            version: view.version.clone(),
            description: view.description.clone(),
            state: view.state.as_str(),
            running: view.running,
            quarantine_reason: view.quarantine_reason.clone(),
            faults: view.faults,
            refused: view.refused,
            events: view.events,
            upgrade_waiting: view.pending_upgrade.as_ref().map(|u| u.version.clone()),
        }
    }
}

/// What is wrong with an upload, beside the field it concerns.
#[derive(Clone, Debug, Default)]
pub(crate) struct UploadErrors {
    pub(crate) manifest: Option<String>,
    pub(crate) wasm: Option<String>,
    pub(crate) settings: Option<String>,
}

#[derive(Template, Debug)]
#[template(path = "plugins.html")]
pub(crate) struct PluginsPage {
    pub(crate) layout: Layout,
    /// `None`: plugins are disabled on this hub.
    pub(crate) plugins: Option<Vec<PluginRow>>,
    pub(crate) settings: String,
    pub(crate) errors: UploadErrors,
}

/// One grant, as a line the owner reads.
#[derive(Clone, Debug)]
pub(crate) struct GrantLine {
    pub(crate) what: &'static str,
    pub(crate) detail: String,
}

/// A log line as shown.
#[derive(Clone, Debug)]
pub(crate) struct LogLine {
    pub(crate) at: When,
    pub(crate) level: String,
    pub(crate) text: String,
}

#[derive(Template, Debug)]
#[template(path = "plugin.html")]
pub(crate) struct PluginPage {
    pub(crate) layout: Layout,
    pub(crate) plugin: PluginRow,
    pub(crate) last_fault: Option<String>,
    pub(crate) grants: Vec<GrantLine>,
    pub(crate) limits: Vec<GrantLine>,
    /// Each setting: its name, its value as JSON, and whether the owner set it.
    pub(crate) config: Vec<(String, String, bool)>,
    /// The settings box: the settings as `KEY=VALUE` lines, or what the owner typed.
    pub(crate) settings: String,
    pub(crate) asks_for: Vec<String>,
    pub(crate) subscriptions: Vec<String>,
    pub(crate) timers: u64,
    pub(crate) storage_used: u64,
    pub(crate) log: Vec<LogLine>,
    pub(crate) installed: When,
    pub(crate) updated: When,
    pub(crate) errors: UploadErrors,
}

/// The grants of a plugin, one line each, amounts in the hub's currency.
fn grant_lines(view: &PluginView, currency: &Currency) -> Vec<GrantLine> {
    let g = &view.grants;
    let mut lines = Vec::new();
    let mut list = |what: &'static str, items: &[String]| {
        if !items.is_empty() {
            lines.push(GrantLine { what, detail: items.join(", ") });
        }
    };
    list("Reads MQTT topics", &g.subscribe);
    list("Publishes on", &g.publish);
    list("Reads the state of devices", &g.devices);
    for call in &g.call {
        lines.push(GrantLine {
            what: "Buys the service",
            detail: format!("{} at most {} a call", call.service, money(currency, call.max_price)),
        });
    }
    for sell in &g.sell {
        lines.push(GrantLine {
            what: "Sells the service",
            detail: format!("{} for {} a call", sell.service, money(currency, sell.price)),
        });
    }
    if g.pay {
        lines.push(GrantLine { what: "Pays peers", detail: "inside its budget".to_owned() });
    }
    if g.invoice {
        lines.push(GrantLine { what: "Invoices peers", detail: "payers decide by their own budgets".to_owned() });
    }
    if let Some(budget) = &g.budget {
        lines.push(GrantLine {
            what: "Budget",
            detail: format!(
                "{} per {}, asks you above {}",
                money(currency, budget.limit),
                budget.period,
                money(currency, budget.auto_approve)
            ),
        });
    }
    lines
}

fn limit_lines(view: &PluginView) -> Vec<GrantLine> {
    vec![
        GrantLine { what: "Memory", detail: format!("{} MiB", view.limits.memory_mib) },
        GrantLine { what: "Work per event", detail: format!("{} fuel", view.limits.fuel_per_event) },
        GrantLine { what: "Storage", detail: format!("{} bytes", view.limits.kv_bytes) },
    ]
}

async fn plugins_page<B: Backend>(
    ui: &Ui<B>,
    owner: &SessionInfo,
    settings: String,
    errors: UploadErrors,
) -> Result<PluginsPage, PageError> {
    let (frame, plugins) = tokio::join!(Frame::load(ui), ui.backend.plugins());
    let frame = frame?;
    Ok(PluginsPage {
        layout: frame.layout(&ui.sessions, owner, "Plugins", "plugins", "plugin"),
        plugins: optional(plugins)?.map(|list| list.iter().map(PluginRow::new).collect()),
        settings,
        errors,
    })
}

pub(crate) async fn list<B: Backend>(State(ui): State<Ui<B>>, Owner(owner): Owner) -> Result<Response, PageError> {
    Ok(render(&plugins_page(&ui, &owner, String::new(), UploadErrors::default()).await?))
}

async fn plugin_page<B: Backend>(
    ui: &Ui<B>,
    owner: &SessionInfo,
    name: String,
    typed_settings: Option<String>,
    errors: UploadErrors,
) -> Result<PluginPage, PageError> {
    let (frame, view) = tokio::join!(Frame::load(ui), ui.backend.plugin(name));
    let (frame, view) = (frame?, view?);
    let zone: &TimeZone = &frame.zone;
    let log = view
        .recent
        .iter()
        .rev()
        .take(LOG_SHOWN)
        .map(|line| LogLine {
            at: When::new(machinomy_core::Timestamp(line.at_ms / 1000), zone),
            level: line.level.clone(),
            text: line.text.clone(),
        })
        .collect();
    Ok(PluginPage {
        grants: grant_lines(&view, &frame.status.currency),
        limits: limit_lines(&view),
        config: view.config.iter().map(|(k, v)| (k.clone(), v.to_string(), view.overridden.contains(k))).collect(),
        settings: typed_settings.unwrap_or_else(|| settings_lines(&view.config)),
        asks_for: view.pending_upgrade.as_ref().map(|u| u.asks_for.clone()).unwrap_or_default(),
        subscriptions: view.subscriptions.clone(),
        timers: view.timers,
        storage_used: view.storage_used,
        last_fault: view.last_fault.clone(),
        installed: When::new(view.installed_at, zone),
        updated: When::new(view.updated_at, zone),
        plugin: PluginRow::new(&view),
        layout: frame.layout(&ui.sessions, owner, view.name.clone(), "plugins", "plugin"),
        log,
        errors,
    })
}

pub(crate) fn plugin_name(text: &str) -> Result<String, PageError> {
    if machinomy_core::plugin::valid_plugin_name(text) {
        return Ok(text.to_owned());
    }
    Err(PageError::new(StatusCode::BAD_REQUEST, format!("{text:?} is not a plugin name.")))
}

pub(crate) async fn show<B: Backend>(
    State(ui): State<Ui<B>>,
    Owner(owner): Owner,
    Path(name): Path<String>,
) -> Result<Response, PageError> {
    let name = plugin_name(&name)?;
    Ok(render(&plugin_page(&ui, &owner, name, None, UploadErrors::default()).await?))
}

/// An upload form, read whole (within [`UPLOAD_LIMIT`]) and its CSRF token checked before any
/// of it is used.
#[derive(Debug)]
pub(crate) struct Upload {
    owner: SessionInfo,
    manifest: Option<Vec<u8>>,
    wasm: Option<Vec<u8>>,
    settings: String,
}

impl<B: Backend> FromRequest<Ui<B>> for Upload {
    type Rejection = PageError;

    async fn from_request(request: Request, ui: &Ui<B>) -> Result<Upload, PageError> {
        let (mut parts, body) = request.into_parts();
        let Owner(owner) = Owner::from_request_parts(&mut parts, ui).await?;
        // The upload forms are multipart; anything else cannot carry their token.
        let multipart = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("multipart/form-data"));
        if !multipart {
            return Err(PageError::forbidden(CSRF_REFUSED));
        }
        let unreadable = |e: axum::extract::multipart::MultipartError| PageError::new(e.status(), e.body_text());
        let mut form = Multipart::from_request(Request::from_parts(parts, body), ui)
            .await
            .map_err(|e| PageError::new(e.status(), e.body_text()))?;
        let (mut csrf, mut manifest, mut wasm, mut settings) = (String::new(), None, None, String::new());
        while let Some(field) = form.next_field().await.map_err(unreadable)? {
            let name = field.name().unwrap_or_default().to_owned();
            let bytes = field.bytes().await.map_err(unreadable)?;
            match name.as_str() {
                "csrf" => csrf = String::from_utf8_lossy(&bytes).into_owned(),
                // A file input left empty still sends a part, with no bytes.
                "manifest" if !bytes.is_empty() => manifest = Some(bytes.to_vec()),
                "wasm" if !bytes.is_empty() => wasm = Some(bytes.to_vec()),
                "settings" => settings = String::from_utf8_lossy(&bytes).into_owned(),
                _ => {}
            }
        }
        if !same_secret(&csrf, &owner.csrf) {
            return Err(PageError::forbidden(CSRF_REFUSED));
        }
        Ok(Upload { owner, manifest, wasm, settings })
    }
}

/// The upload's manifest, module and settings, or what is wrong with each.
fn read_upload(
    upload: &Upload,
    with_settings: bool,
) -> Result<(PluginUpload, serde_json::Map<String, serde_json::Value>), UploadErrors> {
    let mut errors = UploadErrors::default();
    let manifest = match &upload.manifest {
        None => {
            errors.manifest = Some("Choose the plugin's plugin.toml.".to_owned());
            None
        }
        Some(bytes) if bytes.len() > MAX_MANIFEST => {
            errors.manifest = Some(format!("A manifest is at most {MAX_MANIFEST} bytes; this is {}.", bytes.len()));
            None
        }
        Some(bytes) => String::from_utf8(bytes.clone())
            .map_err(|_| errors.manifest = Some("This is not a text file (plugin.toml is UTF-8 TOML).".to_owned()))
            .ok(),
    };
    let wasm = match &upload.wasm {
        None => {
            errors.wasm = Some("Choose the plugin's .wasm module.".to_owned());
            None
        }
        Some(bytes) if bytes.len() > PLUGIN_WASM_LIMIT => {
            errors.wasm = Some(format!("A module is at most {PLUGIN_WASM_LIMIT} bytes; this is {}.", bytes.len()));
            None
        }
        Some(bytes) => Some(bytes.clone()),
    };
    let mut config = serde_json::Map::new();
    if with_settings {
        match read_settings(&upload.settings) {
            Ok(settings) => config = settings,
            Err(e) => errors.settings = Some(e),
        }
    }
    match (manifest, wasm) {
        (Some(manifest), Some(wasm)) if errors.settings.is_none() => Ok((PluginUpload { manifest, wasm }, config)),
        _ => Err(errors),
    }
}

/// The settings box's `KEY=VALUE` lines (blank lines skipped), or what is wrong with them.
fn read_settings(text: &str) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    if text.len() > MAX_SETTINGS {
        return Err(format!("Settings are at most {MAX_SETTINGS} bytes."));
    }
    let mut config = serde_json::Map::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        // Spaces around the `=` are the box's layout, not the setting.
        let line = line.split_once('=').map_or_else(|| line.to_owned(), |(k, v)| format!("{}={}", k.trim(), v.trim()));
        let at = number + 1;
        let (key, value) = parse_setting(&line).map_err(|e| format!("Line {at}: {e}."))?;
        if !machinomy_core::plugin::valid_config_key(&key) {
            return Err(format!(
                "Line {at}: {:?} is not a setting's name ({}).",
                key,
                machinomy_core::plugin::CONFIG_KEY_RULE
            ));
        }
        if value.is_null() {
            return Err(format!("Line {at}: null is not a setting; leave the line out to use the plugin's own value."));
        }
        if config.insert(key.clone(), value).is_some() {
            return Err(format!("Line {at}: {key} is set twice."));
        }
    }
    Ok(config)
}

/// Settings as the box shows them: a `KEY=VALUE` line each, the value as JSON (so a text that
/// looks like a number stays a text when the box is sent back).
fn settings_lines(config: &serde_json::Map<String, serde_json::Value>) -> String {
    config.iter().map(|(key, value)| format!("{key}={value}\n")).collect()
}

/// What the box changes against the current settings: a key typed with another value is set;
/// a key left out goes back to the plugin's own value (`null`).
fn settings_change(
    current: &serde_json::Map<String, serde_json::Value>,
    typed: serde_json::Map<String, serde_json::Value>,
) -> serde_json::Map<String, serde_json::Value> {
    let mut change: serde_json::Map<String, serde_json::Value> = current
        .keys()
        .filter(|key| !typed.contains_key(*key))
        .map(|key| (key.clone(), serde_json::Value::Null))
        .collect();
    change.extend(typed.into_iter().filter(|(key, value)| current.get(key) != Some(value)));
    change
}

/// The settings form. Its box is required: a form without it would reset every setting.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct SettingsForm {
    settings: String,
}

/// `POST /plugins/{name}/settings`: changes the settings to what the box says.
pub(crate) async fn configure<B: Backend>(
    State(ui): State<Ui<B>>,
    Path(name): Path<String>,
    SessionForm { owner, form }: SessionForm<SettingsForm>,
) -> Result<Response, PageError> {
    let name = plugin_name(&name)?;
    let error = match read_settings(&form.settings) {
        Ok(typed) => {
            let before = ui.backend.plugin(name.clone()).await?;
            let change = settings_change(&before.config, typed);
            if change.is_empty() {
                return Ok(done(
                    &ui.sessions,
                    &owner,
                    true,
                    "Nothing changed.".to_owned(),
                    &format!("/plugins/{name}"),
                ));
            }
            match ui.backend.configure_plugin(name.clone(), change).await {
                Ok(view) if view.config == before.config => {
                    let text = format!("The settings of {name} are as they were.");
                    return Ok(done(&ui.sessions, &owner, true, text, &format!("/plugins/{name}")));
                }
                Ok(view) => {
                    let now = match view.state {
                        PluginStateName::Enabled if view.running => "it restarted with them.".to_owned(),
                        PluginStateName::Enabled => match &view.last_fault {
                            Some(fault) => format!("it is not running: {fault}"),
                            None => "it is not running.".to_owned(),
                        },
                        PluginStateName::Quarantined => {
                            format!("it is quarantined: {}", view.quarantine_reason.as_deref().unwrap_or("it faulted"))
                        }
                        PluginStateName::Disabled => "it uses them when you enable it.".to_owned(),
                    };
                    let mut text = format!("Changed the settings of {name}; {now}");
                    let refused = view.refused.saturating_sub(before.refused);
                    if refused > 0 {
                        let calls = if refused == 1 {
                            "1 of its calls was".to_owned()
                        } else {
                            format!("{refused} of its calls were")
                        };
                        text.push_str(&format!(
                            " As it started, {calls} refused as outside its grants (a device or service the new settings name may need an upgrade that grants it): see its log."
                        ));
                    }
                    return Ok(done(&ui.sessions, &owner, true, text, &format!("/plugins/{name}")));
                }
                Err(BackendError::Invalid(m)) => m,
                Err(e) => return Err(e.into()),
            }
        }
        Err(e) => e,
    };
    let errors = UploadErrors { settings: Some(error), ..UploadErrors::default() };
    Ok(invalid(&plugin_page(&ui, &owner, name, Some(form.settings), errors).await?))
}

/// Puts the hub's refusal of an upload beside the field it is about: the module's own faults
/// beside the module, the rest beside the manifest.
fn refusal(message: String) -> UploadErrors {
    let lower = message.to_lowercase();
    let about_module = ["module", "webassembly", "wasm", "import", "export"].iter().any(|w| lower.contains(w));
    if about_module {
        UploadErrors { wasm: Some(message), ..UploadErrors::default() }
    } else {
        UploadErrors { manifest: Some(message), ..UploadErrors::default() }
    }
}

/// What an install or upgrade came to, for the next page.
fn installed_text(installed: &PluginInstalled, verb: &str) -> String {
    let plugin = &installed.plugin;
    let replaced = installed.replaced_upgrade.as_ref().map_or_else(String::new, |waiting| {
        format!(" It replaces version {waiting}, which was waiting for your approval.")
    });
    match installed.status {
        InstallStatus::Ready if installed.downgrade => format!(
            "Downgraded {} from {} to {}, an older version.{replaced}",
            plugin.name,
            installed.previous_version.as_deref().unwrap_or("?"),
            plugin.version
        ),
        InstallStatus::Ready => format!("{verb} {} {}.{replaced}", plugin.name, plugin.version),
        InstallStatus::AwaitingApproval => {
            format!(
                "{} {} asks for more than you approved: it waits for your approval below, and {} keeps running.",
                plugin.name,
                plugin.pending_upgrade.as_ref().map_or("", |u| u.version.as_str()),
                plugin.version
            ) + &replaced
        }
    }
}

pub(crate) async fn install<B: Backend>(State(ui): State<Ui<B>>, upload: Upload) -> Result<Response, PageError> {
    let errors = match read_upload(&upload, true) {
        Ok((package, config)) => match ui.backend.install_plugin(package, config).await {
            Ok(installed) => {
                let text = installed_text(&installed, "Installed");
                let to = format!("/plugins/{}", installed.plugin.name);
                return Ok(done(&ui.sessions, &upload.owner, true, text, &to));
            }
            Err(BackendError::Invalid(m) | BackendError::Conflict(m) | BackendError::TooLarge(m)) => refusal(m),
            Err(e) => return Err(e.into()),
        },
        Err(errors) => errors,
    };
    Ok(invalid(&plugins_page(&ui, &upload.owner, upload.settings.clone(), errors).await?))
}

pub(crate) async fn upgrade<B: Backend>(
    State(ui): State<Ui<B>>,
    Path(name): Path<String>,
    upload: Upload,
) -> Result<Response, PageError> {
    let name = plugin_name(&name)?;
    let errors = match read_upload(&upload, false) {
        Ok((package, _)) => match ui.backend.upgrade_plugin(name.clone(), package, serde_json::Map::new()).await {
            Ok(installed) => {
                let text = installed_text(&installed, "Upgraded to");
                return Ok(done(&ui.sessions, &upload.owner, true, text, &format!("/plugins/{name}")));
            }
            Err(BackendError::Invalid(m) | BackendError::Conflict(m) | BackendError::TooLarge(m)) => refusal(m),
            Err(e) => return Err(e.into()),
        },
        Err(errors) => errors,
    };
    Ok(invalid(&plugin_page(&ui, &upload.owner, name, None, errors).await?))
}

/// `enable`, `disable`, `approve` or `remove`.
pub(crate) async fn act<B: Backend>(
    State(ui): State<Ui<B>>,
    Path((name, action)): Path<(String, String)>,
    SessionForm { owner, form: NoFields {} }: SessionForm<NoFields>,
) -> Result<Response, PageError> {
    let name = plugin_name(&name)?;
    let backend = &ui.backend;
    let outcome = match action.as_str() {
        "enable" => backend.set_plugin_enabled(name.clone(), true).await.map(|v| describe(&v)),
        "disable" => backend.set_plugin_enabled(name.clone(), false).await.map(|v| describe(&v)),
        "approve" => {
            backend.approve_plugin(name.clone()).await.map(|v| format!("Approved: {} {} runs now.", v.name, v.version))
        }
        "remove" => {
            return match backend.remove_plugin(name.clone()).await {
                Ok(()) => Ok(done(&ui.sessions, &owner, true, format!("Removed {name} with its storage."), "/plugins")),
                Err(e) => Err(e.into()),
            };
        }
        other => {
            return Err(PageError::new(StatusCode::NOT_FOUND, format!("There is no plugin action {other:?}.")));
        }
    };
    let (ok, text) = match outcome {
        Ok(text) => (true, text),
        Err(BackendError::Conflict(m) | BackendError::Invalid(m)) => (false, m),
        Err(e) => return Err(e.into()),
    };
    Ok(done(&ui.sessions, &owner, ok, text, &format!("/plugins/{name}")))
}

fn describe(view: &PluginView) -> String {
    match view.state {
        PluginStateName::Enabled if view.running => format!("{} is enabled and running.", view.name),
        PluginStateName::Enabled => format!("{} is enabled.", view.name),
        PluginStateName::Disabled => format!("{} is disabled: it runs nothing until you enable it.", view.name),
        PluginStateName::Quarantined => format!("{} stays quarantined.", view.name),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    fn upload(manifest: Option<&[u8]>, wasm: Option<&[u8]>, settings: &str) -> Upload {
        Upload {
            owner: SessionInfo { id: String::new(), csrf: String::new() },
            manifest: manifest.map(<[u8]>::to_vec),
            wasm: wasm.map(<[u8]>::to_vec),
            settings: settings.to_owned(),
        }
    }

    #[test]
    fn an_upload_needs_both_files_and_readable_settings() {
        let (package, config) =
            read_upload(&upload(Some(b"name = \"x\""), Some(b"\0asm"), "max_price = 1500\n\ncity=Berlin\n"), true)
                .unwrap();
        assert_eq!(package.manifest, "name = \"x\"");
        assert_eq!(serde_json::Value::Object(config), serde_json::json!({"max_price": 1500, "city": "Berlin"}));
        let errors = read_upload(&upload(None, None, "oops"), true).unwrap_err();
        assert!(errors.manifest.is_some() && errors.wasm.is_some());
        assert_eq!(errors.settings.as_deref(), Some("Line 1: expected KEY=VALUE."));
        let binary = read_upload(&upload(Some(&[0xff, 0xfe]), Some(b"\0asm"), ""), true).unwrap_err();
        assert!(binary.manifest.unwrap().contains("not a text file"));
    }

    #[test]
    fn refusals_go_beside_the_field_they_concern() {
        assert!(refusal("not a WebAssembly module".into()).wasm.is_some());
        assert!(refusal("it imports machinomy::teleport, which this hub does not provide".into()).wasm.is_some());
        assert!(refusal("grants.subscribe[0]: \"#\" is wider than the hub allows".into()).manifest.is_some());
    }
}
