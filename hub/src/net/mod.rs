//! The peer network: the only code that knows libp2p.
//!
//! A hub's libp2p identity is its ed25519 identity key, so its `PeerId` inlines its
//! [`PublicKey`]; outside this module peers are known only by that key, and addresses travel as
//! text (multiaddrs, parsed here). Peers whose `PeerId` is not an ed25519 key are refused at
//! connection time.
//!
//! # Shape
//!
//! [`start`] builds the swarm (TCP and QUIC; noise; yamux; identify, ping, Kademlia, optional
//! mDNS, gossipsub, relay client + DCUtR + AutoNAT v2 client, optional relay server, connection
//! limits, and the five request-response protocols), starts listening, and spawns the one task
//! that owns it. Everything else holds a cloneable [`NetHandle`], which sends commands over a
//! bounded queue, each with a oneshot for its answer; the event loop keeps outbound requests,
//! dials and queries pending by id until the swarm reports their outcome. [`NetTask`] owns the
//! event loop: [`NetTask::shutdown`] stops it (it also stops when every handle is dropped, and
//! is aborted if the `NetTask` is dropped).
//!
//! # Protocols
//!
//! | name | request → response | limit (each way) |
//! |---|---|---|
//! | `/machinomy/channel/1` | [`ChannelRequest`] → [`ChannelResponse`] | 16 KiB → 64 KiB (offer lists) |
//! | `/machinomy/pay/1` | [`PayRequest`] → [`PayResponse`] | 16 KiB |
//! | `/machinomy/tick/1` | [`TickRequest`] → [`PayResponse`] | 16 KiB |
//! | `/machinomy/invoice/1` | [`Invoice`] → [`InvoiceResponse`] | 16 KiB |
//! | `/machinomy/service/1` | [`ServiceCall`] → [`ServiceResponse`] | 128 KiB |
//!
//! One CBOR message per stream. A request over the limit is refused by the sender before it
//! leaves ([`NetError::TooLarge`]) and, from a peer that ignores the limit, by the receiver,
//! which stops reading one byte past the limit, drops that stream and keeps the connection.
//! Requests time out after [`REQUEST_TIMEOUT`]. A request to a peer that is not connected
//! dials it at the addresses the swarm knows (Kademlia's routing table, identify, mDNS,
//! bootstrap, earlier dials); for a peer known nowhere, the DHT is asked first. Addresses
//! must be IP multiaddrs: host names (`/dns4/…`) are refused with a clear error, as no DNS
//! transport is built in.
//!
//! Service offers are CBOR [`ServiceOffer`]s gossiped (signed gossipsub messages, strict
//! validation) on [`OFFER_TOPIC`], and each announced service is provided in Kademlia
//! (`/machinomy/kad/1`, server mode) under a key derived from its name, so
//! [`NetHandle::find_providers`] finds sellers the gossip never reached.
//!
//! # Inbound work
//!
//! The event loop never waits for the hub: each inbound request becomes a task that calls the
//! [`InboundHandler`] and hands the answer back to the loop, which sends it on the stream. At
//! most [`MAX_INBOUND`] run at once; beyond that a request is answered at once with
//! `ErrorCode::ServiceUnavailable`. A handler that takes longer than [`REQUEST_TIMEOUT`] is
//! dropped and answered with `ErrorCode::Internal`; shutdown drops them too, so handlers must
//! be cancel-safe (a write handed to the store's commit thread completes even if the future
//! waiting for it is dropped).
//!
//! Every queue here is bounded: commands ([`COMMAND_QUEUE`]), inbound tasks ([`MAX_INBOUND`]),
//! requests waiting for a DHT lookup of their peer (1024), events ([`EVENT_BUFFER`]; slow
//! listeners miss events rather than slow the loop), and the swarm's own (connection limits,
//! Kademlia's memory store, gossipsub's caches).

mod behaviour;
mod codec;
mod event_loop;
mod peer;
mod protocols;

#[cfg(test)]
mod tests;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use libp2p::identity;
use machinomy_core::wire::{
    ChannelRequest, ChannelResponse, Invoice, InvoiceResponse, MAX_NAME, PayRequest, PayResponse, ServiceCall,
    ServiceOffer, ServiceResponse, TickRequest,
};
use machinomy_core::{PublicKey, SigningKey};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;

use event_loop::{Command, EventLoop};
use protocols::{ChannelProtocol, InvoiceProtocol, PayProtocol, Protocol, ServiceProtocol, TickProtocol};

pub use codec::CodecError;
pub use protocols::{CHANNEL_RESPONSE_LIMIT, SERVICE_LIMIT, SMALL_LIMIT};

/// How long a peer has to answer a request (and the hub to answer a peer's).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`NetHandle::dial`] waits for a connection.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a Kademlia query ([`NetHandle::find_providers`], [`NetHandle::announce`]) may run.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(15);
/// Commands waiting for the event loop.
pub const COMMAND_QUEUE: usize = 256;
/// Inbound requests being handled at once.
pub const MAX_INBOUND: usize = 256;
/// Network events a slow listener may fall behind by.
pub const EVENT_BUFFER: usize = 256;
/// Largest gossiped offer.
pub const OFFER_LIMIT: usize = 4 * 1024;
/// The gossipsub topic of service offers.
pub const OFFER_TOPIC: &str = "machinomy/offers/1";

/// What the network layer is told to do at start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// Multiaddrs to listen on, e.g. `/ip4/0.0.0.0/tcp/4001`, `/ip4/0.0.0.0/udp/4001/quic-v1`.
    pub listen: Vec<String>,
    /// Peers to join the network through: multiaddrs ending in `/p2p/<peer id>`.
    pub bootstrap: Vec<String>,
    /// Find hubs on the local network by multicast DNS.
    pub mdns: bool,
    /// Relay circuits for other hubs (and run an AutoNAT server for them). A relay server
    /// advertises its listen addresses as its external addresses, so it should listen only on
    /// addresses others can reach.
    pub relay_server: bool,
    /// Relays to be reachable through (`…/p2p/<relay id>`): after connecting to each, the hub
    /// also listens on `<relay>/p2p-circuit`.
    pub relays: Vec<String>,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            listen: vec!["/ip4/0.0.0.0/tcp/0".into(), "/ip4/0.0.0.0/udp/0/quic-v1".into()],
            bootstrap: Vec::new(),
            mdns: false,
            relay_server: false,
            relays: Vec::new(),
        }
    }
}

/// A peer this hub knows of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    pub key: PublicKey,
    pub peer_id: String,
    /// Known addresses (without the `/p2p/` suffix).
    pub addrs: Vec<String>,
    pub connected: bool,
}

/// What [`NetHandle::announce`] reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Announced {
    /// The offer went to at least one peer subscribed to the offers topic.
    pub gossiped: bool,
    /// The provider record was stored with the closest peers the DHT knows (it is kept
    /// locally and republished either way).
    pub provided: bool,
}

/// Something happened on the network that a listener may care about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetEvent {
    /// The first connection to a peer was established.
    Connected {
        key: PublicKey,
    },
    /// The last connection to a peer closed.
    Disconnected {
        key: PublicKey,
    },
    /// The hub is reachable at a new address (with `/p2p/<own id>`), e.g. a relay circuit.
    ListenAddr {
        addr: String,
    },
    ListenAddrExpired {
        addr: String,
    },
    /// A peer joined the routing table: it can now be found through this hub.
    Discovered {
        key: PublicKey,
    },
    /// A connected peer subscribed to service offers (gossip has no history: announce the
    /// hub's offers again if it should hear them).
    OffersSubscribed {
        key: PublicKey,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("bad address {addr:?}: {reason}")]
    BadAddress { addr: String, reason: String },
    #[error("{0} is not a valid ed25519 public key")]
    BadKey(PublicKey),
    #[error("service name must be 1 to {MAX_NAME} bytes")]
    BadServiceName,
    #[error("could not set up the network: {0}")]
    Setup(String),
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: String, reason: String },
    #[error("cannot connect to {addr}: {reason}")]
    Dial { addr: String, reason: String },
    #[error("a request cannot be sent to this hub itself")]
    ToSelf,
    #[error("peer {0} is not reachable (no known address answered)")]
    Unreachable(PublicKey),
    #[error("{0} timed out")]
    Timeout(&'static str),
    #[error("the connection closed before the peer answered")]
    ConnectionClosed,
    #[error("the peer does not speak {0}")]
    UnsupportedProtocol(&'static str),
    #[error("the stream failed: {0}")]
    Stream(String),
    #[error("the message is {size} bytes, over the limit of {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error(transparent)]
    Codec(CodecError),
    #[error("gossip publish failed: {0}")]
    Publish(String),
    #[error("cannot provide the service in the DHT: {0}")]
    Provide(String),
    #[error("the network layer has stopped")]
    Stopped,
}

impl From<CodecError> for NetError {
    fn from(e: CodecError) -> NetError {
        match e {
            CodecError::TooLarge { size, limit } => NetError::TooLarge { size, limit },
            other => NetError::Codec(other),
        }
    }
}

/// A boxed future, as the [`InboundHandler`]'s methods return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the hub does with what peers send. Each method answers one inbound request; the
/// network layer has only decoded it (within its size limit) and knows the sender's key.
pub trait InboundHandler: Send + Sync + 'static {
    fn channel(&self, from: PublicKey, request: ChannelRequest) -> BoxFuture<'_, ChannelResponse>;
    fn pay(&self, from: PublicKey, request: PayRequest) -> BoxFuture<'_, PayResponse>;
    fn tick(&self, from: PublicKey, request: TickRequest) -> BoxFuture<'_, PayResponse>;
    fn invoice(&self, from: PublicKey, request: Invoice) -> BoxFuture<'_, InvoiceResponse>;
    fn call(&self, from: PublicKey, request: ServiceCall) -> BoxFuture<'_, ServiceResponse>;
    /// A gossiped offer, authored (signed at the gossip layer) by `from`. Nothing but the
    /// decoding has been checked: the hub verifies the offer. Called on the event loop, so it
    /// must return at once (queue the offer, don't wait on anything).
    fn offer(&self, from: PublicKey, offer: ServiceOffer);
}

/// Starts the network layer: builds the swarm from `identity`, listens on `config.listen`,
/// dials the bootstrap peers and relays, and spawns the event loop. Must run inside a tokio
/// runtime.
pub async fn start(
    identity: &SigningKey,
    config: &NetConfig,
    handler: Arc<dyn InboundHandler>,
) -> Result<(NetHandle, NetTask), NetError> {
    let keypair = identity::Keypair::ed25519_from_bytes(identity.to_bytes())
        .map_err(|e| NetError::Setup(format!("identity key: {e}")))?;
    let public_key = PublicKey::from(identity.verifying_key());
    let peer_id = keypair.public().to_peer_id();
    let (commands, command_rx) = mpsc::channel(COMMAND_QUEUE);
    let (events, _) = broadcast::channel(EVENT_BUFFER);
    let (stop, stop_rx) = oneshot::channel();
    let event_loop = EventLoop::new(keypair, config, handler, command_rx, events.clone())?;
    let join = tokio::spawn(event_loop.run(stop_rx));
    let handle = NetHandle { commands, events, public_key, peer_id: peer_id.to_string() };
    Ok((handle, NetTask { stop: Some(stop), join: Some(join) }))
}

/// Owns the event loop task.
#[derive(Debug)]
pub struct NetTask {
    stop: Option<oneshot::Sender<()>>,
    join: Option<JoinHandle<()>>,
}

impl NetTask {
    /// Stops the event loop: inbound handlers are dropped, pending requests fail with
    /// [`NetError::Stopped`], connections close. Returns when the task has ended.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(join) = self.join.take()
            && let Err(e) = join.await
            && e.is_panic()
        {
            tracing::error!("the network event loop panicked: {e}");
        }
    }
}

impl Drop for NetTask {
    fn drop(&mut self) {
        if let Some(join) = self.join.take() {
            join.abort();
        }
    }
}

/// The way to the network: cheap to clone, every method a command to the event loop.
#[derive(Clone, Debug)]
pub struct NetHandle {
    commands: mpsc::Sender<Command>,
    events: broadcast::Sender<NetEvent>,
    public_key: PublicKey,
    peer_id: String,
}

impl NetHandle {
    /// This hub's identity key.
    pub fn public_key(&self) -> PublicKey {
        self.public_key
    }

    /// This hub's libp2p PeerId, as text.
    pub fn peer_id(&self) -> String {
        self.peer_id.clone()
    }

    /// Network events from now on.
    pub fn events(&self) -> broadcast::Receiver<NetEvent> {
        self.events.subscribe()
    }

    async fn ask<T>(&self, command: impl FnOnce(protocols::Reply<T>) -> Command) -> Result<T, NetError> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(command(reply)).await.map_err(|_| NetError::Stopped)?;
        answer.await.map_err(|_| NetError::Stopped)?
    }

    /// Where this hub listens, as full addresses ending in `/p2p/<own id>`, once every
    /// configured listener is up. Relay circuits appear once their reservation is accepted
    /// (watch [`NetHandle::events`] for [`NetEvent::ListenAddr`]).
    pub async fn listen_addrs(&self) -> Result<Vec<String>, NetError> {
        let addrs = self.ask(|reply| Command::ListenAddrs { reply }).await?;
        Ok(addrs.iter().map(ToString::to_string).collect())
    }

    /// Connects to `addr` (with or without `/p2p/<peer id>`) and returns the peer's key once
    /// the connection is up.
    pub async fn dial(&self, addr: &str) -> Result<PublicKey, NetError> {
        let target = peer::parse_addr(addr)?;
        let peer = tokio::time::timeout(DIAL_TIMEOUT, self.ask(|reply| Command::Dial { addr: target, reply }))
            .await
            .map_err(|_| NetError::Timeout("dial"))??;
        peer::public_key_of(&peer)
            .ok_or_else(|| NetError::Dial { addr: addr.to_owned(), reason: "the peer is not a hub".into() })
    }

    /// Peers connected now or known to the DHT.
    pub async fn peers(&self) -> Result<Vec<PeerInfo>, NetError> {
        self.ask(|reply| Command::Peers { reply }).await
    }

    async fn request<P: Protocol>(
        &self,
        to: PublicKey,
        request: P::Request,
        wrap: impl FnOnce(event_loop::Outbound<P>) -> Command,
    ) -> Result<P::Response, NetError> {
        if to == self.public_key {
            return Err(NetError::ToSelf);
        }
        let peer = peer::peer_id_of(&to)?;
        // Refuse what the peer would refuse, here, with a clear error.
        codec::encode(&request, P::REQUEST_LIMIT)?;
        let ask = self.ask(|reply| wrap(event_loop::Outbound { peer, request, reply }));
        // The swarm times requests out itself; this only guards against a lost answer.
        let bound = QUERY_TIMEOUT + DIAL_TIMEOUT + REQUEST_TIMEOUT;
        tokio::time::timeout(bound, ask).await.map_err(|_| NetError::Timeout("request"))?
    }

    /// Proposes a channel, or asks for a channel's state.
    pub async fn channel(&self, to: PublicKey, request: ChannelRequest) -> Result<ChannelResponse, NetError> {
        self.request::<ChannelProtocol>(to, request, Command::Channel).await
    }

    pub async fn pay(&self, to: PublicKey, request: PayRequest) -> Result<PayResponse, NetError> {
        self.request::<PayProtocol>(to, request, Command::Pay).await
    }

    /// Sends the next tick of a stream; a peer without the tick protocol answers
    /// [`NetError::UnsupportedProtocol`].
    pub async fn tick(&self, to: PublicKey, request: TickRequest) -> Result<PayResponse, NetError> {
        self.request::<TickProtocol>(to, request, Command::Tick).await
    }

    pub async fn invoice(&self, to: PublicKey, request: Invoice) -> Result<InvoiceResponse, NetError> {
        self.request::<InvoiceProtocol>(to, request, Command::Invoice).await
    }

    pub async fn call(&self, to: PublicKey, request: ServiceCall) -> Result<ServiceResponse, NetError> {
        self.request::<ServiceProtocol>(to, request, Command::Service).await
    }

    /// Gossips `offer` on [`OFFER_TOPIC`] and provides its service in the DHT. Returns once
    /// the DHT has answered (at most [`QUERY_TIMEOUT`]); a hub with no peers yet gets
    /// `Announced { gossiped: false, .. }`, not an error, and should announce again later.
    pub async fn announce(&self, offer: ServiceOffer) -> Result<Announced, NetError> {
        let key = event_loop::service_key(&offer.name)?;
        let bytes = codec::encode(&offer, OFFER_LIMIT)?;
        let ask = self.ask(|reply| Command::Announce { bytes, key, reply });
        tokio::time::timeout(QUERY_TIMEOUT * 2, ask).await.map_err(|_| NetError::Timeout("announce"))?
    }

    /// Hubs that provide `service`, found through the DHT within [`QUERY_TIMEOUT`] (those
    /// found by then; this hub itself is left out).
    pub async fn find_providers(&self, service: &str) -> Result<Vec<PublicKey>, NetError> {
        let key = event_loop::service_key(service)?;
        let ask = self.ask(|reply| Command::FindProviders { key, reply });
        tokio::time::timeout(QUERY_TIMEOUT * 2, ask).await.map_err(|_| NetError::Timeout("find providers"))?
    }
}
