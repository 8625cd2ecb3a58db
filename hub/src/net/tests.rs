//! Hubs talking to each other over real libp2p connections on 127.0.0.1 (ports chosen by the
//! OS), plus a "raw" peer that speaks the service protocol without our codec's manners.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use libp2p::futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, StreamProtocol, Swarm, SwarmBuilder, gossipsub, noise, request_response, tcp, yamux};
use machinomy_core::wire::{
    ChannelProposal, ChannelRequest, ChannelResponse, ErrorCode, Invoice, InvoiceResponse, PayRequest, PayResponse,
    Receipt, ServiceCall, ServiceOffer, ServiceResponse, TickRequest, WireError,
};
use machinomy_core::{Amount, ChannelId, LedgerId, Promise, PromiseBody, PublicKey, SigningKey, Tick, Timestamp};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinSet;

use super::*;

/// Every test finishes well within this, or fails instead of hanging.
const TEST_TIMEOUT: Duration = Duration::from_secs(60);

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(TEST_TIMEOUT, future).await {
        Ok(value) => value,
        Err(_) => panic!("{what} did not finish within {TEST_TIMEOUT:?}"),
    }
}

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn promise(seed: u8, amount: u128) -> Promise {
    PromiseBody {
        ledger: LedgerId::credit(),
        channel: ChannelId::from_bytes([seed; 32]),
        amount: Amount::from_base_units(amount),
        stream: None,
    }
    .sign(&key(seed))
}

fn offer(seller: u8, name: &str) -> ServiceOffer {
    ServiceOffer::sign(name, Amount::from_base_units(1000), "USD", "a test service", Timestamp(u64::MAX), &key(seller))
}

/// Holds requests in the handler until it is opened.
struct Gate {
    entered: mpsc::Sender<()>,
    open: watch::Receiver<bool>,
}

/// Answers every protocol predictably and records the offers it hears.
struct TestHandler {
    key: SigningKey,
    offers: mpsc::Sender<(PublicKey, ServiceOffer)>,
    gate: Option<Gate>,
}

impl TestHandler {
    async fn pass_gate(&self) {
        if let Some(gate) = &self.gate {
            gate.entered.send(()).await.unwrap();
            gate.open.clone().wait_for(|open| *open).await.unwrap();
        }
    }
}

impl InboundHandler for TestHandler {
    fn channel(&self, _from: PublicKey, request: ChannelRequest) -> BoxFuture<'_, ChannelResponse> {
        Box::pin(async move {
            self.pass_gate().await;
            match request {
                ChannelRequest::Resync { channel } => {
                    ChannelResponse::State { channel, accepted: Amount::from_base_units(3), best: None, tick: None }
                }
                ChannelRequest::Offers => ChannelResponse::Offers {
                    offers: vec![ServiceOffer::sign(
                        "echo",
                        Amount::from_base_units(1),
                        "USD",
                        "says it back",
                        Timestamp(u64::MAX),
                        &self.key,
                    )],
                },
                ChannelRequest::Propose(proposal) => ChannelResponse::Error(WireError::new(
                    ErrorCode::CreditLimit,
                    format!("no credit line of {} for {}", proposal.capacity.base_units(), proposal.sender),
                )),
            }
        })
    }

    fn pay(&self, _from: PublicKey, request: PayRequest) -> BoxFuture<'_, PayResponse> {
        Box::pin(async move {
            self.pass_gate().await;
            let body = &request.promise.body;
            PayResponse::Receipt(Receipt::sign(body.channel, body.amount, body.amount, Timestamp(1), &self.key))
        })
    }

    fn tick(&self, _from: PublicKey, request: TickRequest) -> BoxFuture<'_, PayResponse> {
        Box::pin(async move {
            self.pass_gate().await;
            if request.tick.preimage == [0; 32] {
                return PayResponse::Error(WireError::new(ErrorCode::WrongPreimage, "not the next link"));
            }
            let increment = Amount::from_base_units(u128::from(request.tick.index));
            PayResponse::Receipt(Receipt::sign(request.channel, increment, increment, Timestamp(1), &self.key))
        })
    }

    fn invoice(&self, _from: PublicKey, request: Invoice) -> BoxFuture<'_, InvoiceResponse> {
        Box::pin(async move {
            self.pass_gate().await;
            if request.amount > Amount::from_base_units(100) {
                InvoiceResponse::Denied { reason: format!("{} is over budget", request.reference) }
            } else {
                InvoiceResponse::Pending { approval: 7 }
            }
        })
    }

    fn call(&self, from: PublicKey, request: ServiceCall) -> BoxFuture<'_, ServiceResponse> {
        Box::pin(async move {
            self.pass_gate().await;
            let body = &request.promise.body;
            let receipt = Receipt::sign(body.channel, body.amount, body.amount, Timestamp(1), &self.key);
            match request.service.as_str() {
                "echo" => ServiceResponse::Result { body: request.body, receipt },
                "whoami" => ServiceResponse::Result { body: from.as_bytes().to_vec(), receipt },
                _ => ServiceResponse::Error(WireError {
                    code: ErrorCode::PaymentRequired,
                    message: format!("{} costs more", request.service),
                    required: Some(Amount::from_base_units(42)),
                }),
            }
        })
    }

    fn offer(&self, from: PublicKey, offer: ServiceOffer) {
        let _ = self.offers.try_send((from, offer));
    }
}

fn loopback() -> NetConfig {
    NetConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".into(), "/ip4/127.0.0.1/udp/0/quic-v1".into()],
        ..NetConfig::default()
    }
}

struct Node {
    net: NetHandle,
    task: NetTask,
    offers: mpsc::Receiver<(PublicKey, ServiceOffer)>,
}

impl Node {
    async fn start(seed: u8, config: NetConfig) -> Node {
        Node::start_gated(seed, config, None).await
    }

    async fn start_gated(seed: u8, config: NetConfig, gate: Option<Gate>) -> Node {
        let (offers_tx, offers) = mpsc::channel(16);
        let handler = Arc::new(TestHandler { key: key(seed), offers: offers_tx, gate });
        let (net, task) = start(&key(seed), &config, handler).await.unwrap();
        Node { net, task, offers }
    }

    fn key(&self) -> PublicKey {
        self.net.public_key()
    }

    async fn addr(&self, transport: &str) -> String {
        let addrs = self.net.listen_addrs().await.unwrap();
        addrs.into_iter().find(|a| a.contains(transport)).unwrap()
    }
}

/// Waits for the first event that `wanted` picks out.
async fn wait_for<T>(events: &mut broadcast::Receiver<NetEvent>, mut wanted: impl FnMut(&NetEvent) -> Option<T>) -> T {
    within("waiting for a network event", async {
        loop {
            match events.recv().await {
                Ok(event) => {
                    if let Some(found) = wanted(&event) {
                        return found;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => panic!("the network stopped"),
            }
        }
    })
    .await
}

#[tokio::test]
async fn dialing_an_address_connects_and_names_the_peer() {
    within("dial", async {
        let a = Node::start(1, loopback()).await;
        let b = Node::start(2, loopback()).await;
        let c = Node::start(3, loopback()).await;

        let tcp = b.addr("/tcp/").await;
        assert!(tcp.ends_with(&format!("/p2p/{}", b.net.peer_id())), "{tcp}");
        assert_eq!(a.net.dial(&tcp).await.unwrap(), b.key());
        // QUIC, and an address that does not name the peer.
        let quic = b.addr("/quic-v1").await;
        let bare = quic.split("/p2p/").next().unwrap();
        assert_eq!(c.net.dial(bare).await.unwrap(), b.key());

        let peers = a.net.peers().await.unwrap();
        let info = peers.iter().find(|p| p.key == b.key()).unwrap();
        assert!(info.connected);
        assert_eq!(info.peer_id, b.net.peer_id());
        assert!(info.addrs.iter().any(|addr| tcp.starts_with(addr.as_str())), "{info:?}");

        assert!(matches!(a.net.dial("/ip4/127.0.0.1/tcp/notaport").await, Err(NetError::BadAddress { .. })));
        let own = a.addr("/tcp/").await;
        assert!(matches!(a.net.dial(&own).await, Err(NetError::Dial { .. })));
        // Nothing listens on port 1.
        assert!(matches!(a.net.dial("/ip4/127.0.0.1/tcp/1").await, Err(NetError::Dial { .. })));
    })
    .await;
}

#[tokio::test]
async fn every_protocol_round_trips() {
    within("round trips", async {
        let a = Node::start(1, loopback()).await;
        let b = Node::start(2, loopback()).await;
        a.net.dial(&b.addr("/tcp/").await).await.unwrap();

        let channel = ChannelId::from_bytes([5; 32]);
        let state = a.net.channel(b.key(), ChannelRequest::Resync { channel }).await.unwrap();
        assert_eq!(
            state,
            ChannelResponse::State { channel, accepted: Amount::from_base_units(3), best: None, tick: None }
        );

        let ChannelResponse::Offers { offers } = a.net.channel(b.key(), ChannelRequest::Offers).await.unwrap() else {
            panic!("no offers")
        };
        assert_eq!(offers.len(), 1);
        offers[0].verify(Timestamp(0)).unwrap();
        assert_eq!(offers[0].seller, b.key());

        let paid = promise(1, 25);
        let PayResponse::Receipt(receipt) =
            a.net.pay(b.key(), PayRequest { promise: paid.clone(), memo: "coffee".into() }).await.unwrap()
        else {
            panic!("no receipt")
        };
        assert_eq!(receipt.total, Amount::from_base_units(25));
        receipt.verify(&b.key()).unwrap();

        let tick = TickRequest { channel, tick: Tick { index: 4, preimage: [9; 32] }, memo: "a minute".into() };
        let PayResponse::Receipt(receipt) = a.net.tick(b.key(), tick).await.unwrap() else { panic!("no receipt") };
        assert_eq!((receipt.channel, receipt.total), (channel, Amount::from_base_units(4)));
        receipt.verify(&b.key()).unwrap();
        let forged = TickRequest { channel, tick: Tick { index: 5, preimage: [0; 32] }, memo: String::new() };
        assert!(matches!(
            a.net.tick(b.key(), forged).await.unwrap(),
            PayResponse::Error(WireError { code: ErrorCode::WrongPreimage, .. })
        ));

        let invoice = Invoice { amount: Amount::from_base_units(10), memo: "rent".into(), reference: "r-1".into() };
        assert_eq!(a.net.invoice(b.key(), invoice).await.unwrap(), InvoiceResponse::Pending { approval: 7 });

        let body = vec![0xee; SERVICE_LIMIT / 2];
        let call = ServiceCall { service: "echo".into(), body: body.clone(), promise: paid.clone() };
        let ServiceResponse::Result { body: echoed, .. } = a.net.call(b.key(), call).await.unwrap() else {
            panic!("no result")
        };
        assert_eq!(echoed, body);

        // The handler learns who is asking from the connection, not from the message.
        let whoami = ServiceCall { service: "whoami".into(), body: Vec::new(), promise: paid };
        let ServiceResponse::Result { body: caller, .. } = b.net.call(a.key(), whoami).await.unwrap() else {
            panic!("no result")
        };
        assert_eq!(caller, b.key().as_bytes().to_vec());
    })
    .await;
}

#[tokio::test]
async fn refusals_from_the_handler_arrive_intact() {
    within("refusals", async {
        let a = Node::start(1, loopback()).await;
        let b = Node::start(2, loopback()).await;
        a.net.dial(&b.addr("/quic-v1").await).await.unwrap();

        let proposal = ChannelProposal {
            channel: ChannelId::from_bytes([6; 32]),
            ledger: LedgerId::credit(),
            sender: a.key(),
            capacity: Amount::from_base_units(500),
            settlement_period_secs: 60,
        };
        let refused = a.net.channel(b.key(), ChannelRequest::Propose(proposal)).await.unwrap();
        assert_eq!(
            refused,
            ChannelResponse::Error(WireError::new(
                ErrorCode::CreditLimit,
                format!("no credit line of 500 for {}", a.key())
            ))
        );

        let call = ServiceCall { service: "premium".into(), body: vec![1, 2, 3], promise: promise(1, 1) };
        assert_eq!(
            a.net.call(b.key(), call).await.unwrap(),
            ServiceResponse::Error(WireError {
                code: ErrorCode::PaymentRequired,
                message: "premium costs more".into(),
                required: Some(Amount::from_base_units(42)),
            })
        );

        let invoice = Invoice { amount: Amount::from_base_units(1000), memo: String::new(), reference: "big".into() };
        assert_eq!(
            a.net.invoice(b.key(), invoice).await.unwrap(),
            InvoiceResponse::Denied { reason: "big is over budget".into() }
        );
    })
    .await;
}

#[tokio::test]
async fn requests_that_cannot_be_sent_fail_clearly() {
    within("failures", async {
        let a = Node::start(1, loopback()).await;
        let resync = || ChannelRequest::Resync { channel: ChannelId::from_bytes([1; 32]) };
        assert!(matches!(a.net.channel(a.key(), resync()).await, Err(NetError::ToSelf)));
        // A hub nobody knows the address of.
        let stranger = PublicKey::from(key(77).verifying_key());
        assert!(matches!(a.net.channel(stranger, resync()).await, Err(NetError::Unreachable(k)) if k == stranger));
        let not_a_key =
            (0u8..=255).map(|b| PublicKey::from_bytes([b; 32])).find(|k| k.verifying_key().is_err()).unwrap();
        assert!(matches!(a.net.channel(not_a_key, resync()).await, Err(NetError::BadKey(_))));
        let too_big = ServiceCall { service: "echo".into(), body: vec![0; SERVICE_LIMIT], promise: promise(1, 1) };
        assert!(matches!(a.net.call(stranger, too_big).await, Err(NetError::TooLarge { limit: SERVICE_LIMIT, .. })));
        assert!(matches!(a.net.find_providers("").await, Err(NetError::BadServiceName)));
    })
    .await;
}

#[tokio::test]
async fn beyond_the_inbound_limit_requests_are_refused_as_busy() {
    within("busy", async {
        let (entered_tx, mut entered) = mpsc::channel(2 * MAX_INBOUND);
        let (open, open_rx) = watch::channel(false);
        let b = Node::start_gated(2, loopback(), Some(Gate { entered: entered_tx, open: open_rx })).await;
        let b_addr = b.addr("/tcp/").await;
        let to = b.key();

        // Two peers, each with as many requests on each protocol as one connection carries
        // at once: twice the limit in all.
        fn busy(error: &WireError) -> bool {
            error.code == ErrorCode::ServiceUnavailable
        }
        let mut requests: JoinSet<Result<bool, String>> = JoinSet::new();
        let mut peers = Vec::new();
        for seed in [1, 3] {
            let a = Node::start(seed, loopback()).await;
            a.net.dial(&b_addr).await.unwrap();
            for i in 0..MAX_INBOUND / 4 {
                let net = a.net.clone();
                requests.spawn(async move {
                    match net.channel(to, ChannelRequest::Resync { channel: ChannelId::from_bytes([1; 32]) }).await {
                        Ok(ChannelResponse::Error(e)) => Ok(busy(&e)),
                        Ok(_) => Ok(false),
                        Err(e) => Err(e.to_string()),
                    }
                });
                let net = a.net.clone();
                requests.spawn(async move {
                    match net.pay(to, PayRequest { promise: promise(seed, 1), memo: String::new() }).await {
                        Ok(PayResponse::Error(e)) => Ok(busy(&e)),
                        Ok(_) => Ok(false),
                        Err(e) => Err(e.to_string()),
                    }
                });
                let net = a.net.clone();
                requests.spawn(async move {
                    let invoice = Invoice { amount: Amount::ZERO, memo: String::new(), reference: i.to_string() };
                    match net.invoice(to, invoice).await {
                        Ok(InvoiceResponse::Error(e)) => Ok(busy(&e)),
                        Ok(_) => Ok(false),
                        Err(e) => Err(e.to_string()),
                    }
                });
                let net = a.net.clone();
                requests.spawn(async move {
                    let call = ServiceCall { service: "echo".into(), body: Vec::new(), promise: promise(seed, 1) };
                    match net.call(to, call).await {
                        Ok(ServiceResponse::Error(e)) => Ok(busy(&e)),
                        Ok(_) => Ok(false),
                        Err(e) => Err(e.to_string()),
                    }
                });
            }
            peers.push(a);
        }

        // The first MAX_INBOUND to arrive are held in the handler; every other one is
        // answered "busy" at once.
        for _ in 0..MAX_INBOUND {
            entered.recv().await.unwrap();
        }
        for _ in 0..MAX_INBOUND {
            assert_eq!(requests.join_next().await.unwrap().unwrap(), Ok(true));
        }
        open.send(true).unwrap();
        let mut served = 0;
        while let Some(done) = requests.join_next().await {
            assert_eq!(done.unwrap(), Ok(false));
            served += 1;
        }
        assert_eq!(served, MAX_INBOUND);
        assert!(entered.try_recv().is_err());
    })
    .await;
}

#[tokio::test]
async fn gossiped_offers_reach_the_other_hub() {
    within("gossip", async {
        let mut a = Node::start(1, loopback()).await;
        let b = Node::start(2, loopback()).await;
        let mut events = b.net.events();
        b.net.dial(&a.addr("/tcp/").await).await.unwrap();
        let a_key = a.key();
        wait_for(&mut events, |e| matches!(e, NetEvent::OffersSubscribed { key } if *key == a_key).then_some(())).await;

        let weather = offer(2, "weather");
        let announced = b.net.announce(weather.clone()).await.unwrap();
        assert!(announced.gossiped);
        let (from, heard) = a.offers.recv().await.unwrap();
        assert_eq!(from, b.key());
        assert_eq!(heard, weather);
        assert_eq!(heard.verify(Timestamp(0)), Ok(()));
    })
    .await;
}

#[tokio::test]
async fn providers_are_found_through_a_peer_both_sides_know() {
    within("providers", async {
        let b = Node::start(2, loopback()).await;
        let b_addr = b.addr("/tcp/").await;
        let mut b_events = b.net.events();
        let via_b = NetConfig { bootstrap: vec![b_addr.clone()], ..loopback() };

        // C sells; B learns where C is.
        let c = Node::start(3, via_b.clone()).await;
        let c_key = c.key();
        c.net.dial(&b_addr).await.unwrap();
        wait_for(&mut b_events, |e| matches!(e, NetEvent::Discovered { key } if *key == c_key).then_some(())).await;
        let announced = c.net.announce(offer(3, "weather")).await.unwrap();
        assert!(announced.provided, "{announced:?}");

        // A knows only B.
        let a = Node::start(1, via_b).await;
        a.net.dial(&b_addr).await.unwrap();
        assert_eq!(a.net.find_providers("weather").await.unwrap(), vec![c_key]);
        assert_eq!(a.net.find_providers("astrology").await.unwrap(), Vec::<PublicKey>::new());

        // A never dialled C, yet can call it: the DHT says where it is.
        let call = ServiceCall { service: "whoami".into(), body: Vec::new(), promise: promise(1, 1) };
        let ServiceResponse::Result { body, .. } = a.net.call(c_key, call).await.unwrap() else { panic!("no result") };
        assert_eq!(body, a.key().as_bytes().to_vec());
    })
    .await;
}

#[tokio::test]
async fn a_hub_behind_a_relay_is_reached_through_the_circuit() {
    within("relay", async {
        let r = Node::start(9, NetConfig { relay_server: true, ..loopback() }).await;
        let r_addr = r.addr("/tcp/").await;

        // C listens nowhere itself: only through R.
        let c = Node::start(3, NetConfig { listen: Vec::new(), relays: vec![r_addr.clone()], ..NetConfig::default() })
            .await;
        let mut c_events = c.net.events();
        let circuit = format!("{r_addr}/p2p-circuit/p2p/{}", c.net.peer_id());
        // Reachable once the relay has accepted the reservation.
        while !c.net.listen_addrs().await.unwrap().contains(&circuit) {
            wait_for(&mut c_events, |e| matches!(e, NetEvent::ListenAddr { .. }).then_some(())).await;
        }

        // A is given only the circuit address.
        let a = Node::start(1, loopback()).await;
        assert_eq!(a.net.dial(&circuit).await.unwrap(), c.key());
        let call = ServiceCall { service: "echo".into(), body: b"over the relay".to_vec(), promise: promise(1, 1) };
        let ServiceResponse::Result { body, .. } = a.net.call(c.key(), call).await.unwrap() else {
            panic!("no result")
        };
        assert_eq!(body, b"over the relay");
    })
    .await;
}

#[tokio::test]
async fn shutdown_stops_the_loop_and_fails_later_calls() {
    within("shutdown", async {
        let a = Node::start(1, loopback()).await;
        let b = Node::start(2, loopback()).await;
        a.net.dial(&b.addr("/tcp/").await).await.unwrap();
        let mut events = a.net.events();
        let b_key = b.key();
        let Node { net: b_net, task: b_task, .. } = b;
        b_task.shutdown().await;
        assert!(matches!(b_net.peers().await, Err(NetError::Stopped)));
        wait_for(&mut events, |e| matches!(e, NetEvent::Disconnected { key } if *key == b_key).then_some(())).await;
        let resync = ChannelRequest::Resync { channel: ChannelId::from_bytes([1; 32]) };
        assert!(a.net.channel(b_key, resync).await.is_err());

        // Dropping every handle ends the loop too.
        let Node { net, mut task, .. } = a;
        let join = task.join.take().unwrap();
        drop(net);
        join.await.unwrap();
    })
    .await;
}

// ---- a peer without manners ----

/// Writes whatever bytes it is given as a request; reads any response up to 1 MiB.
#[derive(Clone, Default)]
struct RawCodec;

impl request_response::Codec for RawCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Vec<u8>> {
        let mut bytes = Vec::new();
        io.take(1 << 20).read_to_end(&mut bytes).await?;
        Ok(bytes)
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Vec<u8>> {
        let mut bytes = Vec::new();
        io.take(1 << 20).read_to_end(&mut bytes).await?;
        Ok(bytes)
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        request: Vec<u8>,
    ) -> io::Result<()> {
        io.write_all(&request).await?;
        io.close().await
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        response: Vec<u8>,
    ) -> io::Result<()> {
        io.write_all(&response).await?;
        io.close().await
    }
}

#[derive(NetworkBehaviour)]
struct RawBehaviour {
    service: request_response::Behaviour<RawCodec>,
    gossipsub: gossipsub::Behaviour,
}

struct RawPeer {
    swarm: Swarm<RawBehaviour>,
}

impl RawPeer {
    fn new() -> RawPeer {
        let swarm = SwarmBuilder::with_new_identity()
            .with_tokio()
            .with_tcp(tcp::Config::default(), noise::Config::new, yamux::Config::default)
            .unwrap()
            .with_behaviour(|key| RawBehaviour {
                service: request_response::Behaviour::with_codec(
                    RawCodec,
                    [(StreamProtocol::new("/machinomy/service/1"), request_response::ProtocolSupport::Outbound)],
                    request_response::Config::default(),
                ),
                gossipsub: gossipsub::Behaviour::new(
                    gossipsub::MessageAuthenticity::Signed(key.clone()),
                    gossipsub::Config::default(),
                )
                .unwrap(),
            })
            .unwrap()
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
            .build();
        RawPeer { swarm }
    }

    async fn connect(&mut self, addr: &str) -> PeerId {
        let addr: Multiaddr = addr.parse().unwrap();
        self.swarm.dial(addr).unwrap();
        loop {
            if let SwarmEvent::ConnectionEstablished { peer_id, .. } = self.swarm.select_next_some().await {
                return peer_id;
            }
        }
    }

    /// Sends `bytes` on a service stream and says whether the hub refused to answer (reset
    /// or closed the stream without a response).
    async fn refused(&mut self, peer: PeerId, bytes: Vec<u8>) -> bool {
        match self.request(peer, bytes).await {
            Err(_) => true,
            Ok(response) => response.is_empty(),
        }
    }

    /// Sends `bytes` on a service stream: the response's bytes, or why there were none.
    async fn request(&mut self, peer: PeerId, bytes: Vec<u8>) -> Result<Vec<u8>, String> {
        let id = self.swarm.behaviour_mut().service.send_request(&peer, bytes);
        loop {
            match self.swarm.select_next_some().await {
                SwarmEvent::Behaviour(RawBehaviourEvent::Service(request_response::Event::Message {
                    message: request_response::Message::Response { request_id, response },
                    ..
                })) if request_id == id => return Ok(response),
                SwarmEvent::Behaviour(RawBehaviourEvent::Service(request_response::Event::OutboundFailure {
                    request_id,
                    error,
                    ..
                })) if request_id == id => return Err(error.to_string()),
                _ => {}
            }
        }
    }

    async fn echo(&mut self, peer: PeerId, body: &[u8]) -> Vec<u8> {
        let call = ServiceCall { service: "echo".into(), body: body.to_vec(), promise: promise(1, 1) };
        let bytes = self.request(peer, codec::encode(&call, SERVICE_LIMIT).unwrap()).await.unwrap();
        match codec::decode::<ServiceResponse>(&bytes, SERVICE_LIMIT).unwrap() {
            ServiceResponse::Result { body, .. } => body,
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn oversized_requests_are_refused_and_the_connection_stays_usable() {
    within("oversized", async {
        let a = Node::start(1, loopback()).await;
        let mut raw = RawPeer::new();
        let hub = raw.connect(&a.addr("/tcp/").await).await;

        // A well-formed call, one byte string too long for the limit.
        let call = ServiceCall { service: "echo".into(), body: vec![7; SERVICE_LIMIT], promise: promise(1, 1) };
        let bytes = codec::encode(&call, usize::MAX).unwrap();
        assert!(bytes.len() > SERVICE_LIMIT);
        assert!(raw.refused(hub, bytes).await);
        // Far beyond it: the hub stops reading one byte past the limit.
        assert!(raw.refused(hub, vec![0x5a; 4 * SERVICE_LIMIT]).await);

        assert!(raw.swarm.is_connected(&hub));
        assert_eq!(raw.echo(hub, b"still here").await, b"still here");
        // The node serves others as before.
        let b = Node::start(2, loopback()).await;
        b.net.dial(&a.addr("/tcp/").await).await.unwrap();
        let resync = ChannelRequest::Resync { channel: ChannelId::from_bytes([1; 32]) };
        assert!(matches!(b.net.channel(a.key(), resync).await, Ok(ChannelResponse::State { .. })));
    })
    .await;
}

#[tokio::test]
async fn garbage_on_a_service_stream_does_not_hurt_the_hub() {
    within("garbage", async {
        let a = Node::start(1, loopback()).await;
        let mut raw = RawPeer::new();
        let hub = raw.connect(&a.addr("/tcp/").await).await;

        let valid = codec::encode(
            &ServiceCall { service: "echo".into(), body: vec![1; 100], promise: promise(1, 1) },
            SERVICE_LIMIT,
        )
        .unwrap();
        let mut nested = vec![0x81; 50_000];
        nested.push(0);
        let garbage: Vec<Vec<u8>> = vec![
            Vec::new(),
            vec![0xff; 64],
            b"GET / HTTP/1.1\r\n\r\n".to_vec(),
            valid[..valid.len() / 2].to_vec(),
            [valid.as_slice(), &[0]].concat(),
            nested,
            // A byte string that claims to be 4 GiB long.
            vec![0x5a, 0xff, 0xff, 0xff, 0xff, 1, 2, 3],
        ];
        for bytes in garbage {
            assert!(raw.refused(hub, bytes.clone()).await, "{:?} was answered", &bytes[..bytes.len().min(16)]);
        }
        assert!(raw.swarm.is_connected(&hub));
        assert_eq!(raw.echo(hub, b"fine").await, b"fine");
    })
    .await;
}

#[tokio::test]
async fn gossiped_garbage_is_ignored() {
    within("gossip garbage", async {
        let mut a = Node::start(1, loopback()).await;
        let mut raw = RawPeer::new();
        let topic = gossipsub::IdentTopic::new(OFFER_TOPIC);
        raw.swarm.behaviour_mut().gossipsub.subscribe(&topic).unwrap();
        let hub = raw.connect(&a.addr("/tcp/").await).await;
        // Wait until the raw peer knows the hub listens to offers.
        loop {
            if let SwarmEvent::Behaviour(RawBehaviourEvent::Gossipsub(gossipsub::Event::Subscribed { peer_id, .. })) =
                raw.swarm.select_next_some().await
                && peer_id == hub
            {
                break;
            }
        }
        let valid = offer(5, "weather");
        let gossip = &mut raw.swarm.behaviour_mut().gossipsub;
        gossip.publish(topic.clone(), b"not cbor at all".to_vec()).unwrap();
        gossip.publish(topic.clone(), codec::encode(&"a string, not an offer", OFFER_LIMIT).unwrap()).unwrap();
        gossip.publish(topic.clone(), codec::encode(&valid, OFFER_LIMIT).unwrap()).unwrap();
        let raw_key = peer::public_key_of(raw.swarm.local_peer_id()).unwrap();
        // Keep the raw peer's swarm running while the hub takes the messages in.
        let heard = tokio::select! {
            heard = a.offers.recv() => heard.unwrap(),
            _ = async { loop { raw.swarm.select_next_some().await; } } => unreachable!(),
        };
        assert_eq!(heard, (raw_key, valid));
        assert!(a.offers.try_recv().is_err());
    })
    .await;
}

// ---- mDNS ----

/// Set in the child process that runs inside its own network namespace.
const NETNS_ENV: &str = "MACHINOMY_NET_TEST_NETNS";
const MDNS_TEST: &str = "net::tests::mdns_finds_hubs_on_the_local_network";

/// mDNS needs a multicast-capable interface that is not loopback (libp2p-mdns skips loopback,
/// and loopback has no MULTICAST flag). As root the test re-runs itself in a fresh network
/// namespace with a veth pair, so no packet leaves the machine; otherwise it says why it
/// cannot run.
#[test]
fn mdns_finds_hubs_on_the_local_network() {
    if std::env::var_os(NETNS_ENV).is_some() {
        return tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(mdns_in_netns());
    }
    use std::os::unix::fs::MetadataExt;
    if std::fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(1) != 0 {
        eprintln!("mdns_finds_hubs_on_the_local_network: not run, a network namespace needs root");
        return;
    }
    let script = "ip link add mdns0 type veth peer name mdns1 \
        && ip addr add 10.77.0.1/24 dev mdns0 \
        && ip link set mdns0 up && ip link set mdns1 up && ip link set lo up \
        && ip route add 224.0.0.0/4 dev mdns0 \
        && exec \"$0\" --exact \"$1\" --nocapture --test-threads=1";
    let output = std::process::Command::new("unshare")
        .args(["--net", "sh", "-c", script])
        .arg(std::env::current_exe().unwrap())
        .arg(MDNS_TEST)
        .env(NETNS_ENV, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "mDNS test in a network namespace failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("1 passed"), "the mDNS test did not run:\n{stdout}\n{stderr}");
}

async fn mdns_in_netns() {
    within("mdns", async {
        let on_lan = NetConfig { listen: vec!["/ip4/10.77.0.1/tcp/0".into()], mdns: true, ..NetConfig::default() };
        let a = Node::start(1, on_lan.clone()).await;
        let mut events = a.net.events();
        let b = Node::start(2, on_lan).await;
        let b_key = b.key();
        wait_for(&mut events, |e| matches!(e, NetEvent::Connected { key } if *key == b_key).then_some(())).await;
        // No address was ever given: both found each other.
        let resync = ChannelRequest::Resync { channel: ChannelId::from_bytes([1; 32]) };
        assert!(matches!(a.net.channel(b_key, resync).await, Ok(ChannelResponse::State { .. })));
    })
    .await;
}
