//! The command line: parses arguments, runs the daemon or asks it over the admin API.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use machinomy_core::{
    Amount, AmountError, Approval, Budget, ChannelId, Currency, DeviceId, GroupBy, Period, PublicKey, Subject,
    Timestamp,
};
use machinomy_hub::client::Client;
use machinomy_hub::config::{Config, DefaultPaths};
use machinomy_hub::datadir::DataDir;
use machinomy_web::model::{
    BudgetView, ChannelView, DenyBody, DeviceView, HubStatus, NewBleDevice, NewDevice, PairedDevice,
    PluginConfigChange, PluginInstalled, PluginView, SpendingReport,
};

use crate::output;
use crate::upload::{self, LocalPlugin};

/// Machinomy hub: lets a home's appliances pay and get paid, without a vendor cloud.
#[derive(Debug, Parser)]
#[command(version, about, propagate_version = true)]
pub(crate) struct Args {
    /// Config file [default: $XDG_CONFIG_HOME/machinomy/hub.toml]
    #[arg(long, global = true, env = "MACHINOMY_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,

    /// Print JSON instead of text (admin commands)
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the hub daemon (creates config, keys and data dir on first run)
    Run {
        /// Serve the web UI and API here instead of `web.listen` (e.g. 127.0.0.1:0 for any free port)
        #[arg(long, value_name = "ADDR")]
        listen: Option<std::net::SocketAddr>,
    },
    /// Create the config, data dir, identity key and admin token, then exit
    Init,
    /// Ask the running hub how it is
    Status,
    /// This hub's identity
    Identity,
    /// Payment channels
    #[command(subcommand, visible_alias = "channels")]
    Channel(ChannelCommand),
    /// Spending budgets
    #[command(subcommand, visible_alias = "budgets")]
    Budget(BudgetCommand),
    /// Spend requests waiting for the owner
    #[command(subcommand, visible_alias = "approval")]
    Approvals(ApprovalCommand),
    /// Where the money went
    Spending(SpendingArgs),
    /// Hubs known on the peer network
    Peers,
    /// Services on the peer network: what this hub sells, what others offer, buying a call
    #[command(subcommand, visible_alias = "services")]
    Service(ServiceCommand),
    /// Devices paired with this hub: MQTT appliances and Bluetooth LE peripherals
    #[command(subcommand, visible_alias = "devices")]
    Device(DeviceCommand),
    /// Plugins: sandboxed WebAssembly automations with the topics, services and budget they are granted
    #[command(subcommand, visible_alias = "plugins")]
    Plugin(PluginCommand),
}

#[derive(Debug, Subcommand)]
enum PluginCommand {
    /// List installed plugins
    List,
    /// Show one plugin: what it may do, its limits and config, its counters and recent log
    Show { name: String },
    /// Install a plugin; what its manifest grants is approved as it is
    Install {
        /// A plugin's directory (holding plugin.toml and its module) or its plugin.toml
        path: PathBuf,
        /// The module to install [default: the file the manifest's `wasm` names, or <NAME>.wasm, next to plugin.toml]
        #[arg(long, value_name = "FILE")]
        wasm: Option<PathBuf>,
        /// Set a config key over the manifest's [config]; VALUE is JSON if it parses (3, true, "text",
        /// {...}), else text. Repeatable
        #[arg(long = "set", value_name = "KEY=VALUE", allow_hyphen_values = true)]
        set: Vec<String>,
    },
    /// Replace an installed plugin with a new version (an older one too); one that asks for more
    /// waits for `approve`. Config set at install carries over
    Upgrade {
        /// The new version's directory or its plugin.toml
        path: PathBuf,
        /// The module to install [default: the file the manifest's `wasm` names, or <NAME>.wasm, next to plugin.toml]
        #[arg(long, value_name = "FILE")]
        wasm: Option<PathBuf>,
        /// Change a config key with the upgrade, over the settings that carry over; VALUE as for
        /// install. Repeatable
        #[arg(long = "set", value_name = "KEY=VALUE", allow_hyphen_values = true)]
        set: Vec<String>,
    },
    /// Change a plugin's settings, keeping its version and storage (a running plugin restarts to
    /// read them); with no --set or --unset, show them
    Config {
        name: String,
        /// Set a config key; VALUE as for install. Repeatable
        #[arg(long = "set", value_name = "KEY=VALUE", allow_hyphen_values = true)]
        set: Vec<String>,
        /// Go back to the manifest's value of KEY. Repeatable
        #[arg(long = "unset", value_name = "KEY")]
        unset: Vec<String>,
    },
    /// Approve the upgrade that waits for approval (the new version runs from now on)
    Approve { name: String },
    /// Enable a plugin (also lets a quarantined one run again)
    Enable { name: String },
    /// Disable a plugin: it stops and does not start with the hub
    Disable { name: String },
    /// Remove a plugin with its files and storage
    Remove { name: String },
}

#[derive(Debug, Subcommand)]
enum DeviceCommand {
    /// List paired devices with what they last reported
    List,
    /// Pair a device; its credentials (and a generated key) are shown this once only
    Add {
        /// 1 to 64 of a-z 0-9 _ - (its MQTT topics are machinomy/<ID>/...)
        id: String,
        /// A display name [default: the id]
        #[arg(long)]
        name: Option<String>,
        /// The device's ed25519 public key (64 hex characters) for signing spend requests;
        /// without it the hub makes a key pair and shows the secret key once
        #[arg(long, value_name = "HEX")]
        key: Option<String>,
        /// Pair a Bluetooth LE peripheral at this address instead of an MQTT device
        #[arg(long, value_name = "ADDR", requires = "ble_profile")]
        ble_address: Option<String>,
        /// The profile that maps the peripheral's characteristics
        #[arg(long, value_name = "NAME", requires = "ble_address")]
        ble_profile: Option<String>,
    },
    /// Show one device with everything it last reported
    Show { id: String },
    /// Unpair a device: its credentials stop working and its key can no longer spend
    Remove { id: String },
    /// Send a command to a device (MQTT: its machinomy/<ID>/cmd/<NAME> topic)
    #[command(name = "command")]
    SendCommand {
        id: String,
        /// 1 to 64 of a-z 0-9 _ -
        name: String,
        /// The command's payload, as JSON
        #[arg(long, value_name = "JSON", default_value = "{}", allow_hyphen_values = true)]
        payload: String,
    },
}

#[derive(Debug, Subcommand)]
enum ServiceCommand {
    /// Offers seen from other hubs, and this hub's own
    List,
    /// Buy one call of a service from the cheapest seller, inside a subject's budget
    Call {
        name: String,
        /// Whose budget pays: device:<id> or plugin:<name>
        #[arg(long = "as", value_name = "SUBJECT", default_value = "device:owner")]
        subject: String,
        /// The request to send to the service
        #[arg(long, default_value = "")]
        body: String,
    },
}

#[derive(Debug, Subcommand)]
enum ChannelCommand {
    /// List channels, newest first
    List {
        /// Only channels with this peer (its public key)
        #[arg(long, value_name = "KEY")]
        peer: Option<String>,
    },
    /// Show one channel
    Show { id: String },
    /// Close a channel (its final amount is recorded for settlement)
    Close { id: String },
}

#[derive(Debug, Subcommand)]
enum BudgetCommand {
    /// List budgets with what was spent this period
    List,
    /// Create or replace a budget
    Set {
        /// device:<id>, plugin:<name> or peer:<public key>
        subject: String,
        #[arg(long, value_enum)]
        period: PeriodArg,
        /// Most to spend per period, in currency units (e.g. 5.00)
        // Negative numbers reach our own parser, which says what is wrong with them.
        #[arg(long, allow_negative_numbers = true)]
        limit: String,
        /// Most per payment without asking the owner, in currency units (0: ask for every one)
        #[arg(long, allow_negative_numbers = true, default_value = "0")]
        auto_approve: String,
    },
    /// Remove a budget: its subject may spend nothing until it has one again
    Remove {
        /// device:<id>, plugin:<name> or peer:<public key>
        subject: String,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum PeriodArg {
    Day,
    Week,
    Month,
}

#[derive(Debug, Subcommand)]
enum ApprovalCommand {
    /// List pending requests (or every request with --all)
    List {
        #[arg(long)]
        all: bool,
    },
    /// Show one request
    Show { id: u64 },
    /// Approve a pending request
    Approve { id: u64 },
    /// Deny a pending request
    Deny {
        id: u64,
        #[arg(long, default_value = "")]
        reason: String,
    },
}

#[derive(Debug, clap::Args)]
struct SpendingArgs {
    /// Group by subject, payee or day
    #[arg(long = "by", value_enum, default_value = "subject")]
    by: GroupArg,
    /// From this day (YYYY-MM-DD, inclusive)
    #[arg(long)]
    from: Option<String>,
    /// To this day (YYYY-MM-DD, exclusive)
    #[arg(long)]
    to: Option<String>,
    /// Print CSV
    #[arg(long)]
    csv: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum GroupArg {
    Subject,
    Payee,
    Day,
}

/// The command line, parsed. A subcommand group given without its subcommand (`budget`) is a
/// [`clap::error::ErrorKind::MissingSubcommand`] error that names the group, not a help page.
pub(crate) fn parse() -> Result<Args, clap::Error> {
    let matches = command().try_get_matches()?;
    Args::from_arg_matches(&matches)
}

fn command() -> clap::Command {
    let mut command = Args::command();
    let groups: Vec<String> =
        command.get_subcommands().filter(|c| c.has_subcommands()).map(|c| c.get_name().to_owned()).collect();
    for group in groups {
        command = command.mut_subcommand(group, |c| c.arg_required_else_help(false));
    }
    command
}

/// The subcommands of `path` (`["budget"]`; empty for the top level), for an error message.
pub(crate) fn subcommands_of(path: &[&str]) -> Vec<String> {
    let mut command = command();
    for name in path {
        match command.find_subcommand(name) {
            Some(sub) => command = sub.clone(),
            None => return Vec::new(),
        }
    }
    command
        .get_subcommands()
        .filter(|c| !c.is_hide_set() && c.get_name() != "help")
        .map(|c| c.get_name().to_owned())
        .collect()
}

/// A mistake on the command line that needs no hub to see (a date that does not exist, an id
/// that is not one): exit status 2, like clap's own usage errors.
#[derive(Debug)]
pub(crate) struct Usage(String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

fn usage(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Usage(message.into()))
}

pub(crate) fn execute(args: Args) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    runtime.block_on(dispatch(args))
}

/// The config file and the default data dir. With `--config`, no home directory is needed as
/// long as the config names its data dir (a system service runs like that).
fn paths(args: &Args) -> Result<(PathBuf, PathBuf)> {
    match (DefaultPaths::from_env(), &args.config) {
        (Ok(defaults), config) => Ok((config.clone().unwrap_or(defaults.config_file), defaults.data_dir)),
        (Err(_), Some(config)) => Ok((config.clone(), PathBuf::new())),
        (Err(e), None) => Err(e.into()),
    }
}

async fn dispatch(args: Args) -> Result<()> {
    // Mistakes in the arguments first: they need neither files nor a running hub.
    check(&args.command)?;
    let (config_path, default_data) = paths(&args)?;
    match &args.command {
        Command::Run { listen } => {
            init_logging();
            let (mut config, created) = Config::load_or_create(&config_path, &default_data)?;
            if let Some(listen) = listen {
                config.web.listen = *listen;
            }
            if created {
                tracing::info!(config = %config_path.display(), "first run: wrote a default config");
            }
            machinomy_hub::daemon::run(config).await?;
            Ok(())
        }
        Command::Init => {
            let (config, created_config) = Config::load_or_create(&config_path, &default_data)?;
            let (data_dir, created_data) = DataDir::open_or_create(&config.hub.data_dir)?;
            output::init(args.json, &config, &data_dir, created_config, created_data)
        }
        Command::Plugin(command) => {
            // The files first: a missing one is reported as such, whether or not a hub runs.
            let local = match command {
                PluginCommand::Install { path, wasm, .. } | PluginCommand::Upgrade { path, wasm, .. } => {
                    Some(LocalPlugin::read(path, wasm.as_deref())?)
                }
                _ => None,
            };
            let client = admin_client(&config_path, &default_data, args.config.is_some())?;
            plugin(command, local.as_ref(), &client, args.json).await
        }
        command => {
            let client = admin_client(&config_path, &default_data, args.config.is_some())?;
            admin(command, &client, args.json).await
        }
    }
}

/// Where the package's systemd unit keeps its config.
const SERVICE_CONFIG: &str = "/etc/machinomy/hub.toml";

/// A client of the hub an admin command talks to, with times printed in the hub's zone.
fn admin_client(config_path: &Path, default_data: &Path, explicit: bool) -> Result<Client> {
    let config = admin_config(config_path, default_data, explicit)?;
    output::use_time_zone(config.hub.time_zone.clone());
    Ok(Client::for_data_dir(&config.hub.data_dir)?)
}

/// The config of the hub an admin command talks to; it must already exist.
fn admin_config(path: &Path, default_data: &Path, explicit: bool) -> Result<Config> {
    if let Err(e) = std::fs::metadata(path)
        && e.kind() == std::io::ErrorKind::NotFound
    {
        let mut message = format!(
            "no hub is set up here (no config at {}); start one with `machinomy-hub run` (or `init`)",
            path.display()
        );
        if !explicit && Path::new(SERVICE_CONFIG).exists() {
            message.push_str(&format!(
                "; for the system service, run `machinomy-hub --config {SERVICE_CONFIG} ...` as root or the machinomy user"
            ));
        }
        bail!(message);
    }
    Ok(Config::load(path, default_data)?)
}

/// Checks what can be checked without the hub, so that a typo is reported as one (even when
/// the hub is not running).
fn check(command: &Command) -> Result<()> {
    match command {
        Command::Channel(ChannelCommand::Show { id } | ChannelCommand::Close { id }) => {
            channel_id(id)?;
        }
        Command::Budget(BudgetCommand::Remove { subject }) => {
            parse_subject(subject)?;
        }
        Command::Budget(BudgetCommand::Set { subject, limit, auto_approve, .. }) => {
            parse_subject(subject)?;
            check_amount("--limit", limit)?;
            check_amount("--auto-approve", auto_approve)?;
        }
        Command::Spending(args) => {
            day_range(args)?;
        }
        Command::Channel(ChannelCommand::List { peer: Some(key) }) => {
            peer_key(key)?;
        }
        Command::Service(ServiceCommand::Call { name, subject, .. }) => {
            if !machinomy_core::wire::valid_service_name(name) {
                return Err(usage(format!(
                    "{} is not a service name (1 to 64 of A-Z a-z 0-9 - _ .)",
                    output::quoted(name)
                )));
            }
            parse_subject(subject)?;
        }
        Command::Device(device) => check_device(device)?,
        Command::Plugin(plugin) => check_plugin(plugin)?,
        _ => {}
    }
    Ok(())
}

fn check_plugin(command: &PluginCommand) -> Result<()> {
    match command {
        PluginCommand::List => {}
        PluginCommand::Install { set, .. } | PluginCommand::Upgrade { set, .. } => {
            upload::overrides(set).map_err(usage)?;
        }
        PluginCommand::Config { name, set, unset } => {
            plugin_name(name)?;
            settings_change(set, unset)?;
        }
        PluginCommand::Show { name }
        | PluginCommand::Approve { name }
        | PluginCommand::Enable { name }
        | PluginCommand::Disable { name }
        | PluginCommand::Remove { name } => plugin_name(name)?,
    }
    Ok(())
}

/// `--set` and `--unset` as one change of settings (`null` goes back to the manifest's value).
fn settings_change(set: &[String], unset: &[String]) -> Result<serde_json::Map<String, serde_json::Value>> {
    let mut config = upload::overrides(set).map_err(usage)?;
    // Here null would mean "the plugin's own value": that is what --unset says.
    if let Some((key, _)) = config.iter().find(|(_, value)| value.is_null()) {
        return Err(usage(format!("--set {key}=null: for the plugin's own value, use --unset {key}")));
    }
    for key in unset {
        if config.contains_key(key) {
            return Err(usage(format!("--set and --unset both name {key:?}")));
        }
        config.insert(key.clone(), serde_json::Value::Null);
    }
    Ok(config)
}

/// A plugin name as typed: `[a-z0-9_-]{1,64}` (safe in a URL path).
fn plugin_name(name: &str) -> Result<()> {
    if machinomy_core::plugin::valid_plugin_name(name) {
        return Ok(());
    }
    Err(usage(machinomy_core::plugin::ManifestError::BadName(name.to_owned()).to_string()))
}

/// A plugin command; `local` is the plugin read from disk for `install` and `upgrade`.
async fn plugin(command: &PluginCommand, local: Option<&LocalPlugin>, client: &Client, json: bool) -> Result<()> {
    let local = || local.context("the plugin's files were not read");
    match command {
        PluginCommand::List => {
            let plugins: Vec<PluginView> = client.get("/api/v1/plugins").await?;
            output::show(json, &plugins, || output::plugins(&plugins))
        }
        PluginCommand::Show { name } => {
            plugin_name(name)?;
            let plugin: PluginView = client.get(&format!("/api/v1/plugins/{name}")).await?;
            let status: HubStatus = client.get("/api/v1/status").await?;
            output::show(json, &plugin, || output::plugin(&plugin, &status.currency))
        }
        PluginCommand::Install { set, .. } => {
            let local = local()?;
            let body = local.install_body(upload::overrides(set).map_err(usage)?);
            let installed: PluginInstalled =
                client.post("/api/v1/plugins", &body).await.map_err(|e| local.locate(e))?;
            let status: HubStatus = client.get("/api/v1/status").await?;
            output::show(json, &installed, || output::installed(&installed, false, &status.currency))
        }
        PluginCommand::Upgrade { set, .. } => {
            let local = local()?;
            let body = local.upgrade_body(upload::overrides(set).map_err(usage)?);
            let installed: PluginInstalled =
                client.put(&format!("/api/v1/plugins/{}", local.name), &body).await.map_err(|e| local.locate(e))?;
            let status: HubStatus = client.get("/api/v1/status").await?;
            output::show(json, &installed, || output::installed(&installed, true, &status.currency))
        }
        PluginCommand::Config { name, set, unset } => {
            plugin_name(name)?;
            let config = settings_change(set, unset)?;
            let uri = format!("/api/v1/plugins/{name}");
            let before: PluginView = client.get(&uri).await?;
            if config.is_empty() {
                return output::show(json, &before, || output::plugin_settings(&before, None));
            }
            let after: PluginView = client.patch(&uri, &PluginConfigChange { config }).await?;
            output::show(json, &after, || output::plugin_settings(&after, Some(&before)))
        }
        PluginCommand::Approve { name } => {
            plugin_name(name)?;
            let plugin: PluginView =
                client.post(&format!("/api/v1/plugins/{name}/approve"), &serde_json::json!({})).await?;
            let status: HubStatus = client.get("/api/v1/status").await?;
            output::show(json, &plugin, || output::plugin_approved(&plugin, &status.currency))
        }
        PluginCommand::Enable { name } | PluginCommand::Disable { name } => {
            plugin_name(name)?;
            let action = if matches!(command, PluginCommand::Enable { .. }) { "enable" } else { "disable" };
            let plugin: PluginView =
                client.post(&format!("/api/v1/plugins/{name}/{action}"), &serde_json::json!({})).await?;
            output::show(json, &plugin, || output::plugin_switched(&plugin))
        }
        PluginCommand::Remove { name } => {
            plugin_name(name)?;
            client.delete_empty(&format!("/api/v1/plugins/{name}")).await?;
            output::show(json, &serde_json::json!({"removed": name}), || output::plugin_removed(name))
        }
    }
}

fn check_device(command: &DeviceCommand) -> Result<()> {
    match command {
        DeviceCommand::List => {}
        DeviceCommand::Add { .. } => {
            new_device(command)?;
        }
        DeviceCommand::Show { id } | DeviceCommand::Remove { id } => {
            device_id(id)?;
        }
        DeviceCommand::SendCommand { id, name, payload } => {
            device_id(id)?;
            command_name(name)?;
            command_payload(payload)?;
        }
    }
    Ok(())
}

async fn device(command: &DeviceCommand, client: &Client, json: bool) -> Result<()> {
    match command {
        DeviceCommand::List => {
            let devices: Vec<DeviceView> = client.get("/api/v1/devices").await?;
            output::show(json, &devices, || output::devices(&devices))
        }
        DeviceCommand::Add { .. } => {
            let paired: PairedDevice = client.post("/api/v1/devices", &new_device(command)?).await?;
            output::show(json, &paired, || output::paired(&paired))
        }
        DeviceCommand::Show { id } => {
            let device: DeviceView = client.get(&format!("/api/v1/devices/{}", device_id(id)?)).await?;
            output::show(json, &device, || output::device(&device))
        }
        DeviceCommand::Remove { id } => {
            let device: DeviceView = client.delete(&format!("/api/v1/devices/{}", device_id(id)?)).await?;
            output::show(json, &device, || output::removed(&device))
        }
        DeviceCommand::SendCommand { id, name, payload } => {
            let id = device_id(id)?;
            command_name(name)?;
            let answer: serde_json::Value =
                client.post(&format!("/api/v1/devices/{id}/commands/{name}"), &command_payload(payload)?).await?;
            output::show(json, &answer, || output::command_sent(&id, name))
        }
    }
}

/// What `device add` asks the hub for.
fn new_device(command: &DeviceCommand) -> Result<NewDevice> {
    let DeviceCommand::Add { id, name, key, ble_address, ble_profile } = command else {
        bail!("not `device add`");
    };
    let public_key = key.as_deref().map(device_key).transpose()?;
    let ble = match (ble_address, ble_profile) {
        (Some(address), Some(profile)) => Some(NewBleDevice { address: address.clone(), profile: profile.clone() }),
        (None, None) => None,
        _ => return Err(usage("--ble-address and --ble-profile go together")),
    };
    Ok(NewDevice { id: device_id(id)?, name: name.clone(), public_key, ble })
}

/// A device id as typed: `[a-z0-9_-]{1,64}` (safe in a URL path and an MQTT topic).
fn device_id(text: &str) -> Result<DeviceId> {
    text.parse().map_err(|e: machinomy_core::DeviceError| usage(e.to_string()))
}

fn device_key(text: &str) -> Result<PublicKey> {
    text.parse().map_err(|_| usage(format!("--key: {} is not a public key (64 hex characters)", output::quoted(text))))
}

fn command_name(name: &str) -> Result<()> {
    machinomy_core::device::check_name("command", name).map_err(|e| usage(e.to_string()))
}

fn command_payload(text: &str) -> Result<serde_json::Value> {
    serde_json::from_str(text)
        .map_err(|e| usage(format!("--payload is not valid JSON ({e}); e.g. --payload '{{\"on\": true}}'")))
}

async fn admin(command: &Command, client: &Client, json: bool) -> Result<()> {
    match command {
        Command::Run { .. } | Command::Init => bail!("not an admin command"),
        Command::Plugin(command) => plugin(command, None, client, json).await,
        Command::Status => {
            let status: HubStatus = client.get("/api/v1/status").await?;
            output::show(json, &status, || output::status(&status, client.base()))
        }
        Command::Identity => {
            let status: HubStatus = client.get("/api/v1/status").await?;
            output::show(json, &status.public_key, || format!("{}\n", status.public_key))
        }
        Command::Channel(ChannelCommand::List { peer }) => {
            let path = match peer {
                Some(key) => format!("/api/v1/channels?peer={}", peer_key(key)?),
                None => "/api/v1/channels".to_owned(),
            };
            let channels: Vec<ChannelView> = client.get(&path).await?;
            output::show(json, &channels, || output::channels(&channels))
        }
        Command::Peers => {
            let peers: Vec<machinomy_web::model::PeerView> = client.get("/api/v1/peers").await?;
            output::show(json, &peers, || output::peers(&peers))
        }
        Command::Service(ServiceCommand::List) => {
            let services: machinomy_web::model::ServicesView = client.get("/api/v1/services").await?;
            let status: HubStatus = client.get("/api/v1/status").await?;
            output::show(json, &services, || output::services(&services, &status.currency))
        }
        Command::Service(ServiceCommand::Call { name, subject, body }) => {
            let call = machinomy_web::model::CallBody { subject: parse_subject(subject)?, body: body.clone() };
            let result: machinomy_web::model::CallResult =
                client.post(&format!("/api/v1/services/{name}/call"), &call).await?;
            output::show(json, &result, || output::call(&result))
        }
        Command::Channel(ChannelCommand::Show { id }) => {
            let channel: ChannelView = client.get(&format!("/api/v1/channels/{}", channel_id(id)?)).await?;
            output::show(json, &channel, || output::channel(&channel))
        }
        Command::Channel(ChannelCommand::Close { id }) => {
            let channel: ChannelView =
                client.post(&format!("/api/v1/channels/{}/close", channel_id(id)?), &serde_json::json!({})).await?;
            output::show(json, &channel, || output::channel(&channel))
        }
        Command::Budget(BudgetCommand::List) => {
            let budgets: Vec<BudgetView> = client.get("/api/v1/budgets").await?;
            output::show(json, &budgets, || output::budgets(&budgets))
        }
        Command::Budget(BudgetCommand::Set { subject, period, limit, auto_approve }) => {
            let status: HubStatus = client.get("/api/v1/status").await?;
            let budget = budget_from_args(&status.currency, subject, *period, limit, auto_approve)?;
            let view: BudgetView = client.put("/api/v1/budgets", &budget).await?;
            output::show(json, &view, || output::budgets(std::slice::from_ref(&view)))
        }
        Command::Budget(BudgetCommand::Remove { subject }) => {
            let subject = parse_subject(subject)?;
            let removed: Budget = client.delete(&format!("/api/v1/budgets/{subject}")).await?;
            output::show(json, &removed, || output::budget_removed(&removed.subject))
        }
        Command::Approvals(ApprovalCommand::List { all }) => {
            let state = if *all { "all" } else { "pending" };
            let approvals: Vec<Approval> = client.get(&format!("/api/v1/approvals?state={state}")).await?;
            let status: HubStatus = client.get("/api/v1/status").await?;
            output::show(json, &approvals, || output::approvals(&approvals, &status.currency, *all))
        }
        Command::Approvals(ApprovalCommand::Show { id }) => {
            let approval: Approval = client.get(&format!("/api/v1/approvals/{id}")).await?;
            let status: HubStatus = client.get("/api/v1/status").await?;
            output::show(json, &approval, || output::approval(&approval, &status.currency))
        }
        Command::Approvals(ApprovalCommand::Approve { id }) => {
            let approval: Approval =
                client.post(&format!("/api/v1/approvals/{id}/approve"), &serde_json::json!({})).await?;
            let status: HubStatus = client.get("/api/v1/status").await?;
            output::show(json, &approval, || output::approval(&approval, &status.currency))
        }
        Command::Approvals(ApprovalCommand::Deny { id, reason }) => {
            let body = DenyBody { reason: reason.clone() };
            let approval: Approval = client.post(&format!("/api/v1/approvals/{id}/deny"), &body).await?;
            let status: HubStatus = client.get("/api/v1/status").await?;
            output::show(json, &approval, || output::approval(&approval, &status.currency))
        }
        Command::Spending(args) => spending(args, client, json).await,
        Command::Device(command) => device(command, client, json).await,
    }
}

async fn spending(args: &SpendingArgs, client: &Client, json: bool) -> Result<()> {
    let group = match args.by {
        GroupArg::Subject => GroupBy::Subject,
        GroupArg::Payee => GroupBy::Payee,
        GroupArg::Day => GroupBy::Day,
    };
    let mut query = format!("group_by={}", serde_json::to_value(group)?.as_str().unwrap_or("subject"));
    let (from, to) = day_range(args)?;
    for (name, day) in [("from", from), ("to", to)] {
        if let Some(day) = day {
            // As a date: the hub reads it as that day's midnight in the home's time zone.
            query.push_str(&format!("&{name}={}", day.date_string()));
        }
    }
    if args.csv {
        let csv = client.get_text(&format!("/api/v1/spending.csv?{query}")).await?;
        output::print(&output::csv(&csv));
        return Ok(());
    }
    let report: SpendingReport = client.get(&format!("/api/v1/spending?{query}")).await?;
    output::show(json, &report, || output::spending(&report))
}

/// `--from` and `--to` as days that exist (held as their midnights UTC), `--from` before `--to`.
fn day_range(args: &SpendingArgs) -> Result<(Option<Timestamp>, Option<Timestamp>)> {
    let from = args.from.as_deref().map(|day| parse_day("--from", day)).transpose()?;
    let to = args.to.as_deref().map(|day| parse_day("--to", day)).transpose()?;
    if let (Some(from), Some(to)) = (from, to)
        && from >= to
    {
        return Err(usage("--from must be before --to"));
    }
    Ok((from, to))
}

/// A day `YYYY-MM-DD` that exists (no February 30th), as midnight UTC.
fn parse_day(flag: &str, text: &str) -> Result<Timestamp> {
    let not_a_date = || usage(format!("{flag}: {} is not a date (YYYY-MM-DD)", output::quoted(text)));
    let parts: Vec<&str> = text.split('-').collect();
    let [y, m, d] = parts.as_slice() else { return Err(not_a_date()) };
    if ![y, m, d].iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())) {
        return Err(not_a_date());
    }
    let (Ok(y), Ok(m), Ok(d)) = (y.parse::<i64>(), m.parse::<u32>(), d.parse::<u32>()) else {
        return Err(not_a_date());
    };
    if !(1970..=9999).contains(&y) || !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return Err(not_a_date());
    }
    let day = Timestamp::from_civil(y, m, d);
    // The calendar's own check: 2026-02-30 would otherwise quietly be March 2nd.
    if day.civil_date() != (y, m, d) {
        return Err(not_a_date());
    }
    Ok(day)
}

fn parse_subject(text: &str) -> Result<Subject> {
    text.parse().map_err(|e| usage(format!("{e}")))
}

/// The syntax of an amount, before the hub says how many decimals its currency has.
fn check_amount(flag: &str, text: &str) -> Result<()> {
    match Amount::parse_decimal(text, 0) {
        Err(e @ (AmountError::Empty | AmountError::NotDecimal(_))) => Err(usage(format!("{flag}: {e}"))),
        _ => Ok(()),
    }
}

fn budget_from_args(currency: &Currency, subject: &str, period: PeriodArg, limit: &str, auto: &str) -> Result<Budget> {
    let subject = parse_subject(subject)?;
    let period = match period {
        PeriodArg::Day => Period::Day,
        PeriodArg::Week => Period::Week,
        PeriodArg::Month => Period::Month,
    };
    let limit = currency.parse(limit).map_err(|e| usage(format!("--limit: {e}")))?;
    let auto_approve = currency.parse(auto).map_err(|e| usage(format!("--auto-approve: {e}")))?;
    if auto_approve > limit {
        return Err(usage(format!(
            "--auto-approve {} is above --limit {}",
            currency.format(auto_approve),
            currency.format(limit)
        )));
    }
    Ok(Budget::new(subject, period, limit, auto_approve)?)
}

/// A channel id as typed: 64 hex characters, or an error quoting what was typed.
fn channel_id(text: &str) -> Result<ChannelId> {
    if text.len() != 64 {
        return Err(not_a_channel_id(text));
    }
    text.parse().map_err(|_| not_a_channel_id(text))
}

fn not_a_channel_id(text: &str) -> anyhow::Error {
    usage(format!("{} is not a channel id (64 hex characters)", output::quoted(text)))
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    // rumqttd logs every connection at info and ordinary disconnects and refused logins as errors;
    // the bridge logs what an owner needs itself (`RUST_LOG=rumqttd=info` shows rumqttd's own).
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,rumqttd=off"));
    use std::io::IsTerminal;
    let ansi = std::io::stderr().is_terminal();
    tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).init();
}

/// A peer's public key as typed on the command line.
fn peer_key(text: &str) -> Result<machinomy_core::PublicKey> {
    text.parse().map_err(|_| usage(format!("{} is not a peer's public key (64 hex characters)", output::quoted(text))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_that_do_not_exist_are_refused_not_rolled_over() {
        assert_eq!(parse_day("--from", "2026-02-28").unwrap().date_string(), "2026-02-28");
        assert_eq!(parse_day("--from", "2028-02-29").unwrap().date_string(), "2028-02-29");
        for bad in ["2026-02-29", "2026-02-30", "2026-04-31", "2026-13-01", "2026-00-10", "2026-1", "+2026-01-01", ""] {
            let error = parse_day("--from", bad).unwrap_err().to_string();
            assert!(error.starts_with("--from: ") && error.contains("is not a date"), "{bad}: {error}");
        }
    }

    #[test]
    fn from_must_be_before_to() {
        let args = |from: &str, to: &str| SpendingArgs {
            by: GroupArg::Day,
            from: Some(from.to_owned()),
            to: Some(to.to_owned()),
            csv: false,
        };
        assert!(day_range(&args("2026-03-01", "2026-03-02")).is_ok());
        for (from, to) in [("2026-03-03", "2026-03-01"), ("2026-03-01", "2026-03-01")] {
            assert_eq!(day_range(&args(from, to)).unwrap_err().to_string(), "--from must be before --to");
        }
    }

    #[test]
    fn channel_ids_are_checked_and_quoted_as_typed() {
        let id = "ab".repeat(32);
        assert_eq!(channel_id(&id).unwrap().to_hex(), id);
        assert_eq!(
            channel_id("../../budgets").unwrap_err().to_string(),
            r#""../../budgets" is not a channel id (64 hex characters)"#
        );
        assert!(channel_id(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn budget_amounts_are_checked_in_currency_units() {
        let usd = Currency::usd();
        let error = budget_from_args(&usd, "device:tv", PeriodArg::Day, "1", "2").unwrap_err();
        assert_eq!(error.to_string(), "--auto-approve 2.00 USD is above --limit 1.00 USD");
        assert!(error.downcast_ref::<Usage>().is_some());
        let error = check_amount("--limit", "-5").unwrap_err().to_string();
        assert!(error.starts_with("--limit: amount \"-5\" is not a plain decimal number"), "{error}");
        assert!(check_amount("--limit", "2.50").is_ok());
    }

    #[test]
    fn a_group_without_its_subcommand_names_the_group() {
        let error = command().try_get_matches_from(["machinomy-hub", "budget"]).unwrap_err();
        assert_eq!(error.kind(), clap::error::ErrorKind::MissingSubcommand);
        assert_eq!(subcommands_of(&["budget"]), ["list", "set", "remove"]);
        let matches = command().try_get_matches_from([
            "machinomy-hub",
            "budget",
            "set",
            "device:tv",
            "--period",
            "day",
            "--limit",
            "-5",
            "--auto-approve",
            "0",
        ]);
        assert!(matches.is_ok(), "{matches:?}");
        // Without --auto-approve every spend asks the owner.
        let Command::Budget(BudgetCommand::Set { auto_approve, .. }) =
            parse_args(&["budget", "set", "device:tv", "--period", "day", "--limit", "5"]).unwrap().command
        else {
            panic!("not `budget set`");
        };
        assert_eq!(auto_approve, "0");
    }

    fn parse_args(args: &[&str]) -> Result<Args, clap::Error> {
        let matches = command().try_get_matches_from(std::iter::once("machinomy-hub").chain(args.iter().copied()))?;
        Args::from_arg_matches(&matches)
    }

    fn device_command(args: &[&str]) -> DeviceCommand {
        match parse_args(args).unwrap().command {
            Command::Device(device) => device,
            other => panic!("not a device command: {other:?}"),
        }
    }

    #[test]
    fn device_commands_parse() {
        assert_eq!(subcommands_of(&["device"]), ["list", "add", "show", "remove", "command"]);
        assert!(matches!(device_command(&["devices", "list"]), DeviceCommand::List));
        let add = device_command(&["device", "add", "washer", "--name", "Washing machine", "--key", &"ab".repeat(32)]);
        let new = new_device(&add).unwrap();
        assert_eq!(new.id.as_str(), "washer");
        assert_eq!(new.name.as_deref(), Some("Washing machine"));
        assert_eq!(new.public_key.unwrap().to_hex(), "ab".repeat(32));
        assert_eq!(new.ble, None);
        let ble =
            device_command(&["device", "add", "scale", "--ble-address", "C8:47:8C:00:00:01", "--ble-profile", "mi"]);
        let new = new_device(&ble).unwrap();
        assert_eq!(new.ble, Some(NewBleDevice { address: "C8:47:8C:00:00:01".to_owned(), profile: "mi".to_owned() }));
        assert_eq!((new.name, new.public_key), (None, None));
        let DeviceCommand::SendCommand { payload, .. } = device_command(&["device", "command", "fridge", "defrost"])
        else {
            panic!("not `device command`");
        };
        assert_eq!(command_payload(&payload).unwrap(), serde_json::json!({}));
        let DeviceCommand::SendCommand { payload, .. } =
            device_command(&["device", "command", "fridge", "set", "--payload", "-5"])
        else {
            panic!("not `device command`");
        };
        assert_eq!(command_payload(&payload).unwrap(), serde_json::json!(-5));
    }

    #[test]
    fn a_ble_address_needs_a_profile() {
        for args in [
            &["device", "add", "scale", "--ble-address", "C8:47:8C:00:00:01"][..],
            &["device", "add", "scale", "--ble-profile", "mi"][..],
        ] {
            let error = parse_args(args).unwrap_err();
            assert_eq!(error.kind(), clap::error::ErrorKind::MissingRequiredArgument, "{args:?}");
        }
    }

    #[test]
    fn device_arguments_are_checked_before_asking_the_hub() {
        let usage_error = |args: &[&str]| {
            let Command::Device(device) = parse_args(args).unwrap().command else { panic!("not a device command") };
            let error = check_device(&device).unwrap_err();
            assert!(error.downcast_ref::<Usage>().is_some(), "{args:?}: {error}");
            error.to_string()
        };
        let long = "a".repeat(200);
        for bad in ["Fridge", "a/b", "a+b", "../budgets", "", long.as_str()] {
            for args in [&["device", "show", bad][..], &["device", "remove", bad], &["device", "add", bad]] {
                let error = usage_error(args);
                assert!(error.starts_with("device id ") && error.contains("1 to 64 characters"), "{error}");
            }
        }
        let error = usage_error(&["device", "add", "washer", "--key", "abc"]);
        assert_eq!(error, r#"--key: "abc" is not a public key (64 hex characters)"#);
        let error = usage_error(&["device", "command", "fridge", "Set-Temp"]);
        assert!(error.starts_with(r#"command name "Set-Temp" must be"#), "{error}");
        let error = usage_error(&["device", "command", "fridge", "on", "--payload", "{on: true}"]);
        assert!(error.starts_with("--payload is not valid JSON ("), "{error}");
        let error = usage_error(&["device", "command", "fridge", "on", "--payload", ""]);
        assert!(error.starts_with("--payload is not valid JSON"), "{error}");
        let ok = parse_args(&["device", "command", "fridge", "set_temp", "--payload", r#"{"c": 3}"#]).unwrap();
        assert!(check(&ok.command).is_ok());
    }

    fn plugin_command(args: &[&str]) -> PluginCommand {
        match parse_args(args).unwrap().command {
            Command::Plugin(plugin) => plugin,
            other => panic!("not a plugin command: {other:?}"),
        }
    }

    #[test]
    fn plugin_commands_parse() {
        assert_eq!(
            subcommands_of(&["plugin"]),
            ["list", "show", "install", "upgrade", "config", "approve", "enable", "disable", "remove"]
        );
        assert!(matches!(plugin_command(&["plugins", "list"]), PluginCommand::List));
        let PluginCommand::Install { path, wasm, set } = plugin_command(&[
            "plugin",
            "install",
            "plugins/weather-buyer",
            "--set",
            "every_secs=600",
            "--wasm",
            "dist/weather.wasm",
            "--set",
            "offset=-5",
        ]) else {
            panic!("not `plugin install`");
        };
        assert_eq!(path, Path::new("plugins/weather-buyer"));
        assert_eq!(wasm.as_deref(), Some(Path::new("dist/weather.wasm")));
        let overrides = upload::overrides(&set).unwrap();
        assert_eq!(serde_json::Value::Object(overrides), serde_json::json!({"every_secs": 600, "offset": -5}));
        let PluginCommand::Upgrade { path, wasm, .. } = plugin_command(&["plugin", "upgrade", "plugin.toml"]) else {
            panic!("not `plugin upgrade`");
        };
        assert_eq!((path.as_path(), wasm), (Path::new("plugin.toml"), None));
        let PluginCommand::Upgrade { set, .. } =
            plugin_command(&["plugin", "upgrade", "plugins/weather-buyer", "--set", "every_secs=60"])
        else {
            panic!("not `plugin upgrade`");
        };
        let overrides = upload::overrides(&set).unwrap();
        assert_eq!(serde_json::Value::Object(overrides), serde_json::json!({"every_secs": 60}));
        let PluginCommand::Config { name, set, unset } =
            plugin_command(&["plugin", "config", "weather-buyer", "--set", "max_price=9", "--unset", "every_secs"])
        else {
            panic!("not `plugin config`");
        };
        assert_eq!(name, "weather-buyer");
        let change = settings_change(&set, &unset).unwrap();
        assert_eq!(serde_json::Value::Object(change), serde_json::json!({"max_price": 9, "every_secs": null}));
        let both = plugin_command(&["plugin", "config", "w", "--set", "a=1", "--unset", "a"]);
        assert!(check_plugin(&both).unwrap_err().to_string().contains("--set and --unset both name \"a\""));
        let null = plugin_command(&["plugin", "config", "w", "--set", "a=null"]);
        assert!(check_plugin(&null).unwrap_err().to_string().contains("use --unset a"));
        for action in ["approve", "enable", "disable", "remove", "show", "config"] {
            let command = plugin_command(&["plugin", action, "weather-buyer"]);
            assert!(check_plugin(&command).is_ok(), "{action}");
        }
        let error = parse_args(&["plugin", "install"]).unwrap_err();
        assert_eq!(error.kind(), clap::error::ErrorKind::MissingRequiredArgument);
    }

    #[test]
    fn plugin_arguments_are_checked_before_asking_the_hub() {
        let usage_error = |args: &[&str]| {
            let error = check_plugin(&plugin_command(args)).unwrap_err();
            assert!(error.downcast_ref::<Usage>().is_some(), "{args:?}: {error}");
            error.to_string()
        };
        for bad in ["Weather", "a/b", "../budgets", ""] {
            for action in ["show", "approve", "enable", "disable", "remove"] {
                let error = usage_error(&["plugin", action, bad]);
                assert!(error.starts_with("plugin name ") && error.contains("1 to 64 characters"), "{error}");
            }
        }
        assert_eq!(
            usage_error(&["plugin", "install", "dir", "--set", "every_secs"]),
            r#"--set "every_secs": expected KEY=VALUE"#
        );
        assert_eq!(usage_error(&["plugin", "install", "dir", "--set", "=1"]), r#"--set "=1": the key is empty"#);
    }
}
