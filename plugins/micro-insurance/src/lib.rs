//! Micro-insurance: pays an insurer per minute while a device (an e-bike, a drill …) is in use,
//! as a payment stream.
//!
//! - The device reports `{"in_use": true|false}` in its state. While it is in use, a repeating
//!   timer pays one `stream_tick(insurer, price_per_minute, "cover <device>")` every `tick_ms`
//!   (in arrears: the first tick is paid one period after use starts). When it stops being in
//!   use, the timer is cancelled.
//! - After each tick's outcome (and when cover starts or stops) it publishes
//!   `{"device":…,"in_use":…,"ticks_paid":n,"paid":"…","status":…}` on
//!   `machinomy-plugins/micro-insurance/coverage`; the totals count the current use. Status is
//!   `covered`, `pending` (a tick waits for the owner's approval), `uncovered` or `idle`.
//! - A denied or failed tick ends the cover (timer cancelled, `uncovered`) until the device
//!   reports again.

// `deny`, not `forbid`: export_plugin! expands to the wasm exports, which allow it locally.
#![deny(unsafe_code)]
#![warn(rust_2018_idioms, missing_debug_implementations)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

use machinomy_sdk::json::{self, Value};
use machinomy_sdk::{device, error, info, kv, mqtt, timer, warn};
use machinomy_sdk::{money, Amount, Error, Plugin, RequestId, SpendStatus, TimerId};

/// Where coverage is published.
pub const COVERAGE_TOPIC: &str = "machinomy-plugins/micro-insurance/coverage";
const STATE_KEY: &str = "state";
/// Ticks awaiting an outcome that are remembered; older ones are dropped (logged).
const MAX_OPEN_TICKS: usize = 64;

/// The plugin. It only caches its settings; its state lives in kv.
#[derive(Debug, Default)]
pub struct MicroInsurance {
    settings: Option<Settings>,
}

machinomy_sdk::export_plugin!(MicroInsurance);

#[derive(Clone, Debug)]
struct Settings {
    device: String,
    insurer: String,
    price_per_minute: Option<Amount>,
    tick_ms: u64,
}

impl Settings {
    fn load() -> Settings {
        let config = machinomy_sdk::config();
        let text = |key: &str, default: &str| config.get(key).and_then(Value::as_str).unwrap_or(default).to_string();
        let tick_ms = match config.get("tick_ms").map(Value::as_u64) {
            None => 60_000,
            Some(Some(ms)) if ms > 0 => ms,
            Some(_) => {
                warn!("config tick_ms must be a positive integer; using 60000");
                60_000
            }
        };
        Settings {
            device: text("device", "ebike"),
            insurer: text("insurer", ""),
            price_per_minute: config.get("price_per_minute").and_then(Value::as_amount),
            tick_ms,
        }
    }

    fn state_topic(&self) -> String {
        format!("machinomy/{}/state", self.device)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    /// Not in use.
    Idle,
    /// In use and paying.
    Covered,
    /// In use, but a tick waits for the owner's approval.
    Pending,
    /// In use and not paying (a tick was denied or failed, or the plugin cannot pay).
    Uncovered,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Idle => "idle",
            Status::Covered => "covered",
            Status::Pending => "pending",
            Status::Uncovered => "uncovered",
        }
    }

    fn parse(s: &str) -> Option<Status> {
        [Status::Idle, Status::Covered, Status::Pending, Status::Uncovered].into_iter().find(|st| st.as_str() == s)
    }
}

/// Everything the plugin remembers, as one kv record.
#[derive(Clone, Debug, PartialEq, Eq)]
struct State {
    timer: Option<i64>,
    in_use: bool,
    status: Status,
    ticks_paid: u64,
    paid: Amount,
    /// Ticks sent and not yet paid, denied or failed: (request, price).
    open_ticks: Vec<(i64, Amount)>,
}

impl Default for State {
    fn default() -> State {
        State {
            timer: None,
            in_use: false,
            status: Status::Idle,
            ticks_paid: 0,
            paid: Amount::ZERO,
            open_ticks: Vec::new(),
        }
    }
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

    fn from_json(v: &Value) -> Option<State> {
        let mut open_ticks = Vec::new();
        for t in v.get("open_ticks")?.as_array()? {
            open_ticks.push((t.at(0)?.as_i64()?, t.at(1)?.as_amount()?));
        }
        Some(State {
            timer: v.get("timer").and_then(Value::as_i64),
            in_use: v.get("in_use")?.as_bool()?,
            status: Status::parse(v.get("status")?.as_str()?)?,
            ticks_paid: v.get("ticks_paid")?.as_u64()?,
            paid: v.get("paid")?.as_amount()?,
            open_ticks,
        })
    }

    fn save(&self) {
        let open_ticks: Vec<Value> = self
            .open_ticks
            .iter()
            .map(|(request, price)| Value::from(vec![Value::from(*request), Value::from(*price)]))
            .collect();
        let state = Value::object()
            .with("timer", self.timer)
            .with("in_use", self.in_use)
            .with("status", self.status.as_str())
            .with("ticks_paid", self.ticks_paid)
            .with("paid", self.paid)
            .with("open_ticks", open_ticks);
        if let Err(e) = kv::set_json(STATE_KEY, &state) {
            error!("cannot store the state: {e}");
        }
    }

    fn stop_timer(&mut self) {
        if let Some(id) = self.timer.take() {
            let _ = timer::cancel(TimerId(id));
        }
    }
}

impl MicroInsurance {
    fn settings(&mut self) -> Settings {
        self.settings.get_or_insert_with(Settings::load).clone()
    }

    fn publish(&self, settings: &Settings, st: &State) {
        let coverage = Value::object()
            .with("device", settings.device.as_str())
            .with("in_use", st.in_use)
            .with("ticks_paid", st.ticks_paid)
            .with("paid", st.paid)
            .with("status", st.status.as_str());
        if let Err(e) = mqtt::publish_json(COVERAGE_TOPIC, &coverage, false) {
            error!("cannot publish the coverage: {e}");
        }
    }

    /// Starts paying for cover (the timer), if the plugin can pay.
    fn start_cover(&self, settings: &Settings, st: &mut State) {
        st.stop_timer();
        if settings.insurer.is_empty() || settings.price_per_minute.is_none() {
            error!("config insurer (hub key) and price_per_minute (base units) must be set to pay for cover");
            st.status = Status::Uncovered;
            return;
        }
        match timer::every(settings.tick_ms) {
            Ok(id) => {
                st.timer = Some(id.0);
                st.status = Status::Covered;
                info!("{} in use: cover started", settings.device);
            }
            Err(e) => {
                error!("cannot set the tick timer: {e}");
                st.status = Status::Uncovered;
            }
        }
    }

    /// Ends the cover until the device reports again.
    fn end_cover(&self, settings: &Settings, st: &mut State, why: &str) {
        warn!("cover for {} ended: {why}", settings.device);
        st.stop_timer();
        st.status = Status::Uncovered;
        self.publish(settings, st);
    }

    /// The device reported whether it is in use.
    fn report(&self, settings: &Settings, st: &mut State, in_use: bool) {
        let was_in_use = st.in_use;
        st.in_use = in_use;
        if in_use {
            if !was_in_use {
                // A new use: its own totals.
                st.ticks_paid = 0;
                st.paid = Amount::ZERO;
            }
            // Already paying: another report changes nothing. Otherwise (a new use, or cover
            // that ended) start paying again.
            if st.timer.is_none() || !matches!(st.status, Status::Covered | Status::Pending) {
                self.start_cover(settings, st);
                self.publish(settings, st);
            }
        } else if was_in_use || st.timer.is_some() {
            st.stop_timer();
            st.status = Status::Idle;
            info!("{} no longer in use: cover stopped", settings.device);
            self.publish(settings, st);
        }
    }
}

/// The `in_use` of a device state.
fn in_use(payload: &[u8]) -> Result<bool, String> {
    let state = json::parse(payload).map_err(|e| e.to_string())?;
    state.get("in_use").and_then(Value::as_bool).ok_or_else(|| "no boolean in_use".to_string())
}

impl Plugin for MicroInsurance {
    fn on_start(&mut self) {
        let settings = self.settings();
        let topic = settings.state_topic();
        if let Err(e) = mqtt::subscribe(&topic) {
            error!("cannot subscribe to {topic}: {e}");
        }
        let mut st = State::load();
        // on_start runs at every hub start: replace the timer of a running cover rather than
        // trusting the host kept it (cancelling one it forgot is harmless).
        if st.timer.is_some() {
            self.start_cover(&settings, &mut st);
        }
        // The device's current state, in case its retained message is not delivered again.
        match device::state(&settings.device) {
            Ok(Some(state)) => match state.get("in_use").and_then(Value::as_bool) {
                Some(in_use) => self.report(&settings, &mut st, in_use),
                None => warn!("{}'s state has no boolean in_use", settings.device),
            },
            Ok(None) => {}
            Err(e) => warn!("cannot read {}'s state: {e}", settings.device),
        }
        st.save();
    }

    fn on_message(&mut self, topic: &str, payload: &[u8]) {
        let settings = self.settings();
        if topic != settings.state_topic() {
            return;
        }
        match in_use(payload) {
            Ok(in_use) => {
                let mut st = State::load();
                self.report(&settings, &mut st, in_use);
                st.save();
            }
            Err(e) => warn!("ignored a state of {}: {e}", settings.device),
        }
    }

    fn on_timer(&mut self, timer: TimerId) {
        let settings = self.settings();
        let mut st = State::load();
        if st.timer != Some(timer.0) {
            return; // a timer from before a restart
        }
        let price = match settings.price_per_minute {
            Some(price) if !settings.insurer.is_empty() => price,
            _ => return, // start_cover refuses to start without them
        };
        let memo = format!("cover {}", settings.device);
        match money::stream_tick(&settings.insurer, price, &memo) {
            Ok(request) => {
                if st.open_ticks.len() >= MAX_OPEN_TICKS {
                    st.open_ticks.remove(0);
                    warn!("forgot the oldest unanswered tick to keep the state small");
                }
                st.open_ticks.push((request.0, price));
            }
            // A full queue is momentary: skip this tick, keep the cover.
            Err(Error::Busy) => warn!("the hub is busy; tick skipped"),
            Err(e) => self.end_cover(&settings, &mut st, &format!("cannot pay the insurer ({e})")),
        }
        st.save();
    }

    fn on_spend_result(&mut self, request: RequestId, status: SpendStatus, detail: &[u8]) {
        let settings = self.settings();
        let mut st = State::load();
        let index = match st.open_ticks.iter().position(|(r, _)| *r == request.0) {
            Some(index) => index,
            None => return,
        };
        let price = st.open_ticks.get(index).map_or(Amount::ZERO, |(_, price)| *price);
        if status.is_final() {
            st.open_ticks.remove(index);
        }
        match status {
            SpendStatus::Paid => {
                st.ticks_paid += 1;
                st.paid = st.paid.saturating_add(price);
                if st.status == Status::Pending {
                    st.status = Status::Covered;
                }
                self.publish(&settings, &st);
            }
            SpendStatus::Pending => {
                if st.status == Status::Covered {
                    st.status = Status::Pending;
                }
                self.publish(&settings, &st);
            }
            SpendStatus::Denied | SpendStatus::Failed => {
                let why = format!("a tick was {status}: {}", String::from_utf8_lossy(detail));
                if st.timer.is_some() {
                    self.end_cover(&settings, &mut st, &why);
                } else {
                    warn!("{why}");
                }
            }
        }
        st.save();
    }
}

#[cfg(test)]
mod tests;
