//! The hub among other hubs: its channels (with a settlement's progress while it waits), the
//! services offered on the network, and the peers it knows.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use jiff::tz::TimeZone;
use machinomy_core::{ChannelId, ChannelStatus, Currency, Timestamp};

use crate::backend::{Backend, BackendError};
use crate::model::{ChannelView, OfferView, Role};

use super::view::{Layout, When, money, percent, short};
use super::{Frame, NoFields, Owner, PageError, SessionForm, Ui, done, optional, render};

/// A channel as listed.
#[derive(Clone, Debug)]
pub(crate) struct ChannelRow {
    pub(crate) id: String,
    pub(crate) id_short: String,
    /// `pays` or `is paid`.
    pub(crate) role: &'static str,
    pub(crate) counterparty: String,
    pub(crate) ledger: String,
    pub(crate) capacity: String,
    pub(crate) spent: String,
    pub(crate) remaining: String,
    pub(crate) used_percent: u8,
    pub(crate) status: &'static str,
    pub(crate) opened: When,
    /// While it closes: how far through its settlement period, and when it settles.
    pub(crate) settling: Option<(u8, When)>,
    /// Once settled: when, and for how much.
    pub(crate) settled: Option<(When, String)>,
}

impl ChannelRow {
    fn new(channel: &ChannelView, now: Timestamp, zone: &TimeZone) -> ChannelRow {
        let (settling, settled) = match channel.status {
            ChannelStatus::Open => (None, None),
            ChannelStatus::Closing { since, settle_after, .. } => {
                let elapsed = u128::from(now.secs().saturating_sub(since.secs()));
                let period = u128::from(settle_after.secs().saturating_sub(since.secs()));
                (Some((percent(elapsed, period), When::new(settle_after, zone))), None)
            }
            ChannelStatus::Settled { at, amount } => {
                (None, Some((When::new(at, zone), money(&channel.currency, amount))))
            }
        };
        let id = channel.id.to_string();
        ChannelRow {
            id_short: short(&id),
            id,
            role: match channel.role {
                Role::Sender => "pays",
                Role::Receiver => "is paid",
            },
            counterparty: short(&channel.counterparty.to_hex()),
            ledger: channel.ledger.to_string(),
            capacity: money(&channel.currency, channel.capacity),
            spent: money(&channel.currency, channel.spent),
            remaining: money(&channel.currency, channel.remaining),
            used_percent: percent(channel.spent.base_units(), channel.capacity.base_units()),
            status: channel.status.name(),
            opened: When::new(channel.opened_at, zone),
            settling,
            settled,
        }
    }
}

#[derive(Template, Debug)]
#[template(path = "channels.html")]
pub(crate) struct ChannelsPage {
    pub(crate) layout: Layout,
    pub(crate) channels: Vec<ChannelRow>,
}

pub(crate) async fn channels<B: Backend>(State(ui): State<Ui<B>>, Owner(owner): Owner) -> Result<Response, PageError> {
    let (frame, channels) = tokio::join!(Frame::load(&ui), ui.backend.channels());
    let (frame, channels) = (frame?, channels?);
    let now = frame.status.now;
    let page = ChannelsPage {
        channels: channels.iter().map(|c| ChannelRow::new(c, now, &frame.zone)).collect(),
        layout: frame.layout(&ui.sessions, &owner, "Channels", "channels", "channel payment"),
    };
    Ok(render(&page))
}

pub(crate) async fn close_channel<B: Backend>(
    State(ui): State<Ui<B>>,
    Path(id): Path<String>,
    SessionForm { owner, form: NoFields {} }: SessionForm<NoFields>,
) -> Result<Response, PageError> {
    let id: ChannelId = id.parse().map_err(|_| {
        PageError::new(StatusCode::BAD_REQUEST, format!("{id:?} is not a channel id (64 hex characters)."))
    })?;
    let (ok, text) = match ui.backend.close_channel(id).await {
        Ok(channel) => match channel.status {
            ChannelStatus::Closing { settle_after, .. } => {
                let zone = ui.backend.time_zone();
                (
                    true,
                    format!(
                        "Channel {} is closing; it settles after {}.",
                        short(&id.to_string()),
                        When::new(settle_after, &zone).text
                    ),
                )
            }
            _ => (true, format!("Channel {} is {}.", short(&id.to_string()), channel.status.name())),
        },
        Err(BackendError::Conflict(m) | BackendError::NotFound(m)) => (false, m),
        Err(e) => return Err(e.into()),
    };
    Ok(done(&ui.sessions, &owner, ok, text, "/channels"))
}

/// A service offer as listed.
#[derive(Clone, Debug)]
pub(crate) struct OfferRow {
    pub(crate) service: String,
    pub(crate) seller: String,
    pub(crate) price: String,
    pub(crate) description: String,
    pub(crate) expires: When,
}

impl OfferRow {
    fn new(offer: &OfferView, currency: &Currency, zone: &TimeZone) -> OfferRow {
        // Offers name their currency; the hub buys only in its own, so others show their code.
        let price = if offer.currency == currency.code() {
            money(currency, offer.price)
        } else {
            format!("{} base units of {}", offer.price.base_units(), offer.currency)
        };
        OfferRow {
            service: offer.service.clone(),
            seller: short(&offer.seller.to_hex()),
            price,
            description: offer.description.clone(),
            expires: When::new(offer.expires_at, zone),
        }
    }
}

#[derive(Template, Debug)]
#[template(path = "services.html")]
pub(crate) struct ServicesPage {
    pub(crate) layout: Layout,
    /// `None`: the peer network is not running.
    pub(crate) own: Option<Vec<OfferRow>>,
    pub(crate) seen: Vec<OfferRow>,
}

pub(crate) async fn services<B: Backend>(State(ui): State<Ui<B>>, Owner(owner): Owner) -> Result<Response, PageError> {
    let (frame, services) = tokio::join!(Frame::load(&ui), ui.backend.services());
    let frame = frame?;
    let services = optional(services)?;
    let (currency, zone) = (&frame.status.currency, &frame.zone);
    let rows = |offers: &[OfferView]| offers.iter().map(|o| OfferRow::new(o, currency, zone)).collect::<Vec<_>>();
    let page = ServicesPage {
        own: services.as_ref().map(|s| rows(&s.own)),
        seen: services.as_ref().map(|s| rows(&s.seen)).unwrap_or_default(),
        layout: frame.layout(&ui.sessions, &owner, "Services", "services", ""),
    };
    Ok(render(&page))
}

/// A peer as listed.
#[derive(Clone, Debug)]
pub(crate) struct PeerRow {
    pub(crate) key: String,
    pub(crate) peer_id: String,
    pub(crate) addrs: Vec<String>,
    pub(crate) connected: bool,
}

#[derive(Template, Debug)]
#[template(path = "peers.html")]
pub(crate) struct PeersPage {
    pub(crate) layout: Layout,
    /// `None`: the peer network is not running.
    pub(crate) peers: Option<Vec<PeerRow>>,
    pub(crate) own_key: String,
    pub(crate) own_addrs: Vec<String>,
}

pub(crate) async fn peers<B: Backend>(State(ui): State<Ui<B>>, Owner(owner): Owner) -> Result<Response, PageError> {
    let (frame, peers) = tokio::join!(Frame::load(&ui), ui.backend.peers());
    let frame = frame?;
    let peers = optional(peers)?.map(|list| {
        list.into_iter()
            .map(|p| PeerRow { key: p.key.to_hex(), peer_id: p.peer_id, addrs: p.addrs, connected: p.connected })
            .collect()
    });
    let page = PeersPage {
        peers,
        own_key: frame.status.public_key.to_hex(),
        own_addrs: frame.status.p2p_addrs.clone(),
        layout: frame.layout(&ui.sessions, &owner, "Peers", "peers", ""),
    };
    Ok(render(&page))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use machinomy_core::{Amount, LedgerId, PublicKey};

    use super::*;

    fn channel(status: ChannelStatus) -> ChannelView {
        ChannelView {
            id: ChannelId::from_bytes([7; 32]),
            role: Role::Sender,
            ledger: LedgerId::credit(),
            counterparty: PublicKey::from_bytes([2; 32]),
            currency: Currency::usd(),
            capacity: Amount::from_base_units(10_000_000_000),
            spent: Amount::from_base_units(2_500_000_000),
            remaining: Amount::from_base_units(7_500_000_000),
            status,
            opened_at: Timestamp(1_000),
            settlement_period_secs: 100,
        }
    }

    #[test]
    fn a_closing_channel_shows_how_far_its_settlement_period_has_run() {
        let closing = ChannelStatus::Closing {
            since: Timestamp(2_000),
            settle_after: Timestamp(2_100),
            final_amount: Amount::from_base_units(2_500_000_000),
        };
        let row = ChannelRow::new(&channel(closing), Timestamp(2_025), &TimeZone::UTC);
        let (progress, settles) = row.settling.unwrap();
        assert_eq!(progress, 25);
        assert_eq!(settles.iso, "1970-01-01T00:35:00+00:00");
        assert_eq!((row.role, row.status, row.used_percent), ("pays", "closing", 25));
        assert_eq!(row.spent, "2.50 USD");
        let late = ChannelRow::new(&channel(closing), Timestamp(9_999), &TimeZone::UTC);
        assert_eq!(late.settling.unwrap().0, 100);
        let open = ChannelRow::new(&channel(ChannelStatus::Open), Timestamp(2_025), &TimeZone::UTC);
        assert!(open.settling.is_none() && open.settled.is_none());
    }
}
