//! Weather buyer: buys a rain forecast from a peer's weather station every `every_secs`, and
//! pauses the irrigation when rain is likely.
//!
//! - At start (each hub start) it replaces its repeating timer and buys once; then it buys at
//!   every tick: `call_service(service, "{}", max_price)`.
//! - A paid call's answer is the station's state, e.g. `{"rain_probability": 80, ...}`. At or
//!   above `rain_threshold` percent it publishes `machinomy/<irrigation>/cmd/pause` with
//!   `{"reason":"rain","rain_probability":80}`, below it `machinomy/<irrigation>/cmd/resume` with
//!   `{}` — only when the decision differs from the last one sent (kept in kv), so the
//!   irrigation is not flooded with commands.
//! - One purchase at a time: while a call is unanswered (younger than one period), or waits for
//!   the owner's approval (up to a day), no other is made, so restarts and slow approvals do not
//!   stack up purchases.

// `deny`, not `forbid`: export_plugin! expands to the wasm exports, which allow it locally.
#![deny(unsafe_code)]
#![warn(rust_2018_idioms, missing_debug_implementations)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

use machinomy_sdk::json::{self, Value};
use machinomy_sdk::{debug, error, info, kv, mqtt, timer, warn};
use machinomy_sdk::{money, Amount, Plugin, RequestId, SpendStatus, TimerId};

const STATE_KEY: &str = "state";
/// How long a purchase waiting for the owner's approval holds back the next one.
const MAX_PENDING_MS: u64 = 24 * 3_600_000;

/// The plugin. It only caches its settings; its state lives in kv.
#[derive(Debug, Default)]
pub struct WeatherBuyer {
    settings: Option<Settings>,
}

machinomy_sdk::export_plugin!(WeatherBuyer);

#[derive(Clone, Debug)]
struct Settings {
    service: String,
    max_price: Option<Amount>,
    every_ms: u64,
    irrigation: String,
    rain_threshold: f64,
}

impl Settings {
    fn load() -> Settings {
        let config = machinomy_sdk::config();
        let text = |key: &str, default: &str| config.get(key).and_then(Value::as_str).unwrap_or(default).to_string();
        let positive = |key: &str, default: u64| match config.get(key).map(Value::as_u64) {
            None => default,
            Some(Some(n)) if n > 0 => n,
            Some(_) => {
                warn!("config {key} must be a positive integer; using {default}");
                default
            }
        };
        let every_secs = positive("every_secs", 3600);
        Settings {
            service: text("service", "weather.forecast"),
            max_price: config.get("max_price").and_then(Value::as_amount),
            every_ms: every_secs.saturating_mul(1000),
            irrigation: text("irrigation", "irrigation"),
            rain_threshold: positive("rain_threshold", 60) as f64,
        }
    }
}

/// A purchase not yet answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct InFlight {
    request: i64,
    at_ms: u64,
    pending: bool,
}

/// What the irrigation was last told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Decision {
    Pause,
    Resume,
}

impl Decision {
    fn as_str(self) -> &'static str {
        match self {
            Decision::Pause => "pause",
            Decision::Resume => "resume",
        }
    }
}

/// Everything the plugin remembers, as one kv record.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct State {
    timer: Option<i64>,
    in_flight: Option<InFlight>,
    decision: Option<Decision>,
}

impl State {
    fn load() -> State {
        let v = match kv::get_json(STATE_KEY) {
            Ok(Some(v)) => v,
            Ok(None) => return State::default(),
            Err(e) => {
                error!("cannot read the stored state ({e}); starting afresh");
                return State::default();
            }
        };
        let in_flight = v.get("in_flight").and_then(|f| {
            Some(InFlight {
                request: f.get("request")?.as_i64()?,
                at_ms: f.get("at_ms")?.as_u64()?,
                pending: f.get("pending")?.as_bool()?,
            })
        });
        let decision = match v.get("decision").and_then(Value::as_str) {
            Some("pause") => Some(Decision::Pause),
            Some("resume") => Some(Decision::Resume),
            _ => None,
        };
        State { timer: v.get("timer").and_then(Value::as_i64), in_flight, decision }
    }

    fn save(&self) {
        let in_flight = self
            .in_flight
            .map(|f| Value::object().with("request", f.request).with("at_ms", f.at_ms).with("pending", f.pending));
        let state = Value::object()
            .with("timer", self.timer)
            .with("in_flight", in_flight)
            .with("decision", self.decision.map(Decision::as_str));
        if let Err(e) = kv::set_json(STATE_KEY, &state) {
            error!("cannot store the state: {e}");
        }
    }
}

impl WeatherBuyer {
    fn settings(&mut self) -> Settings {
        self.settings.get_or_insert_with(Settings::load).clone()
    }

    /// Buys a forecast, unless one is still on its way.
    fn buy(&self, settings: &Settings, st: &mut State) {
        let now = timer::now_ms();
        if let Some(f) = st.in_flight {
            let age = now.saturating_sub(f.at_ms);
            let hold = if f.pending { MAX_PENDING_MS } else { settings.every_ms };
            if age < hold {
                return debug!("forecast {} still unanswered; not buying another", f.request);
            }
            warn!("forecast {} got no answer; buying another", f.request);
        }
        let max_price = match settings.max_price {
            Some(max_price) => max_price,
            None => return error!("config max_price must be a decimal amount of base units"),
        };
        match money::call_service(&settings.service, b"{}", max_price) {
            Ok(request) => {
                debug!("buying {} (request {request})", settings.service);
                st.in_flight = Some(InFlight { request: request.0, at_ms: now, pending: false });
            }
            Err(e) => error!("cannot buy {}: {e}", settings.service),
        }
    }

    /// Acts on a forecast: tells the irrigation to pause or resume if that changed.
    fn decide(&self, settings: &Settings, st: &mut State, answer: &[u8]) {
        let forecast = match json::parse(answer) {
            Ok(forecast) => forecast,
            Err(e) => return warn!("the forecast is not JSON ({e}); ignored"),
        };
        let rain = match forecast.get("rain_probability") {
            Some(rain @ Value::Number(n)) if n.as_f64().is_finite() => rain.clone(),
            _ => return warn!("the forecast has no numeric rain_probability; ignored"),
        };
        let probability = rain.as_f64().unwrap_or(0.0);
        let (decision, command) = if probability >= settings.rain_threshold {
            (Decision::Pause, Value::object().with("reason", "rain").with("rain_probability", rain))
        } else {
            (Decision::Resume, Value::object())
        };
        if st.decision == Some(decision) {
            return debug!("rain {probability}%: irrigation stays {}d", decision.as_str());
        }
        let topic = format!("machinomy/{}/cmd/{}", settings.irrigation, decision.as_str());
        match mqtt::publish_json(&topic, &command, false) {
            Ok(()) => {
                info!("rain {probability}%: irrigation told to {}", decision.as_str());
                st.decision = Some(decision);
            }
            Err(e) => error!("cannot publish {topic}: {e}"),
        }
    }
}

impl Plugin for WeatherBuyer {
    fn on_start(&mut self) {
        let settings = self.settings();
        let mut st = State::load();
        // on_start runs at every hub start: replace the timer rather than stacking timers
        // (cancelling one the host already forgot is harmless).
        if let Some(old) = st.timer.take() {
            let _ = timer::cancel(TimerId(old));
        }
        match timer::every(settings.every_ms) {
            Ok(id) => st.timer = Some(id.0),
            Err(e) => error!("cannot set the timer: {e}"),
        }
        self.buy(&settings, &mut st);
        st.save();
    }

    fn on_timer(&mut self, timer: TimerId) {
        let settings = self.settings();
        let mut st = State::load();
        if st.timer != Some(timer.0) {
            return; // a timer from before a restart
        }
        self.buy(&settings, &mut st);
        st.save();
    }

    fn on_spend_result(&mut self, request: RequestId, status: SpendStatus, detail: &[u8]) {
        let settings = self.settings();
        let mut st = State::load();
        match st.in_flight {
            Some(f) if f.request == request.0 => {}
            _ => return, // not the purchase we wait for (an old one, or not ours)
        }
        match status {
            SpendStatus::Pending => {
                info!("the forecast awaits the owner's approval");
                st.in_flight = st.in_flight.map(|f| InFlight { pending: true, ..f });
            }
            SpendStatus::Paid => {
                st.in_flight = None;
                self.decide(&settings, &mut st, detail);
            }
            SpendStatus::Denied | SpendStatus::Failed => {
                st.in_flight = None;
                warn!("buying the forecast {status}: {}", String::from_utf8_lossy(detail));
            }
        }
        st.save();
    }
}

#[cfg(test)]
mod tests;
