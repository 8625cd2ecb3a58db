//! The four example plugins, built from `plugins/` to wasm and installed with the CLI into real
//! hub processes that pay each other over loopback: each scenario's devices are MQTT clients of
//! the hub's embedded broker, and every amount is checked to the base unit in both hubs' books.
//! Then the plugin commands of the CLI, end to end, with a real plugin.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // tests fail loudly

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use machinomy_core::{Approval, ApprovalState, PublicKey, SpendOutcome};
use machinomy_tests::plugins::{
    Device, UNIT, amount, budget_toml, events, identity, install, list, p2p_addr, plugin_package, row, show, spending,
    view, wait_connected,
};
use machinomy_tests::{TestHub, wait_for};
use machinomy_web::model::{ChannelView, InstallStatus, PluginInstalled, PluginStateName, Role, SpendingReport};
use serde_json::{Value, json};

/// How long one step of a scenario may take: a plugin acting on an event, a payment arriving.
const DEADLINE: Duration = Duration::from_secs(30);
/// How often a loop that waits looks again.
const POLL: Duration = Duration::from_millis(20);

/// A hub on the peer network (loopback, no mDNS), started; `extra` is TOML after the tables.
async fn peer_hub(name: &str, p2p: &[&str], extra: &str) -> TestHub {
    let mut builder = TestHub::builder().name(name).p2p(p2p);
    if !extra.is_empty() {
        builder = builder.extra(extra);
    }
    let mut hub = builder.build().unwrap();
    hub.start().await.unwrap();
    hub
}

/// A hub on the peer network that bootstraps from `peer` and runs the embedded broker, started;
/// its broker's port.
async fn home_hub(name: &str, peer: &TestHub) -> (TestHub, u16) {
    let bootstrap = format!("bootstrap = [\"{}\"]", p2p_addr(peer).await.unwrap());
    let (builder, port) = TestHub::builder().name(name).p2p(&[&bootstrap]).embedded_mqtt().unwrap();
    let mut hub = builder.build().unwrap();
    hub.start().await.unwrap();
    (hub, port)
}

/// What the hub's channels with `peer` in `role` hold in total.
async fn channel_total(hub: &TestHub, peer: &PublicKey, role: Role) -> u128 {
    let channels: Vec<ChannelView> = hub.api().unwrap().get_json("/api/v1/channels").await.unwrap();
    channels.iter().filter(|c| c.role == role && &c.counterparty == peer).map(|c| c.spent.base_units()).sum()
}

/// Every approval the hub holds for `subject`, oldest first.
async fn approvals_of(hub: &TestHub, subject: &str) -> Vec<Approval> {
    let all: Vec<Approval> = hub.cli(&["approvals", "list", "--all", "--json"]).await.unwrap().json().unwrap();
    let mut mine: Vec<Approval> = all.into_iter().filter(|a| a.request.subject.to_string() == subject).collect();
    mine.sort_by_key(|a| a.id);
    mine
}

fn paid(approval: &Approval) -> bool {
    matches!(approval.outcome, Some(SpendOutcome::Paid { .. }))
}

/// The plugin never faulted and never called outside its grants.
async fn assert_well_behaved(hub: &TestHub, name: &str) {
    let plugin = view(hub, name).await.unwrap();
    assert_eq!((plugin.faults, plugin.refused, plugin.state), (0, 0, PluginStateName::Enabled), "{plugin:?}");
}

async fn stop(hubs: &mut [&mut TestHub]) {
    for hub in hubs {
        assert!(hub.stop().await.unwrap().success(), "{}", hub.describe_process());
    }
}

// --- rental-billing ---------------------------------------------------------------------------

const STATEMENT: &str = "machinomy-plugins/rental-billing/statement";
/// 0.30 USD per kWh: 300 000 base units per Wh.
const PRICE_PER_KWH: u128 = 300_000_000;
/// 0.36 USD per hour: 100 base units per ms.
const PRICE_PER_HOUR: u128 = 360_000_000;

/// The statements `rental-billing` published: each bill as invoiced, and its outcomes.
#[derive(Debug, Default)]
struct Statements {
    invoiced: BTreeMap<u64, Value>,
    outcomes: BTreeMap<u64, Vec<String>>,
    paid: u128,
}

impl Statements {
    fn add(&mut self, statement: Value) {
        assert!(statement["bill"].is_u64() && statement["status"].is_string(), "not a statement: {statement}");
        let (bill, status) = (statement["bill"].as_u64().unwrap(), statement["status"].as_str().unwrap().to_owned());
        if status == "invoiced" {
            assert!(self.invoiced.insert(bill, statement).is_none(), "bill {bill} invoiced twice");
            return;
        }
        if status == "paid" {
            self.paid += amount(&statement["amount"]).unwrap();
        }
        self.outcomes.entry(bill).or_default().push(status);
    }

    fn energy_wh(&self) -> u64 {
        self.invoiced.values().map(|s| s["energy_wh"].as_u64().unwrap()).sum()
    }

    /// Every bill invoiced has a final answer.
    fn settled(&self) -> bool {
        self.invoiced.keys().all(|bill| {
            self.outcomes
                .get(bill)
                .is_some_and(|o| o.iter().any(|s| ["paid", "denied", "failed"].contains(&s.as_str())))
        })
    }

    async fn read_until(&mut self, meter: &mut Device, mut done: impl FnMut(&Statements) -> bool) {
        while !done(self) {
            self.add(meter.next_on(STATEMENT, DEADLINE).await.unwrap());
        }
    }
}

#[tokio::test]
async fn rental_billing_invoices_the_renter_hub_for_metered_energy_and_time_until_checkout() {
    let package = plugin_package("rental-billing").unwrap();
    let (builder, port) = TestHub::builder().name("owner").p2p(&[]).embedded_mqtt().unwrap();
    let mut owner = builder.build().unwrap();
    owner.start().await.unwrap();
    let owner_key = identity(&owner).await.unwrap();
    // The renter's hub pays the owner's invoices up to 10 USD each without asking.
    let budget = budget_toml(&format!("peer:{}", owner_key.to_hex()), "day", "100", "10");
    let bootstrap = format!("bootstrap = [\"{}\"]", p2p_addr(&owner).await.unwrap());
    let mut renter = peer_hub("renter", &[&bootstrap], &budget).await;
    let renter_key = identity(&renter).await.unwrap();
    wait_connected(&owner, &renter_key).await.unwrap();

    // The meter has counted 1000 Wh before the stay: the plugin starts billing from there.
    let mut meter = Device::pair(&owner, port, "meter", &[STATEMENT]).await.unwrap();
    meter.report(&owner, json!({"energy_wh": 1000})).await.unwrap();
    let installed = install(
        &owner,
        &package,
        &[
            ("renter", &renter_key.to_hex()),
            ("price_per_kwh", &PRICE_PER_KWH.to_string()),
            ("price_per_hour", &PRICE_PER_HOUR.to_string()),
            ("bill_every_secs", "1"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(installed.status, InstallStatus::Ready);
    assert_eq!(installed.plugin.config["renter"], json!(renter_key.to_hex()), "{installed:?}");

    // Readings come in; bills go out every second; the checkout carries the final reading.
    let mut statements = Statements::default();
    meter.report(&owner, json!({"energy_wh": 1400})).await.unwrap();
    statements.read_until(&mut meter, |s| s.energy_wh() >= 400).await;
    meter.report(&owner, json!({"energy_wh": 1900})).await.unwrap();
    statements.read_until(&mut meter, |s| s.energy_wh() >= 900).await;
    meter.event("checkout", json!({"energy_wh": 2300})).await.unwrap();
    statements.read_until(&mut meter, |s| s.energy_wh() == 1300 && s.settled()).await;

    // Each bill is its energy at the kWh price plus its time at the hourly price, exactly (the
    // prices divide evenly, so nothing is carried), and the renter's hub paid every one at once.
    assert!(statements.invoiced.len() >= 3, "{statements:?}");
    // Why a bill was not paid is in the plugin's log.
    let log = show(&owner, "rental-billing").await.unwrap().recent;
    let mut invoiced = 0;
    for (bill, statement) in &statements.invoiced {
        let (wh, ms) = (statement["energy_wh"].as_u64().unwrap(), statement["ms"].as_u64().unwrap());
        let expected = u128::from(wh) * PRICE_PER_KWH / 1000 + u128::from(ms) * PRICE_PER_HOUR / 3_600_000;
        assert_eq!(amount(&statement["amount"]).unwrap(), expected, "bill {bill}: {statement}");
        assert!(statement.get("outstanding").is_none(), "bill {bill} carried an unpaid one: {statement}");
        assert_eq!(statements.outcomes[bill], ["paid"], "bill {bill}: {log:#?}");
        invoiced += expected;
    }
    assert_eq!(statements.paid, invoiced);
    // The checkout's final reading was billed: it arrived with the checkout alone.
    let last = statements.invoiced.values().last().unwrap();
    assert!(last["energy_wh"].as_u64().unwrap() >= 400, "the checkout bill: {last}");

    // Both hubs' books: what the renter paid the owner is what the plugin was paid, booked to it.
    let owner_books: SpendingReport = spending(&owner).await.unwrap();
    let renter_books: SpendingReport = spending(&renter).await.unwrap();
    let bills = statements.invoiced.len() as u64;
    assert_eq!(row(&owner_books, "plugin:rental-billing"), (0, invoiced, bills), "{owner_books:?}");
    assert_eq!(owner_books.total_received.base_units(), invoiced);
    assert_eq!(row(&renter_books, &format!("peer:{}", owner_key.to_hex())), (invoiced, 0, bills), "{renter_books:?}");
    assert_eq!(renter_books.total_paid.base_units(), invoiced);
    assert_eq!(channel_total(&renter, &owner_key, Role::Sender).await, invoiced);
    assert_eq!(channel_total(&owner, &renter_key, Role::Receiver).await, invoiced);
    let approvals = approvals_of(&renter, &format!("peer:{}", owner_key.to_hex())).await;
    assert_eq!(approvals.len() as u64, bills);
    assert!(approvals.iter().all(|a| paid(a) && a.request.memo.starts_with("bill ")), "{approvals:?}");

    // The stay is over: the bill timer keeps firing, but bills nothing more.
    let seen = events(&owner, "rental-billing").await.unwrap();
    wait_for("two more bill timers", DEADLINE, async || {
        Ok((events(&owner, "rental-billing").await? >= seen + 2).then_some(()))
    })
    .await
    .unwrap();
    let late: Vec<_> = meter.drain().await.into_iter().filter(|(topic, _)| topic == STATEMENT).collect();
    assert!(late.is_empty(), "{late:?}");
    assert_eq!(spending(&owner).await.unwrap().total_received.base_units(), invoiced);

    assert_well_behaved(&owner, "rental-billing").await;
    stop(&mut [&mut owner, &mut renter]).await;
}

// --- grocery-ordering -------------------------------------------------------------------------

const ORDER: &str = "machinomy-plugins/grocery-ordering/order";
const MILK: u128 = 1_200_000_000;

/// The statuses of order `number` as published, up to and including `last`.
async fn order_statuses(fridge: &mut Device, number: u64, last: &str) -> (Vec<String>, Value) {
    let mut statuses = Vec::new();
    loop {
        let message = fridge.next_on(ORDER, DEADLINE).await.unwrap();
        assert_eq!(message["order"].as_u64(), Some(number), "{message}");
        let status = message["status"].as_str().unwrap().to_owned();
        statuses.push(status.clone());
        if status == last {
            return (statuses, message);
        }
    }
}

#[tokio::test]
async fn grocery_ordering_pays_the_grocer_small_orders_at_once_and_big_ones_once_the_owner_approves() {
    let package = plugin_package("grocery-ordering").unwrap();
    // The grocer does nothing but accept the channels its customers open (up to 1000 USD each).
    let mut grocer = peer_hub("grocer", &[], "[ledger.credit]\nmax_credit_per_peer = \"1000\"").await;
    let grocer_key = identity(&grocer).await.unwrap();
    let (mut home, port) = home_hub("home", &grocer).await;
    let home_key = identity(&home).await.unwrap();
    wait_connected(&home, &grocer_key).await.unwrap();

    // This household keeps 20 bottles of milk; orders up to 20 USD need no approval (the
    // manifest's budget).
    let diet = json!({"milk": 20, "eggs": 12, "butter": 1}).to_string();
    let installed = install(&home, &package, &[("grocer", &grocer_key.to_hex()), ("diet", &diet)]).await.unwrap();
    assert_eq!(installed.plugin.config["diet"]["milk"], json!(20), "{installed:?}");
    let mut fridge = Device::pair(&home, port, "fridge", &[ORDER]).await.unwrap();

    // One bottle short: 1.20 USD, paid at once.
    fridge.report(&home, json!({"inventory": {"milk": 19, "eggs": 12, "butter": 1}})).await.unwrap();
    let (statuses, first) = order_statuses(&mut fridge, 1, "paid").await;
    assert_eq!(statuses, ["requested", "paid"]);
    assert_eq!(first["items"], json!({"milk": 1}));
    assert_eq!(amount(&first["amount"]).unwrap(), MILK);

    // Out of milk: 24 USD, above the auto-approve threshold, so it waits for the owner.
    fridge.report(&home, json!({"inventory": {"milk": 0, "eggs": 12, "butter": 1}})).await.unwrap();
    let (statuses, _) = order_statuses(&mut fridge, 2, "pending").await;
    assert_eq!(statuses, ["requested", "pending"]);
    let pending: Vec<Approval> = home.cli(&["approvals", "list", "--json"]).await.unwrap().json().unwrap();
    let [waiting] = pending.as_slice() else { panic!("expected one pending approval: {pending:?}") };
    assert_eq!(waiting.request.subject.to_string(), "plugin:grocery-ordering");
    assert_eq!(waiting.request.amount.base_units(), 20 * MILK);
    assert!(waiting.request.memo.contains("milk×20"), "{waiting:?}");
    home.cli(&["approvals", "approve", &waiting.id.to_string()]).await.unwrap().ok().unwrap();
    let (statuses, second) = order_statuses(&mut fridge, 2, "paid").await;
    assert_eq!(statuses, ["paid"]);
    assert_eq!(second["items"], json!({"milk": 20}));

    // Both books, to the base unit: 1.20 + 24.00 USD from the plugin's budget to the grocer.
    let total = 21 * MILK;
    assert_eq!(total, 25 * UNIT + UNIT / 5);
    let home_books = spending(&home).await.unwrap();
    let grocer_books = spending(&grocer).await.unwrap();
    assert_eq!(row(&home_books, "plugin:grocery-ordering"), (total, 0, 2), "{home_books:?}");
    assert_eq!(home_books.total_paid.base_units(), total);
    assert_eq!(row(&grocer_books, &format!("peer:{}", home_key.to_hex())), (0, total, 2), "{grocer_books:?}");
    assert_eq!(grocer_books.total_received.base_units(), total);
    assert_eq!(channel_total(&home, &grocer_key, Role::Sender).await, total);
    assert_eq!(channel_total(&grocer, &home_key, Role::Receiver).await, total);
    // The owner's record of each order names its items; the big one carries the owner's approval.
    let orders = approvals_of(&home, "plugin:grocery-ordering").await;
    let memos: Vec<&str> = orders.iter().map(|a| a.request.memo.as_str()).collect();
    assert_eq!(memos, ["order 1: milk×1", "order 2: milk×20"]);
    assert!(orders.iter().all(paid), "{orders:?}");
    assert!(
        matches!(&orders[1].state, ApprovalState::Approved { by, .. } if by != machinomy_core::BUDGET_PRINCIPAL),
        "{:?}",
        orders[1]
    );
    assert_well_behaved(&home, "grocery-ordering").await;
    stop(&mut [&mut home, &mut grocer]).await;
}

// --- weather-buyer ----------------------------------------------------------------------------

/// 0.000001 USD a forecast.
const FORECAST: u128 = 1_000;

#[tokio::test]
async fn weather_buyer_buys_forecasts_from_a_station_hub_and_pauses_and_resumes_the_irrigation() {
    let package = plugin_package("weather-buyer").unwrap();
    // The station sells its weather-station device's state as `weather.forecast`.
    let sell = "[[sell]]\nname = \"weather.forecast\"\nprice = \"0.000001\"\n\
                description = \"the rain forecast of the station on the roof\"\n\
                topic = \"machinomy/weather-station/state\"";
    let (builder, station_port) = TestHub::builder().name("station").p2p(&[]).extra(sell).embedded_mqtt().unwrap();
    let mut station = builder.build().unwrap();
    station.start().await.unwrap();
    let station_key = identity(&station).await.unwrap();
    let mut sensor = Device::pair(&station, station_port, "weather-station", &[]).await.unwrap();
    sensor.report(&station, json!({"rain_probability": 80, "temperature": 14.5})).await.unwrap();

    let (mut buyer, port) = home_hub("garden", &station).await;
    let buyer_key = identity(&buyer).await.unwrap();
    wait_connected(&buyer, &station_key).await.unwrap();
    let mut irrigation = Device::pair(&buyer, port, "irrigation", &[]).await.unwrap();
    install(&buyer, &package, &[("every_secs", "1")]).await.unwrap();

    // Rain is likely: the irrigation pauses.
    let pause = irrigation.next_on("machinomy/irrigation/cmd/pause", DEADLINE).await.unwrap();
    assert_eq!(pause, json!({"reason": "rain", "rain_probability": 80}));
    // The sky clears: a later forecast resumes it.
    sensor.report(&station, json!({"rain_probability": 10, "temperature": 18.0})).await.unwrap();
    let resume = irrigation.next_on("machinomy/irrigation/cmd/resume", DEADLINE).await.unwrap();
    assert_eq!(resume, json!({}));

    assert_well_behaved(&buyer, "weather-buyer").await;

    // The owner stops the buying; then every forecast bought is one sold, at its price.
    buyer.cli(&["plugin", "disable", "weather-buyer"]).await.unwrap().ok().unwrap();
    let (bought, sold) = wait_for("both books to agree", DEADLINE, async || {
        let approvals = approvals_of(&buyer, "plugin:weather-buyer").await;
        let settled = approvals.iter().all(|a| a.outcome.is_some());
        let bought = row(&spending(&buyer).await?, "plugin:weather-buyer");
        let sold = row(&spending(&station).await?, "device:weather-station");
        let forecasts = approvals.iter().filter(|a| paid(a)).count() as u64;
        Ok((settled && bought.0 == sold.1 && bought.2 == sold.2 && forecasts == bought.2).then_some((bought, sold)))
    })
    .await
    .unwrap();
    assert!(bought.2 >= 2, "at least the forecast with rain and the one without: {bought:?}");
    assert_eq!(bought, (u128::from(bought.2) * FORECAST, 0, bought.2));
    assert_eq!(sold, (0, u128::from(bought.2) * FORECAST, bought.2));
    assert_eq!(spending(&buyer).await.unwrap().total_paid.base_units(), bought.0);
    assert_eq!(spending(&station).await.unwrap().total_received.base_units(), bought.0);
    assert_eq!(channel_total(&buyer, &station_key, Role::Sender).await, bought.0);
    assert_eq!(channel_total(&station, &buyer_key, Role::Receiver).await, bought.0);
    // The irrigation was told each thing once.
    let commands: Vec<_> = irrigation.drain().await.into_iter().filter(|(topic, _)| topic.contains("/cmd/")).collect();
    assert!(commands.is_empty(), "{commands:?}");

    stop(&mut [&mut buyer, &mut station]).await;
}

// --- micro-insurance --------------------------------------------------------------------------

const COVERAGE: &str = "machinomy-plugins/micro-insurance/coverage";
/// Base units per tick.
const TICK: u128 = 1_000;

#[tokio::test]
async fn micro_insurance_streams_a_tick_to_the_insurer_hub_while_the_ebike_is_in_use() {
    let package = plugin_package("micro-insurance").unwrap();
    let mut insurer = peer_hub("insurer", &[], "").await;
    let insurer_key = identity(&insurer).await.unwrap();
    let (mut home, port) = home_hub("home", &insurer).await;
    let home_key = identity(&home).await.unwrap();
    wait_connected(&home, &insurer_key).await.unwrap();
    install(
        &home,
        &package,
        &[("insurer", &insurer_key.to_hex()), ("tick_ms", "200"), ("price_per_minute", &TICK.to_string())],
    )
    .await
    .unwrap();
    let mut ebike = Device::pair(&home, port, "ebike", &[COVERAGE]).await.unwrap();

    ebike.report(&home, json!({"in_use": true})).await.unwrap();
    let covered = ebike.next_on(COVERAGE, DEADLINE).await.unwrap();
    assert_eq!((covered["status"].as_str(), covered["ticks_paid"].as_u64()), (Some("covered"), Some(0)), "{covered}");
    let insurer_row = format!("peer:{}", home_key.to_hex());
    wait_for("three ticks at the insurer", DEADLINE, async || {
        Ok((row(&spending(&insurer).await?, &insurer_row).1 >= 3 * TICK).then_some(()))
    })
    .await
    .unwrap();

    // The ride ends: the cover stops, and once the last tick's answer is in, the plugin's count,
    // the home hub's books and the insurer's agree.
    ebike.report(&home, json!({"in_use": false})).await.unwrap();
    let mut latest = ebike.next_on(COVERAGE, DEADLINE).await.unwrap();
    while latest["status"] != "idle" {
        latest = ebike.next_on(COVERAGE, DEADLINE).await.unwrap();
    }
    // (A loop rather than `wait_for`: each look also reads the device's newest coverage.)
    let until = Instant::now() + DEADLINE;
    let ticks = loop {
        if let Some((_, newer)) = ebike.drain().await.into_iter().rev().find(|(topic, _)| topic == COVERAGE) {
            latest = newer;
        }
        let ticks = latest["ticks_paid"].as_u64().unwrap();
        let received = row(&spending(&insurer).await.unwrap(), &insurer_row).1;
        let paid_out = row(&spending(&home).await.unwrap(), "plugin:micro-insurance").0;
        let settled = approvals_of(&home, "plugin:micro-insurance").await.iter().all(|a| a.outcome.is_some());
        if settled && received == u128::from(ticks) * TICK && paid_out == received {
            break ticks;
        }
        assert!(
            Instant::now() < until,
            "gave up after {DEADLINE:?}: coverage {latest}, the insurer received {received}, the home hub paid {paid_out}"
        );
        tokio::time::sleep(POLL).await;
    };
    assert!(ticks >= 3, "{latest}");
    assert_eq!(latest["status"], "idle", "{latest}");
    assert_eq!(amount(&latest["paid"]).unwrap(), u128::from(ticks) * TICK, "{latest}");
    let total = u128::from(ticks) * TICK;
    let home_books = spending(&home).await.unwrap();
    let insurer_books = spending(&insurer).await.unwrap();
    assert_eq!(row(&home_books, "plugin:micro-insurance"), (total, 0, ticks), "{home_books:?}");
    assert_eq!(home_books.total_paid.base_units(), total);
    assert_eq!(row(&insurer_books, &insurer_row), (0, total, ticks), "{insurer_books:?}");
    assert_eq!(insurer_books.total_received.base_units(), total);
    assert_eq!(channel_total(&home, &insurer_key, Role::Sender).await, total);
    assert_eq!(channel_total(&insurer, &home_key, Role::Receiver).await, total);
    let approvals = approvals_of(&home, "plugin:micro-insurance").await;
    assert_eq!(approvals.len() as u64, ticks);
    assert!(approvals.iter().all(|a| paid(a) && a.request.amount.base_units() == TICK), "{approvals:?}");

    assert_well_behaved(&home, "micro-insurance").await;
    stop(&mut [&mut home, &mut insurer]).await;
}

// --- the CLI ----------------------------------------------------------------------------------

#[tokio::test]
async fn the_plugin_commands_install_list_show_disable_enable_upgrade_and_remove_a_real_plugin() {
    let package = plugin_package("rental-billing").unwrap();
    let package_arg = package.to_str().unwrap();
    let (builder, port) = TestHub::builder().name("home").embedded_mqtt().unwrap();
    let mut hub = builder.build().unwrap();
    hub.start().await.unwrap();
    let mut meter = Device::pair(&hub, port, "meter", &[]).await.unwrap();

    assert!(list(&hub).await.unwrap().is_empty());
    let installed = hub
        .cli(&["plugin", "install", package_arg, "--set", "bill_every_secs=1", "--set", "meter=meter"])
        .await
        .unwrap();
    assert!(installed.ok().unwrap().contains("rental-billing"), "{installed}");

    // Listed, and shown with the grants the owner approved by installing it.
    let listed = list(&hub).await.unwrap();
    let [plugin] = listed.as_slice() else { panic!("one plugin expected: {listed:?}") };
    assert_eq!((plugin.name.as_str(), plugin.version.as_str()), ("rental-billing", "0.1.0"));
    assert_eq!(plugin.state, PluginStateName::Enabled);
    let text = hub.cli(&["plugin", "list"]).await.unwrap();
    assert!(text.ok().unwrap().contains("rental-billing") && text.stdout.contains("0.1.0"), "{text}");
    let shown = show(&hub, "rental-billing").await.unwrap();
    assert_eq!(shown.grants.subscribe, ["machinomy/meter/state", "machinomy/meter/event/checkout"]);
    assert_eq!(shown.grants.publish, ["machinomy-plugins/rental-billing/statement"]);
    assert_eq!(shown.grants.devices, ["meter"]);
    assert!(shown.grants.invoice && !shown.grants.pay && shown.grants.budget.is_none(), "{shown:?}");
    assert_eq!(shown.config["bill_every_secs"], json!(1), "{shown:?}");
    assert!(shown.running, "{shown:?}");
    let text = hub.cli(&["plugin", "show", "rental-billing"]).await.unwrap();
    for grant in ["machinomy/meter/state", "machinomy-plugins/rental-billing/statement", "invoice"] {
        assert!(text.ok().unwrap().contains(grant), "{grant}: {text}");
    }

    // Running: its timer and the meter's messages are events.
    meter.report(&hub, json!({"energy_wh": 10})).await.unwrap();
    wait_for("events", DEADLINE, async || Ok((events(&hub, "rental-billing").await? >= 3).then_some(())))
        .await
        .unwrap();

    // Disabled: no instance, no timers, no subscriptions, and a meter message is no event.
    hub.cli(&["plugin", "disable", "rental-billing"]).await.unwrap().ok().unwrap();
    let disabled = view(&hub, "rental-billing").await.unwrap();
    assert_eq!(disabled.state, PluginStateName::Disabled);
    assert!(!disabled.running && disabled.timers == 0 && disabled.subscriptions.is_empty(), "{disabled:?}");
    meter.report(&hub, json!({"energy_wh": 20})).await.unwrap();
    assert_eq!(show(&hub, "rental-billing").await.unwrap().events, disabled.events);

    // Enabled again: it starts (one event) and hears the meter again.
    hub.cli(&["plugin", "enable", "rental-billing"]).await.unwrap().ok().unwrap();
    let enabled = view(&hub, "rental-billing").await.unwrap();
    assert_eq!(enabled.state, PluginStateName::Enabled);
    assert!(enabled.running && enabled.events > disabled.events, "{enabled:?}");
    assert_eq!(enabled.subscriptions, shown.grants.subscribe);
    meter.report(&hub, json!({"energy_wh": 30})).await.unwrap();
    wait_for("events after enabling", DEADLINE, async || {
        Ok((events(&hub, "rental-billing").await? >= disabled.events + 3).then_some(()))
    })
    .await
    .unwrap();

    // The same package again asks for nothing more: it is ready at once, still running, with
    // the owner's settings.
    let upgraded: PluginInstalled =
        hub.cli(&["plugin", "upgrade", package_arg, "--json"]).await.unwrap().json().unwrap();
    assert_eq!(upgraded.status, InstallStatus::Ready);
    assert!(upgraded.plugin.running && upgraded.plugin.pending_upgrade.is_none(), "{upgraded:?}");
    assert_eq!(upgraded.plugin.config["bill_every_secs"], json!(1), "{upgraded:?}");

    // An older version is a rollback: accepted, and said to be one; a setting changes with it
    // while the others carry over.
    let older = tempfile::tempdir().unwrap();
    let manifest = std::fs::read_to_string(package.join("plugin.toml")).unwrap();
    let manifest = manifest.replacen("version = \"0.1.0\"", "version = \"0.0.9\"", 1);
    std::fs::write(older.path().join("plugin.toml"), manifest).unwrap();
    std::fs::copy(package.join("rental-billing.wasm"), older.path().join("rental-billing.wasm")).unwrap();
    let older_arg = older.path().to_str().unwrap();
    let text = hub.cli(&["plugin", "upgrade", older_arg, "--set", "bill_every_secs=2"]).await.unwrap();
    assert!(
        text.ok().unwrap().starts_with("downgraded rental-billing from 0.1.0 to 0.0.9, an older version"),
        "{text}"
    );
    let rolled_back = show(&hub, "rental-billing").await.unwrap();
    assert_eq!(rolled_back.version, "0.0.9");
    assert_eq!((&rolled_back.config["bill_every_secs"], &rolled_back.config["meter"]), (&json!(2), &json!("meter")));

    // Settings change in place: same version, a restart (one more event), the storage kept;
    // `--unset` goes back to the manifest's value.
    let answer =
        hub.cli(&["plugin", "config", "rental-billing", "--unset", "bill_every_secs", "--set", "renter="]).await;
    let answer = answer.unwrap();
    let text = answer.ok().unwrap();
    assert!(text.starts_with("changed the settings of rental-billing; it restarted with them\n"), "{text}");
    let configured = show(&hub, "rental-billing").await.unwrap();
    assert_eq!(configured.version, "0.0.9");
    assert_eq!((&configured.config["bill_every_secs"], &configured.config["renter"]), (&json!(3600), &json!("")));
    let noted = configured.recent.iter().rev().find(|line| line.level == "hub").map(|line| line.text.as_str());
    assert_eq!(noted, Some("the owner changed bill_every_secs; the plugin restarts to read it"), "{configured:?}");
    // Its storage is kept: the stay it stored goes on rather than starting again.
    assert!(configured.running && configured.storage_used > 0, "{configured:?}");
    let stays = configured.recent.iter().filter(|line| line.text.starts_with("stay started")).count();
    assert_eq!(stays, 1, "{configured:?}");
    let answer = hub.cli(&["plugin", "config", "rental-billing"]).await.unwrap();
    let shown = answer.ok().unwrap();
    assert!(shown.starts_with("config") && shown.contains("\"bill_every_secs\": 3600"), "{shown}");
    let refused = hub.cli(&["plugin", "config", "rental-billing", "--set", "a=1", "--unset", "a"]).await.unwrap();
    assert!(refused.error_line().unwrap().contains("--set and --unset both name \"a\""), "{refused}");

    // Removed: gone from the list, and `show` fails with one line.
    hub.cli(&["plugin", "remove", "rental-billing"]).await.unwrap().ok().unwrap();
    assert!(list(&hub).await.unwrap().is_empty());
    let gone = hub.cli(&["plugin", "show", "rental-billing"]).await.unwrap();
    assert!(gone.error_line().unwrap().contains("rental-billing"), "{gone}");

    // A package without its module: one line saying so, a non-zero exit, nothing installed.
    let broken = tempfile::tempdir().unwrap();
    std::fs::copy(package.join("plugin.toml"), broken.path().join("plugin.toml")).unwrap();
    let refused = hub.cli(&["plugin", "install", broken.path().to_str().unwrap()]).await.unwrap();
    assert!(refused.error_line().unwrap().contains("rental-billing.wasm"), "{refused}");
    assert!(list(&hub).await.unwrap().is_empty());

    // A manifest the hub refuses is named by its path, as the CLI's own messages name it.
    let typo = tempfile::tempdir().unwrap();
    std::fs::write(typo.path().join("plugin.toml"), "name = \"typo\"\nversion = \"1.0.0\"\nsubscibe = 1\n").unwrap();
    std::fs::copy(package.join("rental-billing.wasm"), typo.path().join("typo.wasm")).unwrap();
    let refused = hub.cli(&["plugin", "install", typo.path().to_str().unwrap()]).await.unwrap();
    let line = refused.error_line().unwrap();
    let named = format!("{}: ", typo.path().join("plugin.toml").display());
    assert!(line.contains(&named) && line.contains("subscibe"), "{refused}");

    assert!(hub.stop().await.unwrap().success());
}
