//! Selling services: a peer buys a service the manifest lists in `grants.sell`, and the plugin
//! answers the [`Plugin::on_service_call`](crate::Plugin::on_service_call) with [`respond`],
//! in the handler or later.

use core::fmt;

use crate::{host, Error, Result};

/// A call of a service this plugin sells.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CallId(pub i64);

impl fmt::Display for CallId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// Answers a call: `Ok(body)` is the answer the buyer paid for, `Err(message)` tells the buyer
/// why there is none. At most [`abi::MAX_PAYLOAD`](crate::abi::MAX_PAYLOAD) bytes.
pub fn respond(call: CallId, answer: core::result::Result<&[u8], &str>) -> Result<()> {
    let (ok, body) = match answer {
        Ok(body) => (true, body),
        Err(message) => (false, message.as_bytes()),
    };
    Error::check(host::respond(call.0, ok, body)).map(drop)
}
