//! Status inquiries: while a reversal of an unknown-outcome transaction goes unanswered,
//! ask the bank (0600) what became of the original, at a bounded rate per bank, and settle
//! the transaction when the answer shows nothing stands at the bank.

use std::sync::Arc;
use std::time::Duration;

use bank_links::{Bank, Outcome};
use codec::{Message, MessageBuilder, Mti, tlv};
use tokio_util::sync::CancellationToken;

use crate::bank_io::bank_de90;
use crate::store::{Store, StoreError};

/// How often a worker looks for transactions to ask about.
pub const INQUIRY_ROUND_MS: u64 = 1_000;
/// One transaction is asked about at most this often.
pub const INQUIRY_REPEAT_MS: i64 = 10_000;

/// What the bank's answer says about the original.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finding {
    /// Nothing stands at the bank (unknown there, declined, or already reversed).
    NothingStands,
    /// The bank holds it approved: the reversal must still go through.
    Approved,
    /// No usable answer.
    Unclear,
}

/// Reads a 0610 from the bank.
pub fn finding(answer: &Message) -> Finding {
    match answer.raw(39) {
        Some(b"25") => Finding::NothingStands,
        Some(b"00") => {
            let status = answer
                .raw(48)
                .and_then(|d| tlv::find(d, b"ST").ok().flatten());
            match status {
                Some(b"DECLINED") | Some(b"REVERSED") => Finding::NothingStands,
                Some(b"APPROVED") => Finding::Approved,
                _ => Finding::Unclear,
            }
        }
        _ => Finding::Unclear,
    }
}

/// One bank's inquiry worker.
#[derive(Debug, Clone)]
pub struct InquiryWorker {
    pub store: Arc<dyn Store>,
    pub bank: Bank,
    pub acquirer_id: String,
    /// Inquiries per second at most (0 disables the worker).
    pub per_second: u32,
}

impl InquiryWorker {
    pub async fn run(self, shutdown: CancellationToken) {
        if self.per_second == 0 {
            return;
        }
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(INQUIRY_ROUND_MS)) => {}
            }
            if !self.bank.is_reachable() {
                continue;
            }
            if let Err(e) = self.round().await {
                tracing::warn!(bank = %self.bank.config.id, error = %e, "inquiry round failed");
            }
        }
    }

    async fn round(&self) -> Result<(), StoreError> {
        let due = self
            .store
            .claim_inquiries(
                &self.bank.config.id,
                i64::from(self.per_second),
                INQUIRY_REPEAT_MS,
            )
            .await?;
        for q in due {
            let found = self
                .ask(
                    &q.rrn,
                    &q.mti,
                    q.bank_stan.as_deref(),
                    q.bank_transmitted_at.as_deref(),
                )
                .await;
            tracing::info!(bank = %self.bank.config.id, rrn = %q.rrn, finding = ?found, "status inquiry answered");
            if found == Finding::NothingStands {
                self.store.reversal_answered(q.reversal_id, "IQ").await?;
            }
        }
        Ok(())
    }

    async fn ask(
        &self,
        rrn: &str,
        mti: &str,
        bank_stan: Option<&str>,
        bank_de7: Option<&str>,
    ) -> Finding {
        let bank = &self.bank;
        if !bank.is_reachable() {
            return Finding::Unclear;
        }
        let Ok(exchange) = crate::bank_io::BankExchange::ungated(bank) else {
            return Finding::Unclear;
        };
        let stan = exchange.stan();
        let stan_digits = bank_links::stan::format_stan(stan);
        let de7 = codec::clock::transmission(codec::clock::unix_now());
        let de90 = bank_de90(
            mti,
            bank_stan.unwrap_or("0"),
            bank_de7.unwrap_or("0"),
            &self.acquirer_id,
        );
        let mut b = MessageBuilder::new(bank.config.dialect, Mti::STATUS_REQUEST);
        b.set(7, &de7)
            .set(11, &stan_digits)
            .set(37, rrn.as_bytes())
            .set(90, de90.as_bytes());
        crate::bank_io::set_acquirer(&mut b, bank, &self.acquirer_id);
        let message = b.encode();
        let outcome = exchange.send(6, stan, rrn, message).await;
        match outcome {
            Outcome::Answered(answer) => finding(&answer),
            _ => Finding::Unclear,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use codec::builtin;

    fn answer(rc: &[u8], st: Option<&str>) -> Message {
        let d = builtin::bank_bcd();
        let mut de48 = Vec::new();
        if let Some(st) = st {
            tlv::push(&mut de48, b"ST", st.as_bytes()).unwrap();
        }
        let mut b = MessageBuilder::new(d, Mti::STATUS_RESPONSE);
        b.set(11, b"000001").set(39, rc);
        if st.is_some() {
            b.set(48, &de48);
        }
        d.decode(b.encode().unwrap()).unwrap()
    }

    // Proves which answers settle an unknown outcome and which leave it to the reversal.
    #[test]
    fn findings() {
        assert_eq!(finding(&answer(b"25", None)), Finding::NothingStands);
        assert_eq!(
            finding(&answer(b"00", Some("DECLINED"))),
            Finding::NothingStands
        );
        assert_eq!(
            finding(&answer(b"00", Some("REVERSED"))),
            Finding::NothingStands
        );
        assert_eq!(finding(&answer(b"00", Some("APPROVED"))), Finding::Approved);
        assert_eq!(finding(&answer(b"00", None)), Finding::Unclear);
        assert_eq!(finding(&answer(b"96", None)), Finding::Unclear);
    }
}
