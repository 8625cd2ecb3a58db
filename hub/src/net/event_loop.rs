//! The one task that owns the swarm: it takes commands from [`NetHandle`](super::NetHandle)s,
//! keeps what they wait for pending by id, and turns swarm events into answers.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use libp2p::core::ConnectedPoint;
use libp2p::core::transport::ListenerId;
use libp2p::futures::StreamExt;
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance};
use libp2p::multiaddr::Protocol as AddrProtocol;
use libp2p::request_response::{self, ResponseChannel};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, identify, identity, kad, mdns, relay};
use machinomy_core::PublicKey;
use machinomy_core::wire::{ErrorCode, MAX_NAME, ServiceOffer, WireError};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::{JoinError, JoinSet};
use tracing::{debug, error, info, warn};

use super::behaviour::{Behaviour, BehaviourEvent, KAD_PROTOCOL, build_swarm};
use super::peer::{parse_addr, parse_peer_addr, public_key_of, split_peer, with_peer};
use super::protocols::{
    ChannelProtocol, InvoiceProtocol, PayProtocol, PendingRequests, Protocol, Reply, ServiceProtocol, TickProtocol,
};
use super::{
    Announced, InboundHandler, MAX_INBOUND, NetConfig, NetError, NetEvent, OFFER_LIMIT, OFFER_TOPIC, PeerInfo,
    REQUEST_TIMEOUT, codec,
};

/// How often bootstrap peers and relays that dropped are dialled again.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(30);
/// Requests waiting for a DHT lookup of their peer, at most.
const MAX_PARKED: usize = 1024;

/// An outbound request of protocol `P`.
pub(super) struct Outbound<P: Protocol> {
    pub(super) peer: PeerId,
    pub(super) request: P::Request,
    pub(super) reply: Reply<P::Response>,
}

/// What a [`NetHandle`](super::NetHandle) asks of the event loop.
pub(super) enum Command {
    ListenAddrs { reply: Reply<Vec<Multiaddr>> },
    Dial { addr: Multiaddr, reply: Reply<PeerId> },
    Peers { reply: Reply<Vec<PeerInfo>> },
    Channel(Outbound<ChannelProtocol>),
    Pay(Outbound<PayProtocol>),
    Tick(Outbound<TickProtocol>),
    Invoice(Outbound<InvoiceProtocol>),
    Service(Outbound<ServiceProtocol>),
    Announce { bytes: Vec<u8>, key: kad::RecordKey, reply: Reply<Announced> },
    FindProviders { key: kad::RecordKey, reply: Reply<Vec<PublicKey>> },
}

/// The Kademlia key under which the providers of `service` are found.
pub(super) fn service_key(service: &str) -> Result<kad::RecordKey, NetError> {
    if service.is_empty() || service.len() > MAX_NAME {
        return Err(NetError::BadServiceName);
    }
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"machinomy/service/1\0");
    hasher.update(service.as_bytes());
    Ok(kad::RecordKey::new(hasher.finalize().as_bytes()))
}

/// A request waiting for its peer's addresses.
type Parked = Box<dyn FnOnce(&mut EventLoop) + Send>;

/// An inbound request's answer, ready to go back on its stream.
struct Answer(Box<dyn FnOnce(&mut Behaviour) + Send>);

struct PendingDial {
    addr: Multiaddr,
    reply: Reply<PeerId>,
}

struct ProviderQuery {
    found: BTreeSet<PeerId>,
    reply: Reply<Vec<PublicKey>>,
}

struct PendingAnnounce {
    gossiped: bool,
    reply: Reply<Announced>,
}

pub(super) struct EventLoop {
    swarm: Swarm<Behaviour>,
    local: PeerId,
    commands: mpsc::Receiver<Command>,
    events: broadcast::Sender<NetEvent>,
    handler: Arc<dyn InboundHandler>,
    /// Inbound requests being handled; each ends in an [`Answer`].
    inbound: JoinSet<Answer>,
    requests: PendingRequests,
    dials: HashMap<ConnectionId, PendingDial>,
    provider_queries: HashMap<kad::QueryId, ProviderQuery>,
    announces: HashMap<kad::QueryId, PendingAnnounce>,
    /// DHT lookups of peers that requests are waiting for.
    lookups: HashMap<kad::QueryId, (PeerId, Vec<Parked>)>,
    looking_up: HashMap<PeerId, kad::QueryId>,
    parked: usize,
    /// Configured listeners that have not reported an address yet.
    starting: HashSet<ListenerId>,
    listen_waiters: Vec<Reply<Vec<Multiaddr>>>,
    listen_addrs: Vec<Multiaddr>,
    /// Open connections per peer, with the address dialled (none for inbound ones).
    connections: HashMap<PeerId, Vec<(ConnectionId, Option<Multiaddr>)>>,
    bootstrap: Vec<(PeerId, Multiaddr)>,
    relays: Vec<(PeerId, Multiaddr)>,
    relay_listeners: HashMap<PeerId, ListenerId>,
    relay_server: bool,
    topic: IdentTopic,
    maintenance: tokio::time::Interval,
}

impl EventLoop {
    pub(super) fn new(
        keypair: identity::Keypair,
        config: &NetConfig,
        handler: Arc<dyn InboundHandler>,
        commands: mpsc::Receiver<Command>,
        events: broadcast::Sender<NetEvent>,
    ) -> Result<EventLoop, NetError> {
        // Read every address before building anything, so a typo fails fast and clearly.
        let listen = config.listen.iter().map(|a| parse_addr(a).map(|m| (a, m))).collect::<Result<Vec<_>, _>>()?;
        let bootstrap = config.bootstrap.iter().map(|a| parse_peer_addr(a)).collect::<Result<Vec<_>, _>>()?;
        let relays = config.relays.iter().map(|a| parse_peer_addr(a)).collect::<Result<Vec<_>, _>>()?;

        let local = keypair.public().to_peer_id();
        let mut swarm = build_swarm(keypair, config)?;
        let topic = IdentTopic::new(OFFER_TOPIC);
        swarm.behaviour_mut().gossipsub.subscribe(&topic).map_err(|e| NetError::Setup(format!("gossipsub: {e}")))?;

        let mut starting = HashSet::new();
        for (text, addr) in listen {
            let id =
                swarm.listen_on(addr).map_err(|e| NetError::Listen { addr: text.clone(), reason: e.to_string() })?;
            starting.insert(id);
        }

        let period = tokio::time::Instant::now() + MAINTENANCE_INTERVAL;
        let mut maintenance = tokio::time::interval_at(period, MAINTENANCE_INTERVAL);
        maintenance.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        let mut event_loop = EventLoop {
            swarm,
            local,
            commands,
            events,
            handler,
            inbound: JoinSet::new(),
            requests: PendingRequests::default(),
            dials: HashMap::new(),
            provider_queries: HashMap::new(),
            announces: HashMap::new(),
            lookups: HashMap::new(),
            looking_up: HashMap::new(),
            parked: 0,
            starting,
            listen_waiters: Vec::new(),
            listen_addrs: Vec::new(),
            connections: HashMap::new(),
            bootstrap,
            relays,
            relay_listeners: HashMap::new(),
            relay_server: config.relay_server,
            topic,
            maintenance,
        };
        for (peer, addr) in event_loop.bootstrap.clone() {
            let (transport, _) = split_peer(addr.clone());
            event_loop.swarm.behaviour_mut().kad.add_address(&peer, transport);
        }
        event_loop.dial_known();
        if !event_loop.bootstrap.is_empty() {
            // Also re-run by Kademlia itself, periodically and as the routing table fills.
            let _ = event_loop.swarm.behaviour_mut().kad.bootstrap();
        }
        Ok(event_loop)
    }

    pub(super) async fn run(mut self, mut stop: oneshot::Receiver<()>) {
        loop {
            tokio::select! {
                _ = &mut stop => break,
                command = self.commands.recv() => match command {
                    Some(command) => self.on_command(command),
                    // Every handle is gone: nobody can ask for anything any more.
                    None => break,
                },
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                Some(done) = self.inbound.join_next(), if !self.inbound.is_empty() => self.on_answer(done),
                _ = self.maintenance.tick() => self.dial_known(),
            }
        }
        // Dropping the rest fails whatever is still pending with `NetError::Stopped`.
        self.inbound.shutdown().await;
        debug!("network event loop stopped");
    }

    fn emit(&self, event: NetEvent) {
        // No listener is fine.
        let _ = self.events.send(event);
    }

    /// Dials bootstrap peers and relays we are not connected to.
    fn dial_known(&mut self) {
        let known: Vec<(PeerId, Multiaddr)> = self.bootstrap.iter().chain(self.relays.iter()).cloned().collect();
        for (peer, addr) in known {
            if self.swarm.is_connected(&peer) {
                continue;
            }
            let opts = DialOpts::peer_id(peer)
                .addresses(vec![addr.clone()])
                .condition(PeerCondition::DisconnectedAndNotDialing);
            if let Err(e) = self.swarm.dial(opts.build()) {
                debug!(%addr, "cannot dial: {e}");
            }
        }
    }

    // ---- commands ----

    fn on_command(&mut self, command: Command) {
        match command {
            Command::ListenAddrs { reply } => {
                if self.starting.is_empty() {
                    let _ = reply.send(Ok(self.full_listen_addrs()));
                } else {
                    self.listen_waiters.push(reply);
                }
            }
            Command::Dial { addr, reply } => self.dial(addr, reply),
            Command::Peers { reply } => {
                let _ = reply.send(Ok(self.peers()));
            }
            Command::Channel(outbound) => self.send_request(outbound),
            Command::Pay(outbound) => self.send_request(outbound),
            Command::Tick(outbound) => self.send_request(outbound),
            Command::Invoice(outbound) => self.send_request(outbound),
            Command::Service(outbound) => self.send_request(outbound),
            Command::Announce { bytes, key, reply } => self.announce(bytes, key, reply),
            Command::FindProviders { key, reply } => {
                let id = self.swarm.behaviour_mut().kad.get_providers(key);
                self.provider_queries.insert(id, ProviderQuery { found: BTreeSet::new(), reply });
            }
        }
    }

    fn full_listen_addrs(&self) -> Vec<Multiaddr> {
        let mut out: Vec<Multiaddr> = Vec::new();
        for addr in self.listen_addrs.iter().chain(self.swarm.external_addresses()) {
            let full = with_peer(addr, self.local);
            if !out.contains(&full) {
                out.push(full);
            }
        }
        out
    }

    fn dial(&mut self, addr: Multiaddr, reply: Reply<PeerId>) {
        let (_, peer) = split_peer(addr.clone());
        let opts = match peer {
            Some(peer) if peer == self.local => {
                let _ = reply.send(Err(NetError::Dial { addr: addr.to_string(), reason: "that is this hub".into() }));
                return;
            }
            Some(peer) if self.swarm.is_connected(&peer) => {
                let _ = reply.send(Ok(peer));
                return;
            }
            Some(peer) => {
                DialOpts::peer_id(peer).addresses(vec![addr.clone()]).condition(PeerCondition::Always).build()
            }
            None => DialOpts::unknown_peer_id().address(addr.clone()).build(),
        };
        let id = opts.connection_id();
        match self.swarm.dial(opts) {
            Ok(()) => {
                self.dials.insert(id, PendingDial { addr, reply });
            }
            Err(e) => {
                let _ = reply.send(Err(NetError::Dial { addr: addr.to_string(), reason: e.to_string() }));
            }
        }
    }

    fn peers(&mut self) -> Vec<PeerInfo> {
        let mut known: BTreeMap<PeerId, BTreeSet<Multiaddr>> = BTreeMap::new();
        for bucket in self.swarm.behaviour_mut().kad.kbuckets() {
            for entry in bucket.iter() {
                known.entry(*entry.node.key.preimage()).or_default().extend(entry.node.value.iter().cloned());
            }
        }
        for (peer, connections) in &self.connections {
            let addrs = known.entry(*peer).or_default();
            addrs.extend(connections.iter().filter_map(|(_, dialled)| dialled.clone()).map(|a| split_peer(a).0));
        }
        known
            .into_iter()
            .filter_map(|(peer, addrs)| {
                Some(PeerInfo {
                    key: public_key_of(&peer)?,
                    peer_id: peer.to_string(),
                    addrs: addrs.iter().map(ToString::to_string).collect(),
                    connected: self.swarm.is_connected(&peer),
                })
            })
            .collect()
    }

    /// Sends a request; to a peer that is neither connected nor in the routing table, only
    /// after asking the DHT where it is.
    fn send_request<P: Protocol>(&mut self, outbound: Outbound<P>) {
        let peer = outbound.peer;
        if self.swarm.is_connected(&peer) || self.kad_knows(&peer) || self.parked >= MAX_PARKED {
            return self.send_now(outbound);
        }
        let query = match self.looking_up.get(&peer) {
            Some(query) => *query,
            None => {
                let query = self.swarm.behaviour_mut().kad.get_closest_peers(peer);
                self.looking_up.insert(peer, query);
                query
            }
        };
        self.parked += 1;
        self.lookups.entry(query).or_insert_with(|| (peer, Vec::new())).1.push(Box::new(move |event_loop| {
            event_loop.parked -= 1;
            event_loop.send_now(outbound);
        }));
    }

    fn kad_knows(&mut self, peer: &PeerId) -> bool {
        self.swarm
            .behaviour_mut()
            .kad
            .kbucket(*peer)
            .is_some_and(|bucket| bucket.iter().any(|entry| entry.node.key.preimage() == peer))
    }

    fn send_now<P: Protocol>(&mut self, outbound: Outbound<P>) {
        let Outbound { peer, request, reply } = outbound;
        let id = P::behaviour(self.swarm.behaviour_mut()).send_request(&peer, request);
        P::pending(&mut self.requests).insert(id, reply);
    }

    fn announce(&mut self, bytes: Vec<u8>, key: kad::RecordKey, reply: Reply<Announced>) {
        let behaviour = self.swarm.behaviour_mut();
        let gossiped = match behaviour.gossipsub.publish(self.topic.clone(), bytes) {
            Ok(_) => true,
            Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => false,
            Err(e) => {
                let _ = reply.send(Err(NetError::Publish(e.to_string())));
                return;
            }
        };
        match behaviour.kad.start_providing(key) {
            Ok(id) => {
                self.announces.insert(id, PendingAnnounce { gossiped, reply });
            }
            Err(e) => {
                let _ = reply.send(Err(NetError::Provide(e.to_string())));
            }
        }
    }

    // ---- inbound requests ----

    fn on_inbound<P: Protocol>(&mut self, peer: PeerId, request: P::Request, channel: ResponseChannel<P::Response>) {
        // HubsOnly refuses other peers before any stream opens; dropping the channel resets it.
        let Some(from) = public_key_of(&peer) else { return };
        if self.inbound.len() >= MAX_INBOUND {
            debug!(%peer, protocol = P::NAME, "too many requests in progress; refusing");
            let busy = P::refusal(WireError::new(ErrorCode::ServiceUnavailable, "this hub is busy; try again later"));
            let _ = P::behaviour(self.swarm.behaviour_mut()).send_response(channel, busy);
            return;
        }
        let handler = Arc::clone(&self.handler);
        self.inbound.spawn(async move {
            let response = match tokio::time::timeout(REQUEST_TIMEOUT, P::handle(&*handler, from, request)).await {
                Ok(response) => response,
                Err(_) => {
                    warn!(protocol = P::NAME, "the handler did not answer in time");
                    P::refusal(WireError::new(ErrorCode::Internal, "the hub did not answer in time"))
                }
            };
            let response = match codec::encode(&response, P::RESPONSE_LIMIT) {
                Ok(_) => response,
                Err(e) => {
                    warn!(protocol = P::NAME, "cannot send the handler's answer: {e}");
                    P::refusal(WireError::new(ErrorCode::Internal, "the answer is too large to send"))
                }
            };
            Answer(Box::new(move |behaviour: &mut Behaviour| {
                if P::behaviour(behaviour).send_response(channel, response).is_err() {
                    debug!(protocol = P::NAME, "the peer left before the answer");
                }
            }))
        });
    }

    fn on_answer(&mut self, done: Result<Answer, JoinError>) {
        match done {
            Ok(Answer(send)) => send(self.swarm.behaviour_mut()),
            // The stream is reset when its channel drops with the task.
            Err(e) if e.is_panic() => error!("an inbound request handler panicked: {e}"),
            Err(_) => {}
        }
    }

    // ---- swarm events ----

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event),
            SwarmEvent::NewListenAddr { listener_id, address } => {
                info!(%address, "listening");
                if self.relay_server && !address.iter().any(|p| p == AddrProtocol::P2pCircuit) {
                    // A relay serves others at the addresses it listens on.
                    self.swarm.add_external_address(address.clone());
                }
                self.emit(NetEvent::ListenAddr { addr: with_peer(&address, self.local).to_string() });
                if !self.listen_addrs.contains(&address) {
                    self.listen_addrs.push(address);
                }
                self.listener_started(listener_id);
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.listen_addrs.retain(|a| a != &address);
                self.emit(NetEvent::ListenAddrExpired { addr: with_peer(&address, self.local).to_string() });
            }
            SwarmEvent::ListenerClosed { listener_id, addresses, reason } => {
                debug!(?addresses, ?reason, "listener closed");
                self.listen_addrs.retain(|a| !addresses.contains(a));
                self.relay_listeners.retain(|_, id| *id != listener_id);
                self.listener_started(listener_id);
            }
            SwarmEvent::ListenerError { error, .. } => warn!("listener error: {error}"),
            SwarmEvent::ConnectionEstablished { peer_id, connection_id, endpoint, num_established, .. } => {
                self.on_connected(peer_id, connection_id, &endpoint, num_established.get());
            }
            SwarmEvent::ConnectionClosed { peer_id, connection_id, num_established, cause, .. } => {
                debug!(%peer_id, ?cause, "connection closed");
                if let Some(connections) = self.connections.get_mut(&peer_id) {
                    connections.retain(|(id, _)| *id != connection_id);
                    if connections.is_empty() {
                        self.connections.remove(&peer_id);
                    }
                }
                if num_established == 0
                    && let Some(key) = public_key_of(&peer_id)
                {
                    self.emit(NetEvent::Disconnected { key });
                }
            }
            SwarmEvent::OutgoingConnectionError { connection_id, peer_id, error } => {
                debug!(?peer_id, "dial failed: {error}");
                if let Some(dial) = self.dials.remove(&connection_id) {
                    let _ =
                        dial.reply.send(Err(NetError::Dial { addr: dial.addr.to_string(), reason: error.to_string() }));
                }
            }
            SwarmEvent::IncomingConnectionError { send_back_addr, error, .. } => {
                debug!(%send_back_addr, "incoming connection failed: {error}");
            }
            _ => {}
        }
    }

    fn listener_started(&mut self, listener: ListenerId) {
        if self.starting.remove(&listener) && self.starting.is_empty() {
            let addrs = self.full_listen_addrs();
            for waiter in self.listen_waiters.drain(..) {
                let _ = waiter.send(Ok(addrs.clone()));
            }
        }
    }

    fn on_connected(&mut self, peer: PeerId, id: ConnectionId, endpoint: &ConnectedPoint, established: u32) {
        let dialled = match endpoint {
            ConnectedPoint::Dialer { address, .. } => Some(address.clone()),
            ConnectedPoint::Listener { .. } => None,
        };
        self.connections.entry(peer).or_default().push((id, dialled.clone()));
        if let Some(dial) = self.dials.remove(&id) {
            if let Some(address) = dialled {
                // Remember where it was, for reconnecting.
                self.swarm.add_peer_address(peer, split_peer(address).0);
            }
            let _ = dial.reply.send(Ok(peer));
        }
        if established == 1
            && let Some(key) = public_key_of(&peer)
        {
            self.emit(NetEvent::Connected { key });
        }
        // Reachable through a relay once connected to it directly.
        if !endpoint.is_relayed()
            && !self.relay_listeners.contains_key(&peer)
            && let Some((_, relay)) = self.relays.iter().find(|(relay, _)| *relay == peer)
        {
            let circuit = relay.clone().with(AddrProtocol::P2pCircuit);
            match self.swarm.listen_on(circuit.clone()) {
                Ok(listener) => {
                    self.relay_listeners.insert(peer, listener);
                }
                Err(e) => warn!(%circuit, "cannot listen through the relay: {e}"),
            }
        }
    }

    fn on_behaviour_event(&mut self, event: BehaviourEvent) {
        match event {
            BehaviourEvent::Channel(event) => self.on_request_response::<ChannelProtocol>(event),
            BehaviourEvent::Pay(event) => self.on_request_response::<PayProtocol>(event),
            BehaviourEvent::Tick(event) => self.on_request_response::<TickProtocol>(event),
            BehaviourEvent::Invoice(event) => self.on_request_response::<InvoiceProtocol>(event),
            BehaviourEvent::Service(event) => self.on_request_response::<ServiceProtocol>(event),
            BehaviourEvent::Gossipsub(gossipsub::Event::Message { propagation_source, message_id, message }) => {
                let acceptance = self.on_gossip(&message);
                self.swarm.behaviour_mut().gossipsub.report_message_validation_result(
                    &message_id,
                    &propagation_source,
                    acceptance,
                );
            }
            BehaviourEvent::Gossipsub(gossipsub::Event::Subscribed { peer_id, topic }) => {
                if topic == self.topic.hash()
                    && let Some(key) = public_key_of(&peer_id)
                {
                    self.emit(NetEvent::OffersSubscribed { key });
                }
            }
            BehaviourEvent::Kad(kad::Event::RoutingUpdated { peer, is_new_peer: true, .. }) => {
                if let Some(key) = public_key_of(&peer) {
                    self.emit(NetEvent::Discovered { key });
                }
            }
            BehaviourEvent::Kad(event) => self.on_kad(event),
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                if info.protocols.contains(&KAD_PROTOCOL) {
                    let kad = &mut self.swarm.behaviour_mut().kad;
                    for addr in info.listen_addrs {
                        kad.add_address(&peer_id, addr);
                    }
                }
            }
            BehaviourEvent::Mdns(mdns::Event::Discovered(found)) => {
                for (peer, addr) in found {
                    if peer == self.local || public_key_of(&peer).is_none() {
                        continue;
                    }
                    debug!(%peer, %addr, "found on the local network");
                    self.swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
                    self.swarm.add_peer_address(peer, addr);
                    let opts = DialOpts::peer_id(peer).condition(PeerCondition::DisconnectedAndNotDialing).build();
                    if let Err(e) = self.swarm.dial(opts) {
                        debug!(%peer, "cannot dial a local peer: {e}");
                    }
                }
            }
            BehaviourEvent::RelayClient(relay::client::Event::ReservationReqAccepted { relay_peer_id, .. }) => {
                info!(relay = %relay_peer_id, "reachable through the relay");
            }
            other => debug!(event = ?other, "network event"),
        }
    }

    /// Hands a gossiped offer to the hub; garbage is rejected (and not forwarded).
    fn on_gossip(&self, message: &gossipsub::Message) -> MessageAcceptance {
        if message.topic != self.topic.hash() {
            return MessageAcceptance::Reject;
        }
        let Some(from) = message.source.as_ref().and_then(public_key_of) else {
            return MessageAcceptance::Reject;
        };
        match codec::decode::<ServiceOffer>(&message.data, OFFER_LIMIT) {
            Ok(offer) => {
                self.handler.offer(from, offer);
                MessageAcceptance::Accept
            }
            Err(e) => {
                debug!(%from, "ignoring a gossiped offer: {e}");
                MessageAcceptance::Reject
            }
        }
    }

    fn on_request_response<P: Protocol>(&mut self, event: request_response::Event<P::Request, P::Response>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request { request, channel, .. } => {
                    self.on_inbound::<P>(peer, request, channel);
                }
                request_response::Message::Response { request_id, response } => {
                    if let Some(reply) = P::pending(&mut self.requests).remove(&request_id) {
                        let _ = reply.send(Ok(response));
                    }
                }
            },
            request_response::Event::OutboundFailure { peer, request_id, error, .. } => {
                debug!(%peer, protocol = P::NAME, "request failed: {error}");
                if let Some(reply) = P::pending(&mut self.requests).remove(&request_id) {
                    let error = match error {
                        request_response::OutboundFailure::DialFailure => match public_key_of(&peer) {
                            Some(key) => NetError::Unreachable(key),
                            None => NetError::ConnectionClosed,
                        },
                        request_response::OutboundFailure::Timeout => NetError::Timeout("request"),
                        request_response::OutboundFailure::ConnectionClosed => NetError::ConnectionClosed,
                        request_response::OutboundFailure::UnsupportedProtocols => {
                            NetError::UnsupportedProtocol(P::NAME)
                        }
                        request_response::OutboundFailure::Io(e) => NetError::Stream(e.to_string()),
                    };
                    let _ = reply.send(Err(error));
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                debug!(%peer, protocol = P::NAME, "inbound request failed: {error}");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    fn on_kad(&mut self, event: kad::Event) {
        let kad::Event::OutboundQueryProgressed { id, result, step, .. } = event else {
            return;
        };
        match result {
            kad::QueryResult::GetProviders(result) => {
                let Some(query) = self.provider_queries.get_mut(&id) else { return };
                let finished = match result {
                    Ok(kad::GetProvidersOk::FoundProviders { providers, .. }) => {
                        let local = self.local;
                        query.found.extend(providers.into_iter().filter(|p| *p != local));
                        step.last
                    }
                    Ok(kad::GetProvidersOk::FinishedWithNoAdditionalRecord { .. }) => true,
                    Err(e) => {
                        debug!("provider query ended: {e}");
                        true
                    }
                };
                if finished && let Some(query) = self.provider_queries.remove(&id) {
                    let keys = query.found.iter().filter_map(public_key_of).collect();
                    let _ = query.reply.send(Ok(keys));
                }
            }
            kad::QueryResult::StartProviding(result) => {
                if let Some(announce) = self.announces.remove(&id) {
                    if let Err(e) = &result {
                        debug!("provider record not stored remotely: {e}");
                    }
                    let _ =
                        announce.reply.send(Ok(Announced { gossiped: announce.gossiped, provided: result.is_ok() }));
                }
            }
            kad::QueryResult::GetClosestPeers(result) => {
                let Some((target, parked)) = self.lookups.remove(&id) else { return };
                self.looking_up.remove(&target);
                let peers = match result {
                    Ok(ok) => ok.peers,
                    Err(kad::GetClosestPeersError::Timeout { peers, .. }) => peers,
                };
                for info in peers.into_iter().filter(|info| info.peer_id == target) {
                    for addr in info.addrs {
                        self.swarm.add_peer_address(target, addr);
                    }
                }
                for send in parked {
                    send(self);
                }
            }
            other => debug!(result = ?other, "kademlia query progressed"),
        }
    }
}
