//! The composed libp2p behaviour and the swarm built around it.

use std::task::{Context, Poll};
use std::time::Duration;

use libp2p::core::Endpoint;
use libp2p::core::transport::PortUse;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
    dummy,
};
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, SwarmBuilder, autonat, connection_limits, dcutr, gossipsub, identify,
    identity, kad, mdns, noise, ping, relay, request_response, tcp, yamux,
};

use super::codec::WireCodec;
use super::peer::public_key_of;
use super::protocols::{ChannelProtocol, InvoiceProtocol, PayProtocol, Protocol, ServiceProtocol, TickProtocol};
use super::{NetConfig, NetError, QUERY_TIMEOUT, REQUEST_TIMEOUT};

/// Kademlia's protocol name: our own DHT, not the public IPFS one.
pub(super) const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/machinomy/kad/1");
/// identify's protocol version.
const ID_PROTOCOL: &str = "/machinomy/id/1";
/// How long a connection with nothing to do stays open.
const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(120);
const MAX_ESTABLISHED_INCOMING: u32 = 256;
const MAX_PENDING_INCOMING: u32 = 64;
const MAX_PER_PEER: u32 = 8;
/// Concurrent request streams on one connection, per protocol.
const MAX_STREAMS_PER_CONNECTION: usize = 64;
/// Bytes one relayed circuit may carry before the relay closes it (a direct connection should
/// have replaced it by then).
const MAX_CIRCUIT_BYTES: u64 = 4 << 20;

#[derive(NetworkBehaviour)]
pub(super) struct Behaviour {
    hubs_only: HubsOnly,
    limits: connection_limits::Behaviour,
    pub(super) identify: identify::Behaviour,
    ping: ping::Behaviour,
    pub(super) kad: kad::Behaviour<kad::store::MemoryStore>,
    pub(super) mdns: Toggle<mdns::tokio::Behaviour>,
    pub(super) gossipsub: gossipsub::Behaviour,
    pub(super) relay_client: relay::client::Behaviour,
    relay_server: Toggle<relay::Behaviour>,
    dcutr: dcutr::Behaviour,
    pub(super) autonat: autonat::v2::client::Behaviour,
    autonat_server: Toggle<autonat::v2::server::Behaviour>,
    pub(super) channel: request_response::Behaviour<WireCodec<ChannelProtocol>>,
    pub(super) pay: request_response::Behaviour<WireCodec<PayProtocol>>,
    pub(super) tick: request_response::Behaviour<WireCodec<TickProtocol>>,
    pub(super) invoice: request_response::Behaviour<WireCodec<InvoiceProtocol>>,
    pub(super) service: request_response::Behaviour<WireCodec<ServiceProtocol>>,
}

fn request_response<P: Protocol>() -> request_response::Behaviour<WireCodec<P>> {
    request_response::Behaviour::with_codec(
        WireCodec::default(),
        [(StreamProtocol::new(P::NAME), request_response::ProtocolSupport::Full)],
        request_response::Config::default()
            .with_request_timeout(REQUEST_TIMEOUT)
            .with_max_concurrent_streams(MAX_STREAMS_PER_CONNECTION),
    )
}

impl Behaviour {
    fn new(
        key: &identity::Keypair,
        relay_client: relay::client::Behaviour,
        config: &NetConfig,
    ) -> Result<Behaviour, NetError> {
        let peer_id = key.public().to_peer_id();

        let mut kad_config = kad::Config::new(KAD_PROTOCOL);
        kad_config.set_query_timeout(QUERY_TIMEOUT);
        // The memory store's defaults bound records, provided keys and providers per key.
        let mut kad = kad::Behaviour::with_config(peer_id, kad::store::MemoryStore::new(peer_id), kad_config);
        kad.set_mode(Some(kad::Mode::Server));

        let gossip_config = gossipsub::ConfigBuilder::default()
            .validation_mode(gossipsub::ValidationMode::Strict)
            // Offers are passed on only after they decode (within `OFFER_LIMIT`).
            .validate_messages()
            .build()
            .map_err(|e| NetError::Setup(format!("gossipsub: {e}")))?;
        let gossipsub = gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Signed(key.clone()), gossip_config)
            .map_err(|e| NetError::Setup(format!("gossipsub: {e}")))?;

        let mdns = if config.mdns {
            let mdns = mdns::tokio::Behaviour::new(mdns::Config::default(), peer_id)
                .map_err(|e| NetError::Setup(format!("mDNS: {e}")))?;
            Some(mdns)
        } else {
            None
        };

        let relay_server = config.relay_server.then(|| {
            relay::Behaviour::new(peer_id, relay::Config { max_circuit_bytes: MAX_CIRCUIT_BYTES, ..Default::default() })
        });

        let limits = connection_limits::ConnectionLimits::default()
            .with_max_established_incoming(Some(MAX_ESTABLISHED_INCOMING))
            .with_max_pending_incoming(Some(MAX_PENDING_INCOMING))
            .with_max_established_per_peer(Some(MAX_PER_PEER));

        Ok(Behaviour {
            hubs_only: HubsOnly,
            limits: connection_limits::Behaviour::new(limits),
            identify: identify::Behaviour::new(
                identify::Config::new(ID_PROTOCOL.into(), key.public())
                    .with_agent_version(format!("machinomy-hub/{}", env!("CARGO_PKG_VERSION"))),
            ),
            ping: ping::Behaviour::default(),
            kad,
            mdns: Toggle::from(mdns),
            gossipsub,
            relay_client,
            relay_server: Toggle::from(relay_server),
            dcutr: dcutr::Behaviour::new(peer_id),
            autonat: autonat::v2::client::Behaviour::default(),
            autonat_server: Toggle::from(config.relay_server.then(autonat::v2::server::Behaviour::default)),
            channel: request_response(),
            pay: request_response(),
            tick: request_response(),
            invoice: request_response(),
            service: request_response(),
        })
    }
}

/// Builds the swarm: TCP and QUIC, noise, yamux, relay circuits, and [`Behaviour`].
pub(super) fn build_swarm(keypair: identity::Keypair, config: &NetConfig) -> Result<Swarm<Behaviour>, NetError> {
    let mut built = None;
    let swarm = SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)
        .map_err(|e| NetError::Setup(format!("tcp: {e}")))?
        .with_quic()
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .map_err(|e| NetError::Setup(format!("relay client: {e}")))?
        .with_behaviour(|key, relay_client| {
            // Keep our own error: the builder would box it.
            match Behaviour::new(key, relay_client, config) {
                Ok(behaviour) => Ok(behaviour),
                Err(e) => {
                    let text = e.to_string();
                    built = Some(e);
                    Err(text.into())
                }
            }
        })
        .map_err(|e| built.take().unwrap_or_else(|| NetError::Setup(e.to_string())))?
        .with_swarm_config(|c| {
            // A request's bytes go out with its protocol name instead of a round trip later:
            // every protocol here is proposed alone, and a peer that lacks it fails the stream.
            c.with_idle_connection_timeout(IDLE_CONNECTION_TIMEOUT)
                .with_substream_upgrade_protocol_override(libp2p::core::upgrade::Version::V1Lazy)
        })
        .build();
    Ok(swarm)
}

/// Refuses connections to and from peers whose PeerId is not an ed25519 key: every hub's is,
/// and the rest of the hub names peers by that key.
pub(super) struct HubsOnly;

#[derive(Debug, thiserror::Error)]
#[error("peer {0} is not a hub: its peer id is not an ed25519 key")]
struct NotAHub(PeerId);

impl HubsOnly {
    fn check(peer: PeerId) -> Result<THandler<Self>, ConnectionDenied> {
        match public_key_of(&peer) {
            Some(_) => Ok(dummy::ConnectionHandler),
            None => Err(ConnectionDenied::new(NotAHub(peer))),
        }
    }
}

impl NetworkBehaviour for HubsOnly {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = std::convert::Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Self::check(peer)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Self::check(peer)
    }

    fn on_swarm_event(&mut self, _: FromSwarm<'_>) {}

    fn on_connection_handler_event(&mut self, _: PeerId, _: ConnectionId, event: THandlerOutEvent<Self>) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}
