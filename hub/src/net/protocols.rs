//! The five request-response protocols: their names, message types and limits, and how each
//! reaches its behaviour in the swarm and its method on the [`InboundHandler`].

use std::collections::HashMap;
use std::fmt::Debug;

use libp2p::request_response::{self, OutboundRequestId};
use machinomy_core::PublicKey;
use machinomy_core::wire::{
    ChannelRequest, ChannelResponse, Invoice, InvoiceResponse, PayRequest, PayResponse, ServiceCall, ServiceResponse,
    TickRequest, WireError,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;

use super::behaviour::Behaviour;
use super::codec::WireCodec;
use super::{BoxFuture, InboundHandler, NetError};

/// Largest channel, pay, tick or invoice request or response (but see [`CHANNEL_RESPONSE_LIMIT`]).
pub const SMALL_LIMIT: usize = 16 * 1024;
/// Largest channel response: a seller's list of offers (up to 1 KiB each) must fit.
pub const CHANNEL_RESPONSE_LIMIT: usize = 64 * 1024;
/// Largest service call or result: the core's body limit plus room for the envelope.
pub const SERVICE_LIMIT: usize = 128 * 1024;

/// Where an outbound request's answer goes.
pub(super) type Reply<T> = oneshot::Sender<Result<T, NetError>>;

/// Outbound requests waiting for their answer, per protocol (request ids are per behaviour).
#[derive(Default)]
pub(super) struct PendingRequests {
    pub(super) channel: HashMap<OutboundRequestId, Reply<ChannelResponse>>,
    pub(super) pay: HashMap<OutboundRequestId, Reply<PayResponse>>,
    pub(super) tick: HashMap<OutboundRequestId, Reply<PayResponse>>,
    pub(super) invoice: HashMap<OutboundRequestId, Reply<InvoiceResponse>>,
    pub(super) service: HashMap<OutboundRequestId, Reply<ServiceResponse>>,
}

/// One peer protocol.
pub(super) trait Protocol: Send + 'static {
    type Request: Serialize + DeserializeOwned + Debug + Send + 'static;
    type Response: Serialize + DeserializeOwned + Debug + Send + 'static;
    /// The versioned protocol name negotiated on the stream.
    const NAME: &'static str;
    const REQUEST_LIMIT: usize;
    const RESPONSE_LIMIT: usize;

    /// The answer that refuses a request without asking the handler.
    fn refusal(error: WireError) -> Self::Response;
    fn handle(handler: &dyn InboundHandler, from: PublicKey, request: Self::Request) -> BoxFuture<'_, Self::Response>;
    fn behaviour(behaviour: &mut Behaviour) -> &mut request_response::Behaviour<WireCodec<Self>>
    where
        Self: Sized;
    fn pending(pending: &mut PendingRequests) -> &mut HashMap<OutboundRequestId, Reply<Self::Response>>;
}

macro_rules! protocol {
    (
        $(#[$doc:meta])* $name:ident, $field:ident, $method:ident,
        $request:ty, $response:ty, $error:path,
        $proto:literal, $request_limit:expr, $response_limit:expr
    ) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub(super) enum $name {}

        impl Protocol for $name {
            type Request = $request;
            type Response = $response;
            const NAME: &'static str = $proto;
            const REQUEST_LIMIT: usize = $request_limit;
            const RESPONSE_LIMIT: usize = $response_limit;

            fn refusal(error: WireError) -> $response {
                $error(error)
            }

            fn handle(handler: &dyn InboundHandler, from: PublicKey, request: $request) -> BoxFuture<'_, $response> {
                handler.$method(from, request)
            }

            fn behaviour(behaviour: &mut Behaviour) -> &mut request_response::Behaviour<WireCodec<Self>> {
                &mut behaviour.$field
            }

            fn pending(pending: &mut PendingRequests) -> &mut HashMap<OutboundRequestId, Reply<$response>> {
                &mut pending.$field
            }
        }
    };
}

protocol!(
    /// Channel proposals and resyncs.
    ChannelProtocol, channel, channel,
    ChannelRequest, ChannelResponse, ChannelResponse::Error,
    "/machinomy/channel/1", SMALL_LIMIT, CHANNEL_RESPONSE_LIMIT
);
protocol!(
    /// Payments on a channel, answered with receipts.
    PayProtocol, pay, pay,
    PayRequest, PayResponse, PayResponse::Error,
    "/machinomy/pay/1", SMALL_LIMIT, SMALL_LIMIT
);
protocol!(
    /// Ticks of a stream opened by a payment, answered with receipts like payments.
    TickProtocol, tick, tick,
    TickRequest, PayResponse, PayResponse::Error,
    "/machinomy/tick/1", SMALL_LIMIT, SMALL_LIMIT
);
protocol!(
    /// A payee's invoices; the payer's budget decides.
    InvoiceProtocol, invoice, invoice,
    Invoice, InvoiceResponse, InvoiceResponse::Error,
    "/machinomy/invoice/1", SMALL_LIMIT, SMALL_LIMIT
);
protocol!(
    /// Paid service calls.
    ServiceProtocol, service, call,
    ServiceCall, ServiceResponse, ServiceResponse::Error,
    "/machinomy/service/1", SERVICE_LIMIT, SERVICE_LIMIT
);
