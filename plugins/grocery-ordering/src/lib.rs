//! Grocery ordering: keeps a shopping list from what the fridge reports against the household's
//! diet, and orders it from the grocer's hub.
//!
//! - The fridge reports `{"inventory": {"milk": 1, ...}}` in its state. For every item of the
//!   diet (item → minimum quantity) the list holds what is missing to reach the minimum. The list
//!   is published, retained, on `machinomy-plugins/grocery-ordering/list` whenever it changes.
//! - When the fridge reports, the list is not empty and no order is open, it orders: one `spend`
//!   to the grocer of Σ quantity × price. Items without a price are skipped (with a warning).
//!   If the total would pass `max_order`, the order is cut down item by item (in name order, as
//!   many of each as still fit); what does not fit stays on the list for a later order.
//! - A big order is a spend above the budget's `auto_approve`: the hub answers `pending`, then
//!   `paid` or `denied`. Each status is published on `machinomy-plugins/grocery-ordering/order`.
//! - Paid: the order counts as delivered, so its items leave the list until the fridge reports
//!   again. Denied or failed: the same list is not ordered again (the owner said no, or it could
//!   not be paid); a report whose list differs, or a restart of the plugin, orders again.
//!
//! Orders are placed only when the fridge reports (or at start), never in a loop on answers.

// `deny`, not `forbid`: export_plugin! expands to the wasm exports, which allow it locally.
#![deny(unsafe_code)]
#![warn(rust_2018_idioms, missing_debug_implementations)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

use machinomy_sdk::json::{self, Value};
use machinomy_sdk::{error, info, kv, mqtt, warn};
use machinomy_sdk::{money, Amount, Plugin, RequestId, SpendStatus};

/// The shopping list, retained.
pub const LIST_TOPIC: &str = "machinomy-plugins/grocery-ordering/list";
/// Order statuses.
pub const ORDER_TOPIC: &str = "machinomy-plugins/grocery-ordering/order";
const STATE_KEY: &str = "state";

/// Items and quantities, sorted by item name.
type Items = Vec<(String, u64)>;

/// The plugin. It only caches its settings; its state lives in kv.
#[derive(Debug, Default)]
pub struct GroceryOrdering {
    settings: Option<Settings>,
}

machinomy_sdk::export_plugin!(GroceryOrdering);

#[derive(Clone, Debug)]
struct Settings {
    fridge: String,
    grocer: String,
    /// Item → minimum quantity.
    diet: Items,
    /// Item → price in base units.
    prices: Vec<(String, Amount)>,
    /// `None`: no cap besides the budget. `Some(Err)`: set but unreadable (no orders).
    max_order: Option<Result<Amount, ()>>,
}

impl Settings {
    fn load() -> Settings {
        let config = machinomy_sdk::config();
        let text = |key: &str, default: &str| config.get(key).and_then(Value::as_str).unwrap_or(default).to_string();
        let mut diet = Vec::new();
        for (item, min) in config.get("diet").and_then(Value::as_object).unwrap_or_default() {
            match min.as_u64() {
                Some(min) => diet.push((item.clone(), min)),
                None => warn!("diet: the minimum of {item} is not a whole number; ignored"),
            }
        }
        diet.sort();
        let mut prices = Vec::new();
        for (item, price) in config.get("prices").and_then(Value::as_object).unwrap_or_default() {
            match price.as_amount() {
                Some(price) => prices.push((item.clone(), price)),
                None => warn!("prices: the price of {item} is not a decimal amount of base units; ignored"),
            }
        }
        Settings {
            fridge: text("fridge", "fridge"),
            grocer: text("grocer", ""),
            diet,
            prices,
            max_order: config.get("max_order").map(|v| v.as_amount().ok_or(())),
        }
    }

    fn state_topic(&self) -> String {
        format!("machinomy/{}/state", self.fridge)
    }

    fn price(&self, item: &str) -> Option<Amount> {
        self.prices.iter().find(|(i, _)| i == item).map(|(_, p)| *p)
    }
}

/// An order sent and not yet paid, denied or failed.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Order {
    number: u64,
    request: i64,
    items: Items,
    amount: Amount,
}

/// Everything the plugin remembers, as one kv record.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct State {
    list: Items,
    /// The list as last published (retained), so it is published only when it changes.
    published_list: Option<Items>,
    order: Option<Order>,
    order_no: u64,
    /// The list when the last order was denied or failed: not ordered again as it is.
    refused: Option<Items>,
}

fn items_json(items: &[(String, u64)]) -> Value {
    Value::Object(items.iter().map(|(item, qty)| (item.clone(), Value::from(*qty))).collect())
}

fn items_from(v: Option<&Value>) -> Option<Items> {
    v?.as_object()?.iter().map(|(item, qty)| Some((item.clone(), qty.as_u64()?))).collect()
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
        let order = match v.get("order") {
            None | Some(Value::Null) => None,
            Some(o) => Some(Order {
                number: o.get("number")?.as_u64()?,
                request: o.get("request")?.as_i64()?,
                items: items_from(o.get("items"))?,
                amount: o.get("amount")?.as_amount()?,
            }),
        };
        let optional_items = |key: &str| match v.get(key) {
            None | Some(Value::Null) => Some(None),
            other => items_from(other).map(Some),
        };
        Some(State {
            list: items_from(v.get("list"))?,
            published_list: optional_items("published_list")?,
            order,
            order_no: v.get("order_no")?.as_u64()?,
            refused: optional_items("refused")?,
        })
    }

    fn to_json(&self) -> Value {
        let order = self.order.as_ref().map(|o| {
            Value::object()
                .with("number", o.number)
                .with("request", o.request)
                .with("items", items_json(&o.items))
                .with("amount", o.amount)
        });
        Value::object()
            .with("list", items_json(&self.list))
            .with("published_list", self.published_list.as_deref().map(items_json))
            .with("order", order)
            .with("order_no", self.order_no)
            .with("refused", self.refused.as_deref().map(items_json))
    }

    /// Publishes the list (retained) if it changed since it was last published.
    fn publish_list(&mut self) {
        if self.published_list.as_ref() == Some(&self.list) {
            return;
        }
        let list = Value::object().with("items", items_json(&self.list));
        match mqtt::publish_json(LIST_TOPIC, &list, true) {
            Ok(()) => self.published_list = Some(self.list.clone()),
            Err(e) => error!("cannot publish the shopping list: {e}"),
        }
    }
}

fn publish_order(order: &Order, status: &str) {
    let message = Value::object()
        .with("order", order.number)
        .with("items", items_json(&order.items))
        .with("amount", order.amount)
        .with("status", status);
    if let Err(e) = mqtt::publish_json(ORDER_TOPIC, &message, false) {
        error!("cannot publish order {}'s status: {e}", order.number);
    }
}

/// What is missing from `inventory` to reach the diet's minimums.
fn shopping_list(diet: &[(String, u64)], inventory: &Value) -> Items {
    let mut list = Vec::new();
    for (item, min) in diet {
        let have = match inventory.get(item) {
            None | Some(Value::Null) => 0,
            Some(v) => match v.as_u64() {
                Some(have) => have,
                None => {
                    warn!("the fridge reports {item} as {v}, not a whole number; not ordering it");
                    continue;
                }
            },
        };
        if have < *min {
            list.push((item.clone(), min - have));
        }
    }
    list
}

/// The part of `list` to order (priced items, cut down to `max`), and its total.
fn order_items(settings: &Settings, list: &[(String, u64)], max: Option<Amount>) -> (Items, Amount) {
    let mut items = Vec::new();
    let mut total = Amount::ZERO;
    for (item, wanted) in list {
        let price = match settings.price(item) {
            Some(price) => price,
            None => {
                warn!("no price for {item}; not ordering it");
                continue;
            }
        };
        let room = max.map_or(u128::MAX, |max| max.saturating_sub(total).0);
        let fits = if price.is_zero() { u128::from(*wanted) } else { room / price.0 };
        let qty = (*wanted).min(u64::try_from(fits).unwrap_or(u64::MAX));
        match price.checked_mul(u128::from(qty)).and_then(|cost| total.checked_add(cost)) {
            Some(new_total) if qty > 0 => total = new_total,
            _ => {
                warn!("{item} does not fit max_order; not ordering it now");
                continue;
            }
        }
        if qty < *wanted {
            info!("ordering {qty} of {wanted} {item} to stay within max_order");
        }
        items.push((item.clone(), qty));
    }
    (items, total)
}

impl GroceryOrdering {
    fn settings(&mut self) -> Settings {
        self.settings.get_or_insert_with(Settings::load).clone()
    }

    /// Orders the list if it should (see the crate docs).
    fn maybe_order(&self, settings: &Settings, st: &mut State) {
        if st.list.is_empty() || st.order.is_some() || st.refused.as_ref() == Some(&st.list) {
            return;
        }
        if settings.grocer.is_empty() {
            return error!("config grocer is empty: set the grocer's hub key to order");
        }
        let max = match settings.max_order {
            None => None,
            Some(Ok(max)) => Some(max),
            Some(Err(())) => return error!("config max_order must be a decimal amount of base units"),
        };
        let (items, amount) = order_items(settings, &st.list, max);
        if items.is_empty() {
            return;
        }
        let number = st.order_no + 1;
        let lines: Vec<String> = items.iter().map(|(item, qty)| format!("{item}×{qty}")).collect();
        let memo = format!("order {number}: {}", lines.join(", "));
        match money::spend(&settings.grocer, amount, &memo) {
            Ok(request) => {
                info!("{memo}: {amount}");
                let order = Order { number, request: request.0, items, amount };
                publish_order(&order, "requested");
                st.order_no = number;
                st.order = Some(order);
                st.refused = None;
            }
            Err(e) => error!("cannot pay the grocer: {e}"),
        }
    }
}

impl Plugin for GroceryOrdering {
    fn on_start(&mut self) {
        let settings = self.settings();
        let topic = settings.state_topic();
        if let Err(e) = mqtt::subscribe(&topic) {
            error!("cannot subscribe to {topic}: {e}");
        }
        // A (re)start is the owner's cue to try a refused list again.
        let mut st = State::load();
        st.refused = None;
        st.publish_list();
        self.maybe_order(&settings, &mut st);
        st.save();
    }

    fn on_message(&mut self, topic: &str, payload: &[u8]) {
        let settings = self.settings();
        if topic != settings.state_topic() {
            return;
        }
        let state = match json::parse(payload) {
            Ok(state) => state,
            Err(e) => return warn!("ignored a fridge state: {e}"),
        };
        let inventory = match state.get("inventory") {
            Some(inventory @ Value::Object(_)) => inventory,
            _ => return warn!("ignored a fridge state without an inventory object"),
        };
        let mut st = State::load();
        st.list = shopping_list(&settings.diet, inventory);
        st.publish_list();
        self.maybe_order(&settings, &mut st);
        st.save();
    }

    fn on_spend_result(&mut self, request: RequestId, status: SpendStatus, detail: &[u8]) {
        let mut st = State::load();
        let order = match &st.order {
            Some(order) if order.request == request.0 => order.clone(),
            _ => return,
        };
        publish_order(&order, status.as_str());
        match status {
            SpendStatus::Pending => {
                info!("order {} awaits the owner's approval", order.number);
                return st.save();
            }
            SpendStatus::Paid => {
                info!("order {} paid", order.number);
                // Delivered, as far as the list knows, until the fridge reports again.
                for (item, qty) in &order.items {
                    if let Some(entry) = st.list.iter_mut().find(|(i, _)| i == item) {
                        entry.1 = entry.1.saturating_sub(*qty);
                    }
                }
                st.list.retain(|(_, qty)| *qty > 0);
                st.publish_list();
            }
            SpendStatus::Denied | SpendStatus::Failed => {
                warn!("order {} {status}: {}", order.number, String::from_utf8_lossy(detail));
                st.refused = Some(st.list.clone());
            }
        }
        st.order = None;
        st.save();
    }
}

#[cfg(test)]
mod tests;
