//! The command line: parses arguments, runs the daemon or asks it over the admin API.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use machinomy_core::{Approval, Budget, Currency, GroupBy, Period, Subject, Timestamp};
use machinomy_hub::client::Client;
use machinomy_hub::config::{Config, DefaultPaths};
use machinomy_hub::datadir::DataDir;
use machinomy_web::model::{BudgetView, ChannelView, DenyBody, HubStatus, SpendingReport};

use crate::output;

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
}

#[derive(Debug, Subcommand)]
enum ChannelCommand {
    /// List channels, newest first
    List,
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
        /// device:<id>, plugin:<name> or peer:<id>
        subject: String,
        #[arg(long, value_enum)]
        period: PeriodArg,
        /// Most to spend per period, in currency units (e.g. 5.00)
        #[arg(long)]
        limit: String,
        /// Most per payment without asking the owner, in currency units
        #[arg(long)]
        auto_approve: String,
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
            output::init(&config, &data_dir, created_config, created_data);
            Ok(())
        }
        command => {
            let config = Config::load(&config_path, &default_data)?;
            let client = Client::for_data_dir(&config.hub.data_dir)?;
            admin(command, &client, args.json).await
        }
    }
}

async fn admin(command: &Command, client: &Client, json: bool) -> Result<()> {
    match command {
        Command::Run { .. } | Command::Init => bail!("not an admin command"),
        Command::Status => {
            let status: HubStatus = client.get("/api/v1/status").await?;
            output::show(json, &status, || output::status(&status, client.base()))
        }
        Command::Identity => {
            let status: HubStatus = client.get("/api/v1/status").await?;
            output::show(json, &status.public_key, || format!("{}\n", status.public_key))
        }
        Command::Channel(ChannelCommand::List) => {
            let channels: Vec<ChannelView> = client.get("/api/v1/channels").await?;
            output::show(json, &channels, || output::channels(&channels))
        }
        Command::Channel(ChannelCommand::Show { id }) => {
            let channel: ChannelView = client.get(&format!("/api/v1/channels/{}", path_segment(id))).await?;
            output::show(json, &channel, || output::channel(&channel))
        }
        Command::Channel(ChannelCommand::Close { id }) => {
            let channel: ChannelView =
                client.post(&format!("/api/v1/channels/{}/close", path_segment(id)), &serde_json::json!({})).await?;
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
        Command::Approvals(ApprovalCommand::List { all }) => {
            let state = if *all { "all" } else { "pending" };
            let approvals: Vec<Approval> = client.get(&format!("/api/v1/approvals?state={state}")).await?;
            let status: HubStatus = client.get("/api/v1/status").await?;
            output::show(json, &approvals, || output::approvals(&approvals, &status.currency))
        }
        Command::Approvals(ApprovalCommand::Show { id }) => {
            let approval: Approval = client.get(&format!("/api/v1/approvals/{id}")).await?;
            let status: HubStatus = client.get("/api/v1/status").await?;
            output::show(json, &approval, || output::approvals(std::slice::from_ref(&approval), &status.currency))
        }
        Command::Approvals(ApprovalCommand::Approve { id }) => {
            let approval: Approval =
                client.post(&format!("/api/v1/approvals/{id}/approve"), &serde_json::json!({})).await?;
            let status: HubStatus = client.get("/api/v1/status").await?;
            output::show(json, &approval, || output::approvals(std::slice::from_ref(&approval), &status.currency))
        }
        Command::Approvals(ApprovalCommand::Deny { id, reason }) => {
            let body = DenyBody { reason: reason.clone() };
            let approval: Approval = client.post(&format!("/api/v1/approvals/{id}/deny"), &body).await?;
            let status: HubStatus = client.get("/api/v1/status").await?;
            output::show(json, &approval, || output::approvals(std::slice::from_ref(&approval), &status.currency))
        }
        Command::Spending(args) => spending(args, client, json).await,
    }
}

async fn spending(args: &SpendingArgs, client: &Client, json: bool) -> Result<()> {
    let group = match args.by {
        GroupArg::Subject => GroupBy::Subject,
        GroupArg::Payee => GroupBy::Payee,
        GroupArg::Day => GroupBy::Day,
    };
    let mut query = format!("group_by={}", serde_json::to_value(group)?.as_str().unwrap_or("subject"));
    for (name, value) in [("from", &args.from), ("to", &args.to)] {
        if let Some(day) = value {
            let day = parse_day(day).with_context(|| format!("--{name}"))?;
            query.push_str(&format!("&{name}={}", day.secs()));
        }
    }
    if args.csv {
        let csv = client.get_text(&format!("/api/v1/spending.csv?{query}")).await?;
        output::print(&csv);
        return Ok(());
    }
    let report: SpendingReport = client.get(&format!("/api/v1/spending?{query}")).await?;
    output::show(json, &report, || output::spending(&report))
}

fn parse_day(text: &str) -> Result<Timestamp> {
    let parts: Vec<&str> = text.split('-').collect();
    let [y, m, d] = parts.as_slice() else { bail!("{text:?} is not a date (YYYY-MM-DD)") };
    let (Ok(y), Ok(m), Ok(d)) = (y.parse::<i64>(), m.parse::<u32>(), d.parse::<u32>()) else {
        bail!("{text:?} is not a date (YYYY-MM-DD)")
    };
    if !(1970..=9999).contains(&y) || !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        bail!("{text:?} is not a date (YYYY-MM-DD)");
    }
    Ok(Timestamp::from_civil(y, m, d))
}

fn budget_from_args(currency: &Currency, subject: &str, period: PeriodArg, limit: &str, auto: &str) -> Result<Budget> {
    let subject: Subject = subject.parse()?;
    let period = match period {
        PeriodArg::Day => Period::Day,
        PeriodArg::Week => Period::Week,
        PeriodArg::Month => Period::Month,
    };
    let limit = currency.parse(limit).context("--limit")?;
    let auto_approve = currency.parse(auto).context("--auto-approve")?;
    Ok(Budget::new(subject, period, limit, auto_approve)?)
}

/// Keeps a user-typed id from changing the request path.
fn path_segment(id: &str) -> String {
    id.chars().filter(char::is_ascii_alphanumeric).collect()
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let ansi = std::io::stderr().is_terminal();
    tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).init();
}
