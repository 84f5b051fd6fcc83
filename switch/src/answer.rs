//! An answer as the merchant gets it (DE39, DE37, DE38), its compact form in Redis, and
//! the response message built around it.

use bytes::Bytes;
use codec::{Message, MessageBuilder};

use crate::checks::Rc;
use crate::content::ContentDigest;
use crate::merchants::Merchant;

/// The parts of a response that make it the same answer when repeated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub rc: Rc,
    pub rrn: Option<String>,
    pub auth: Option<String>,
}

impl Answer {
    /// A refusal with no transaction behind it.
    pub fn refused(rc: Rc) -> Answer {
        Answer {
            rc,
            rrn: None,
            auth: None,
        }
    }

    /// `A|rc|rrn|auth|content` as stored under the idempotency key (`content`: the
    /// request's digest in hex, [`crate::content`]).
    pub fn to_redis(&self, content: ContentDigest) -> String {
        format!(
            "A|{}|{}|{}|{}",
            self.rc.as_str(),
            self.rrn.as_deref().unwrap_or(""),
            self.auth.as_deref().unwrap_or(""),
            content.to_hex()
        )
    }

    /// An answer stored by [`to_redis`](Self::to_redis); None for an in-flight claim.
    pub fn from_redis(v: &str) -> Option<Answer> {
        let mut parts = v.split('|');
        if parts.next()? != "A" {
            return None;
        }
        let rc = Rc::parse(parts.next()?)?;
        let opt = |s: Option<&str>| s.filter(|s| !s.is_empty()).map(str::to_string);
        Some(Answer {
            rc,
            rrn: opt(parts.next()),
            auth: opt(parts.next()),
        })
    }

    /// The content digest a Redis value remembers: the last field of an answer
    /// (`A|rc|rrn|auth|content`) or of a claim (`P|instance|content`); None when it
    /// remembers none (a rate-limit refusal stored before digests were kept).
    pub fn content_in_redis(v: &str) -> Option<ContentDigest> {
        ContentDigest::from_hex(v.rsplit('|').next()?)
    }
}

/// The contract puts DE38 on every approval. Banks often send none for completions,
/// refunds and reversals; the switch then gives its own: the last six digits of the RRN,
/// stable across retransmissions.
pub(crate) fn switch_auth_code(rrn: &str) -> String {
    rrn[rrn.len().saturating_sub(6)..].to_string()
}

/// Elements a response echoes from its request, when the request had them.
pub(crate) const ECHOED: [u8; 8] = [3, 4, 7, 11, 41, 42, 49, 70];

/// What an answer to a message that could not be parsed echoes (the contract: whichever
/// of these could be read).
pub(crate) const ECHOED_WHEN_UNPARSEABLE: [u8; 4] = [7, 11, 41, 42];

/// Builds the response to `req` with `extra` elements; MAC'd with the merchant's key when
/// the merchant is known.
pub(crate) fn respond(
    req: &Message,
    merchant: Option<&Merchant>,
    answer: &Answer,
    extra: &[(u8, &[u8])],
) -> Option<Bytes> {
    respond_echoing(req, merchant, answer, extra, &ECHOED)
}

/// [`respond`] echoing only the elements in `echo` (for a salvaged, partly read request).
pub(crate) fn respond_echoing(
    req: &Message,
    merchant: Option<&Merchant>,
    answer: &Answer,
    extra: &[(u8, &[u8])],
    echo: &[u8],
) -> Option<Bytes> {
    let dialect = req.dialect();
    let echoed: Vec<(u8, std::borrow::Cow<'_, [u8]>)> = echo
        .iter()
        .filter_map(|&n| req.get(n).map(|v| (n, v)))
        .collect();
    let mut b = MessageBuilder::new(dialect, req.mti().response());
    for (n, v) in &echoed {
        b.set(*n, v);
    }
    b.set(39, &answer.rc.0);
    if let Some(rrn) = &answer.rrn {
        b.set(37, rrn.as_bytes());
    }
    if answer.rc == Rc::APPROVED
        && let Some(auth) = &answer.auth
    {
        b.set(38, auth.as_bytes());
    }
    for (n, v) in extra {
        b.set(*n, v);
    }
    let encoded = match merchant {
        Some(m) => b.encode_with_mac(&m.mac_key),
        None => b.encode(),
    };
    match encoded {
        Ok(bytes) => Some(bytes),
        Err(e) => {
            tracing::error!(error = %e, mti = %req.mti(), "response could not be encoded");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves the Redis form round-trips and in-flight claims are not answers.
    #[test]
    fn redis_form() {
        let a = Answer {
            rc: Rc::APPROVED,
            rrn: Some("000000001000".into()),
            auth: Some("A1B2C3".into()),
        };
        let content = ContentDigest([7; crate::content::DIGEST_LEN]);
        let stored = a.to_redis(content);
        assert_eq!(Answer::from_redis(&stored), Some(a));
        assert_eq!(Answer::content_in_redis(&stored), Some(content));
        assert_eq!(
            Answer::from_redis("A|65|||"),
            Some(Answer::refused(Rc::FREQUENCY))
        );
        assert_eq!(Answer::content_in_redis("A|65|||"), None, "no digest kept");
        let claim = format!("P|1|{}", content.to_hex());
        assert_eq!(Answer::from_redis(&claim), None);
        assert_eq!(Answer::content_in_redis(&claim), Some(content));
        assert_eq!(Answer::content_in_redis("P|1"), None, "an older claim");
    }
}
