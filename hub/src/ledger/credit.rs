//! The credit ledger: no chain, no deposit. The receiver grants the sender a credit line (up to
//! a per-peer maximum), promises are signed IOUs, and closing records the final amount, which
//! the two owners settle outside the system.

use machinomy_core::{Amount, ChannelTerms, Currency, LedgerId, PublicKey, Timestamp};

use super::{Closing, Ledger, LedgerError, LedgerFuture, Proposal};

#[derive(Debug, Clone)]
pub struct CreditLedger {
    id: LedgerId,
    currency: Currency,
    /// This hub's own key: it is the receiver of every channel it grants.
    receiver: PublicKey,
    max_credit_per_peer: Amount,
    /// The shortest settlement period a sender may propose.
    min_settlement_period_secs: u64,
}

impl CreditLedger {
    pub fn new(
        receiver: PublicKey,
        currency: Currency,
        max_credit_per_peer: Amount,
        min_settlement_period_secs: u64,
    ) -> Self {
        CreditLedger { id: LedgerId::credit(), currency, receiver, max_credit_per_peer, min_settlement_period_secs }
    }

    fn grant(&self, requested: Amount, granted_to_sender: Amount) -> Result<Amount, LedgerError> {
        let available = self.max_credit_per_peer.saturating_sub(granted_to_sender);
        if requested > available {
            return Err(LedgerError::CreditLimit { requested, available, limit: self.max_credit_per_peer });
        }
        Ok(requested)
    }
}

impl Ledger for CreditLedger {
    fn id(&self) -> &LedgerId {
        &self.id
    }

    fn currency(&self) -> &Currency {
        &self.currency
    }

    fn open<'a>(
        &'a self,
        proposal: &'a Proposal,
        granted_to_sender: Amount,
        now: Timestamp,
    ) -> LedgerFuture<'a, ChannelTerms> {
        Box::pin(async move {
            if proposal.capacity.is_zero() {
                return Err(LedgerError::ZeroCapacity);
            }
            if proposal.sender == self.receiver {
                return Err(LedgerError::SelfChannel);
            }
            if proposal.settlement_period_secs < self.min_settlement_period_secs {
                return Err(LedgerError::SettlementTooShort {
                    got: proposal.settlement_period_secs,
                    min: self.min_settlement_period_secs,
                });
            }
            let capacity = self.grant(proposal.capacity, granted_to_sender)?;
            Ok(ChannelTerms {
                id: proposal.channel,
                ledger: self.id.clone(),
                sender: proposal.sender,
                receiver: self.receiver,
                capacity,
                settlement_period_secs: proposal.settlement_period_secs,
                opened_at: now,
            })
        })
    }

    fn top_up<'a>(
        &'a self,
        terms: &'a ChannelTerms,
        additional: Amount,
        granted_to_sender: Amount,
    ) -> LedgerFuture<'a, Amount> {
        Box::pin(async move {
            if additional.is_zero() {
                return Err(LedgerError::ZeroCapacity);
            }
            self.grant(additional, granted_to_sender)?;
            terms.capacity.checked_add(additional).map_err(|_| LedgerError::Overflow)
        })
    }

    fn close<'a>(&'a self, terms: &'a ChannelTerms, final_amount: Amount, now: Timestamp) -> LedgerFuture<'a, Closing> {
        Box::pin(async move {
            // Credit needs no waiting when the receiver closes; a sender's close leaves the
            // receiver the settlement period to present a better promise.
            let wait = if terms.receiver == self.receiver { 0 } else { terms.settlement_period_secs };
            Ok(Closing { final_amount, settle_after: now.saturating_add_secs(wait) })
        })
    }

    fn settle<'a>(
        &'a self,
        _terms: &'a ChannelTerms,
        final_amount: Amount,
        _now: Timestamp,
    ) -> LedgerFuture<'a, Amount> {
        // Settled outside the system: recording it is all there is to do.
        Box::pin(async move { Ok(final_amount) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use machinomy_core::{ChannelId, SigningKey};

    fn ledger() -> CreditLedger {
        let me = PublicKey::from(SigningKey::from_bytes(&[1; 32]).verifying_key());
        CreditLedger::new(me, Currency::usd(), Amount::from_base_units(1000), 60)
    }

    fn proposal(capacity: u128) -> Proposal {
        Proposal {
            channel: ChannelId::from_bytes([9; 32]),
            sender: PublicKey::from(SigningKey::from_bytes(&[2; 32]).verifying_key()),
            capacity: Amount::from_base_units(capacity),
            settlement_period_secs: 3600,
        }
    }

    #[tokio::test]
    async fn grants_credit_up_to_the_per_peer_maximum() {
        let ledger = ledger();
        let terms = ledger.open(&proposal(600), Amount::ZERO, Timestamp(5)).await.unwrap();
        assert_eq!(terms.capacity, Amount::from_base_units(600));
        assert_eq!(terms.ledger, LedgerId::credit());
        let err = ledger.open(&proposal(600), Amount::from_base_units(600), Timestamp(5)).await.unwrap_err();
        assert_eq!(
            err,
            LedgerError::CreditLimit {
                requested: Amount::from_base_units(600),
                available: Amount::from_base_units(400),
                limit: Amount::from_base_units(1000)
            }
        );
    }

    #[tokio::test]
    async fn refuses_zero_capacity_and_short_settlement() {
        let ledger = ledger();
        assert_eq!(ledger.open(&proposal(0), Amount::ZERO, Timestamp(0)).await, Err(LedgerError::ZeroCapacity));
        let mut short = proposal(10);
        short.settlement_period_secs = 1;
        assert!(matches!(
            ledger.open(&short, Amount::ZERO, Timestamp(0)).await,
            Err(LedgerError::SettlementTooShort { .. })
        ));
    }

    #[tokio::test]
    async fn top_up_counts_against_the_same_limit() {
        let ledger = ledger();
        let terms = ledger.open(&proposal(900), Amount::ZERO, Timestamp(0)).await.unwrap();
        assert!(ledger.top_up(&terms, Amount::from_base_units(200), terms.capacity).await.is_err());
        assert_eq!(
            ledger.top_up(&terms, Amount::from_base_units(100), terms.capacity).await,
            Ok(Amount::from_base_units(1000))
        );
    }
}
