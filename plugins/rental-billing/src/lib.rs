//! Rental billing: bills the renter of a home (or a room, a charger …) for the energy its meter
//! counts and for the time of the stay, by invoicing the renter's hub.
//!
//! - A stay starts at the first meter reading after the plugin starts (the reading is the
//!   baseline). After a checkout, a new stay starts at the first reading that differs from the
//!   reading at checkout (the meter's retained state, delivered again at each hub start, must
//!   not open a stay for an empty home).
//! - Every `bill_every_secs` and at the meter's `event/checkout` it bills the energy since the
//!   last bill (`Wh × price_per_kwh / 1000`) plus the time since the last bill
//!   (`ms × price_per_hour / 3 600 000`), in integers; what a division leaves over (a fraction of
//!   a base unit) is carried to the next bill, so nothing is lost to rounding. Zero bills are not
//!   sent.
//! - Each bill is an `invoice` to the renter and a statement on
//!   `machinomy-plugins/rental-billing/statement`; the renter's answer (paid, pending, denied,
//!   failed) is published there too. A denied or failed bill is added to that renter's next bill.
//! - A checkout bills what is due and ends the stay.
//!
//! Everything it must remember is one JSON record in kv, written at the end of each event.

// `deny`, not `forbid`: export_plugin! expands to the wasm exports, which allow it locally.
#![deny(unsafe_code)]
#![warn(rust_2018_idioms, missing_debug_implementations)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

use machinomy_sdk::json::{self, Value};
use machinomy_sdk::{device, error, info, kv, mqtt, timer, warn};
use machinomy_sdk::{money, Amount, Plugin, RequestId, SpendStatus, TimerId};

/// Where statements and payment outcomes are published.
pub const STATEMENT_TOPIC: &str = "machinomy-plugins/rental-billing/statement";
/// The kv key of the plugin's state.
const STATE_KEY: &str = "state";
/// Bills awaiting the renter's answer that are remembered; older ones are dropped (logged).
const MAX_OPEN_BILLS: usize = 100;
/// Energy prices are per kWh and readings in Wh.
const WH_PER_KWH: u128 = 1000;
/// Time prices are per hour and the clock in ms.
const MS_PER_HOUR: u128 = 3_600_000;

/// The plugin. It only caches its settings; its state lives in kv.
#[derive(Debug, Default)]
pub struct RentalBilling {
    settings: Option<Settings>,
}

machinomy_sdk::export_plugin!(RentalBilling);

/// The `[config]` of the manifest, read once per instance.
#[derive(Clone, Debug)]
struct Settings {
    meter: String,
    renter: String,
    price_per_kwh: Option<Amount>,
    price_per_hour: Option<Amount>,
    bill_every_ms: u64,
}

impl Settings {
    fn load() -> Settings {
        let config = machinomy_sdk::config();
        let text = |key: &str, default: &str| config.get(key).and_then(Value::as_str).unwrap_or(default).to_string();
        let bill_every_secs = match config.get("bill_every_secs").map(Value::as_u64) {
            None => 3600,
            Some(Some(secs)) if secs > 0 => secs,
            Some(_) => {
                warn!("bill_every_secs must be a positive integer; billing hourly");
                3600
            }
        };
        Settings {
            meter: text("meter", "meter"),
            renter: text("renter", ""),
            price_per_kwh: config.get("price_per_kwh").and_then(Value::as_amount),
            price_per_hour: config.get("price_per_hour").and_then(Value::as_amount),
            bill_every_ms: bill_every_secs.saturating_mul(1000),
        }
    }

    fn state_topic(&self) -> String {
        format!("machinomy/{}/state", self.meter)
    }

    fn checkout_topic(&self) -> String {
        format!("machinomy/{}/event/checkout", self.meter)
    }
}

/// An open stay.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Stay {
    /// The meter reading the last bill went up to (at first, the baseline).
    billed_wh: u64,
    /// The latest reading.
    reading_wh: u64,
    /// When the last bill was made (at first, when the stay started).
    billed_ms: u64,
    /// What the last energy bill left over, in thousandths of a base unit (< 1000).
    carry_energy: u128,
    /// What the last time bill left over, in 1/3 600 000 of a base unit.
    carry_time: u128,
}

/// A bill sent and not yet paid, denied or failed.
#[derive(Clone, Debug, PartialEq, Eq)]
struct OpenBill {
    request: i64,
    bill: u64,
    renter: String,
    amount: Amount,
}

/// Everything the plugin remembers, stored as one kv record so it changes all at once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct State {
    timer: Option<i64>,
    stay: Option<Stay>,
    /// The reading at the last checkout: the same reading does not open a new stay.
    checkout_wh: Option<u64>,
    /// The number of the last bill sent.
    bill_no: u64,
    /// Unpaid amounts (denied, failed, or not sent) per renter, added to their next bill.
    outstanding: Vec<(String, Amount)>,
    open_bills: Vec<OpenBill>,
}

fn u64_at(v: &Value, key: &str) -> Option<u64> {
    v.get(key).and_then(Value::as_u64)
}

fn u128_at(v: &Value, key: &str) -> Option<u128> {
    v.get(key).and_then(Value::as_amount).map(|a| a.0)
}

impl State {
    fn load() -> State {
        match kv::get_json(STATE_KEY) {
            Ok(Some(v)) => State::from_json(&v).unwrap_or_else(|| {
                error!("the stored state is unreadable; starting afresh");
                State::default()
            }),
            Ok(None) => State::default(),
            Err(e) => {
                error!("cannot read the stored state ({e}); starting afresh");
                State::default()
            }
        }
    }

    fn save(&self) {
        if let Err(e) = kv::set_json(STATE_KEY, &self.to_json()) {
            error!("cannot store the state: {e}");
        }
    }

    fn from_json(v: &Value) -> Option<State> {
        let stay = match v.get("stay") {
            None | Some(Value::Null) => None,
            Some(s) => Some(Stay {
                billed_wh: u64_at(s, "billed_wh")?,
                reading_wh: u64_at(s, "reading_wh")?,
                billed_ms: u64_at(s, "billed_ms")?,
                carry_energy: u128_at(s, "carry_energy")?,
                carry_time: u128_at(s, "carry_time")?,
            }),
        };
        let mut outstanding = Vec::new();
        for (renter, amount) in v.get("outstanding")?.as_object()? {
            outstanding.push((renter.clone(), amount.as_amount()?));
        }
        let mut open_bills = Vec::new();
        for b in v.get("open_bills")?.as_array()? {
            open_bills.push(OpenBill {
                request: b.get("request")?.as_i64()?,
                bill: u64_at(b, "bill")?,
                renter: b.get("renter")?.as_str()?.to_string(),
                amount: b.get("amount")?.as_amount()?,
            });
        }
        Some(State {
            timer: v.get("timer").and_then(Value::as_i64),
            stay,
            checkout_wh: u64_at(v, "checkout_wh"),
            bill_no: u64_at(v, "bill_no")?,
            outstanding,
            open_bills,
        })
    }

    fn to_json(&self) -> Value {
        let stay = self.stay.as_ref().map(|s| {
            Value::object()
                .with("billed_wh", s.billed_wh)
                .with("reading_wh", s.reading_wh)
                .with("billed_ms", s.billed_ms)
                .with("carry_energy", Amount(s.carry_energy))
                .with("carry_time", Amount(s.carry_time))
        });
        let outstanding = Value::Object(self.outstanding.iter().map(|(r, a)| (r.clone(), Value::from(*a))).collect());
        let open_bills = self
            .open_bills
            .iter()
            .map(|b| {
                Value::object()
                    .with("request", b.request)
                    .with("bill", b.bill)
                    .with("renter", b.renter.as_str())
                    .with("amount", b.amount)
            })
            .collect::<Vec<_>>();
        Value::object()
            .with("timer", self.timer)
            .with("stay", stay)
            .with("checkout_wh", self.checkout_wh)
            .with("bill_no", self.bill_no)
            .with("outstanding", outstanding)
            .with("open_bills", open_bills)
    }

    fn outstanding(&self, renter: &str) -> Amount {
        self.outstanding.iter().find(|(r, _)| r == renter).map_or(Amount::ZERO, |(_, a)| *a)
    }

    fn set_outstanding(&mut self, renter: &str, amount: Amount) {
        self.outstanding.retain(|(r, _)| r != renter);
        if !amount.is_zero() {
            self.outstanding.push((renter.to_string(), amount));
        }
    }
}

/// `value × price / per`, and what is left over added to `carry`: `(amount, new carry)`.
/// `None` on overflow.
fn charge(value: u64, price: Amount, carry: u128, per: u128) -> Option<(Amount, u128)> {
    let total = u128::from(value).checked_mul(price.0)?.checked_add(carry)?;
    Some((Amount(total / per), total % per))
}

fn publish(value: &Value) {
    if let Err(e) = mqtt::publish_json(STATEMENT_TOPIC, value, false) {
        error!("cannot publish on {STATEMENT_TOPIC}: {e}");
    }
}

impl RentalBilling {
    fn settings(&mut self) -> Settings {
        self.settings.get_or_insert_with(Settings::load).clone()
    }

    /// A new meter reading: starts a stay, or moves the open one's reading forward.
    fn reading(&self, st: &mut State, wh: u64) {
        match st.stay.as_mut() {
            Some(stay) => {
                if wh < stay.reading_wh {
                    warn!("the meter went back from {} Wh to {wh} Wh; billing from the new reading", stay.reading_wh);
                    stay.billed_wh = stay.billed_wh.min(wh);
                }
                stay.reading_wh = wh;
            }
            None if st.checkout_wh == Some(wh) => {}
            None => {
                info!("stay started at {wh} Wh");
                st.checkout_wh = None;
                st.stay = Some(Stay {
                    billed_wh: wh,
                    reading_wh: wh,
                    billed_ms: timer::now_ms(),
                    carry_energy: 0,
                    carry_time: 0,
                });
            }
        }
    }

    /// Bills what the open stay owes now (with what the renter still owes).
    fn bill(&self, settings: &Settings, st: &mut State) {
        let stay = match st.stay.clone() {
            Some(stay) => stay,
            None => return,
        };
        if settings.renter.is_empty() {
            return error!("config renter is empty: set the renter's hub key to bill the stay");
        }
        let (price_per_kwh, price_per_hour) = match (settings.price_per_kwh, settings.price_per_hour) {
            (Some(kwh), Some(hour)) => (kwh, hour),
            _ => return error!("config price_per_kwh and price_per_hour must be decimal amounts of base units"),
        };
        let now = timer::now_ms();
        let energy_wh = stay.reading_wh.saturating_sub(stay.billed_wh);
        let ms = now.saturating_sub(stay.billed_ms);
        let outstanding = st.outstanding(&settings.renter);
        let amounts = charge(energy_wh, price_per_kwh, stay.carry_energy, WH_PER_KWH).and_then(|(energy, carry_e)| {
            let (time, carry_t) = charge(ms, price_per_hour, stay.carry_time, MS_PER_HOUR)?;
            Some((energy.checked_add(time)?.checked_add(outstanding)?, carry_e, carry_t))
        });
        let (amount, carry_energy, carry_time) = match amounts {
            Some(amounts) => amounts,
            None => return error!("the bill overflows; check the prices"),
        };
        // From here the stay is billed up to now; the amount is either invoiced or kept as
        // outstanding, so nothing is billed twice or lost.
        st.stay = Some(Stay { billed_wh: stay.reading_wh, billed_ms: now, carry_energy, carry_time, ..stay });
        if amount.is_zero() {
            return;
        }
        let bill = st.bill_no + 1;
        let memo = format!("bill {bill}: {energy_wh} Wh, {} min", ms / 60_000);
        match money::invoice(&settings.renter, amount, &memo) {
            Ok(request) => {
                st.bill_no = bill;
                st.set_outstanding(&settings.renter, Amount::ZERO);
                if st.open_bills.len() >= MAX_OPEN_BILLS {
                    let dropped = st.open_bills.remove(0);
                    warn!("forgot bill {} (no answer yet) to keep the state small", dropped.bill);
                }
                st.open_bills.push(OpenBill { request: request.0, bill, renter: settings.renter.clone(), amount });
                info!("bill {bill}: invoiced {amount} for {energy_wh} Wh and {ms} ms");
                let mut statement = Value::object()
                    .with("bill", bill)
                    .with("energy_wh", energy_wh)
                    .with("ms", ms)
                    .with("amount", amount)
                    .with("status", "invoiced");
                if !outstanding.is_zero() {
                    statement.insert("outstanding", outstanding);
                }
                publish(&statement);
            }
            Err(e) => {
                error!("cannot invoice the renter ({e}); {amount} carried to the next bill");
                st.set_outstanding(&settings.renter, amount);
            }
        }
    }

    fn checkout(&self, settings: &Settings, st: &mut State) {
        let reading = match &st.stay {
            Some(stay) => stay.reading_wh,
            None => return info!("checkout without an open stay"),
        };
        self.bill(settings, st);
        info!("stay ended at {reading} Wh");
        st.stay = None;
        st.checkout_wh = Some(reading);
    }
}

/// The `energy_wh` of a meter state or checkout event.
fn energy_wh(payload: &[u8]) -> Result<Option<u64>, String> {
    let value = json::parse(payload).map_err(|e| e.to_string())?;
    if value.as_object().is_none() {
        return Err("not a JSON object".into());
    }
    match value.get("energy_wh") {
        None => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| "energy_wh is not a whole number of Wh".into()),
    }
}

impl Plugin for RentalBilling {
    fn on_start(&mut self) {
        let settings = self.settings();
        for topic in [settings.state_topic(), settings.checkout_topic()] {
            if let Err(e) = mqtt::subscribe(&topic) {
                error!("cannot subscribe to {topic}: {e}");
            }
        }
        let mut st = State::load();
        // on_start runs at every hub start: replace the bill timer rather than stacking timers
        // (cancelling one the host already forgot is harmless).
        if let Some(old) = st.timer.take() {
            let _ = timer::cancel(TimerId(old));
        }
        match timer::every(settings.bill_every_ms) {
            Ok(id) => st.timer = Some(id.0),
            Err(e) => error!("cannot set the bill timer: {e}"),
        }
        // The meter's current state, in case its retained message is not delivered again.
        match device::state(&settings.meter) {
            Ok(Some(state)) => match state.get("energy_wh").and_then(Value::as_u64) {
                Some(wh) => self.reading(&mut st, wh),
                None => warn!("the meter's state has no energy_wh"),
            },
            Ok(None) => {}
            Err(e) => warn!("cannot read the meter's state: {e}"),
        }
        st.save();
    }

    fn on_message(&mut self, topic: &str, payload: &[u8]) {
        let settings = self.settings();
        let is_checkout = topic == settings.checkout_topic();
        if topic != settings.state_topic() && !is_checkout {
            return;
        }
        let reading = match energy_wh(payload) {
            Ok(reading) => reading,
            Err(e) if is_checkout => {
                warn!("checkout event is not JSON ({e}); checking out at the last reading");
                None
            }
            Err(e) => return warn!("ignored a meter state: {e}"),
        };
        let mut st = State::load();
        if is_checkout {
            // A checkout event may carry the final reading; it must not open a stay.
            if let (Some(wh), Some(_)) = (reading, &st.stay) {
                self.reading(&mut st, wh);
            }
            self.checkout(&settings, &mut st);
        } else {
            match reading {
                Some(wh) => self.reading(&mut st, wh),
                None => return warn!("ignored a meter state without energy_wh"),
            }
        }
        st.save();
    }

    fn on_timer(&mut self, timer: TimerId) {
        let settings = self.settings();
        let mut st = State::load();
        if st.timer != Some(timer.0) {
            return; // a timer from before a restart
        }
        self.bill(&settings, &mut st);
        st.save();
    }

    fn on_spend_result(&mut self, request: RequestId, status: SpendStatus, detail: &[u8]) {
        let mut st = State::load();
        let index = match st.open_bills.iter().position(|b| b.request == request.0) {
            Some(index) => index,
            None => return,
        };
        let open = match st.open_bills.get(index) {
            Some(open) => open.clone(),
            None => return,
        };
        match status {
            SpendStatus::Paid => info!("bill {} paid", open.bill),
            SpendStatus::Pending => info!("bill {} awaits the renter's approval", open.bill),
            SpendStatus::Denied | SpendStatus::Failed => {
                let reason = String::from_utf8_lossy(detail);
                warn!("bill {} {status} ({reason}); {} carried to the next bill", open.bill, open.amount);
                let owed = st.outstanding(&open.renter).saturating_add(open.amount);
                st.set_outstanding(&open.renter, owed);
            }
        }
        if status.is_final() {
            st.open_bills.remove(index);
        }
        publish(&Value::object().with("bill", open.bill).with("amount", open.amount).with("status", status.as_str()));
        st.save();
    }
}

#[cfg(test)]
mod tests;
