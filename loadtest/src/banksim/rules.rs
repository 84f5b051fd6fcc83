//! The simulated bank's rules as plain functions: what to answer ([`decide`]), what the
//! answer holds ([`build_response`]) and how its frame header reads ([`reply_header`]).
//! Nothing here touches a socket, a clock or the record, so every rule is unit-tested.

use std::borrow::Cow;

use bytes::Bytes;
use codec::{Dialect, EncodeError, Message, MessageBuilder, Mti};

/// Response codes the simulator uses (ISO 8583:1987 DE39).
pub mod code {
    pub const APPROVED: &str = "00";
    pub const DO_NOT_HONOUR: &str = "05";
    pub const INVALID_TRANSACTION: &str = "12";
    pub const INVALID_AMOUNT: &str = "13";
    pub const INSUFFICIENT_FUNDS: &str = "51";
    pub const ISSUER_UNAVAILABLE: &str = "91";
}

/// Network management information codes (DE70).
pub mod network {
    pub const SIGN_ON: u64 = 1;
    pub const SIGN_OFF: u64 = 2;
    pub const ECHO: u64 = 301;
}

/// The TPDU is `ID, destination (2), source (2)`.
pub const TPDU_LEN: usize = 5;

/// Elements a network management answer echoes.
const ECHO_NETWORK: [u8; 4] = [7, 11, 32, 70];
/// Elements every other answer echoes when the request had them; 11 and 37 are what the
/// switch matches on, the rest let it check the answer is for the transaction it sent.
const ECHO_FINANCIAL: [u8; 8] = [3, 4, 7, 11, 37, 41, 42, 49];

/// Switches for fault tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Behaviour {
    /// Never answer an echo test (0800 DE70 301), so the switch sees a dead link.
    pub ignore_echo: bool,
    /// Answer sign-on (0800 DE70 001) with 91, so the link never comes up.
    pub refuse_sign_on: bool,
}

/// The parts of a request the rules look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestView {
    pub mti: Mti,
    /// DE3.
    pub processing_code: Option<String>,
    /// DE4, in minor units.
    pub amount_minor: Option<u64>,
    /// DE70.
    pub network_code: Option<u64>,
}

impl RequestView {
    pub fn of(msg: &Message) -> Self {
        RequestView {
            mti: msg.mti(),
            processing_code: msg.get_str(3).map(Cow::into_owned),
            amount_minor: msg.get_u64(4),
            network_code: msg.get_u64(70),
        }
    }

    fn transaction_type(&self) -> Option<&str> {
        self.processing_code.as_deref().and_then(|p| p.get(..2))
    }
}

/// What the bank does with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Answer a network management request (0810) with this code.
    Network(&'static str),
    /// Approve a purchase or pre-authorisation: 00 with a DE38 authorisation code.
    Authorise,
    /// Approve without an authorisation code: refunds and completions.
    Accept,
    /// Answer a reversal 00, whether or not there is anything to undo.
    Reverse,
    /// Decline a financial request with this code.
    Decline(&'static str),
    /// The `91` test card: record it, never answer it.
    Withhold,
    /// Not something this bank answers; the reason is for the log.
    Ignore(&'static str),
}

impl Decision {
    /// The DE39 the answer carries, if there is an answer.
    pub fn response_code(&self) -> Option<&'static str> {
        match self {
            Decision::Network(c) | Decision::Decline(c) => Some(c),
            Decision::Authorise | Decision::Accept | Decision::Reverse => Some(code::APPROVED),
            Decision::Withhold | Decision::Ignore(_) => None,
        }
    }
}

/// The merchant contract's test-card rules (docs/bank-protocol.md), by request type.
pub fn decide(req: &RequestView, behaviour: &Behaviour) -> Decision {
    if !req.mti.is_request() {
        return Decision::Ignore("not a request");
    }
    // Repeats (0201, 0221, 0401) are decided like their originals.
    match req.mti.original().as_bytes() {
        b"0800" => match req.network_code {
            Some(network::SIGN_ON) if behaviour.refuse_sign_on => {
                Decision::Network(code::ISSUER_UNAVAILABLE)
            }
            Some(network::ECHO) if behaviour.ignore_echo => Decision::Ignore("echo ignored"),
            Some(network::SIGN_ON | network::SIGN_OFF | network::ECHO) => {
                Decision::Network(code::APPROVED)
            }
            _ => Decision::Network(code::INVALID_TRANSACTION),
        },
        b"0100" | b"0200" => match (req.mti.class(), req.transaction_type()) {
            (_, Some("00")) => purchase(req.amount_minor),
            (2, Some("20")) => Decision::Accept,
            _ => Decision::Decline(code::INVALID_TRANSACTION),
        },
        b"0220" => Decision::Accept,
        b"0400" | b"0420" => Decision::Reverse,
        _ => Decision::Ignore("unsupported message type"),
    }
}

/// The last two digits of the amount pick the outcome.
fn purchase(amount_minor: Option<u64>) -> Decision {
    match amount_minor.map(|a| a % 100) {
        None => Decision::Decline(code::INVALID_AMOUNT),
        Some(51) => Decision::Decline(code::INSUFFICIENT_FUNDS),
        Some(5) => Decision::Decline(code::DO_NOT_HONOUR),
        Some(91) => Decision::Withhold,
        Some(_) => Decision::Authorise,
    }
}

/// The answer to `req`: its response MTI, the echoed elements, DE39 and, when given, DE38.
pub fn build_response(
    dialect: &Dialect,
    req: &Message,
    response_code: &str,
    auth_code: Option<&str>,
) -> Result<Bytes, EncodeError> {
    let echo: &[u8] = if req.mti().class() == 8 {
        &ECHO_NETWORK
    } else {
        &ECHO_FINANCIAL
    };
    let values: Vec<(u8, Cow<'_, [u8]>)> = echo
        .iter()
        .filter_map(|&n| req.get(n).map(|v| (n, v)))
        .collect();
    let mut b = MessageBuilder::new(dialect, req.mti().response());
    for (n, v) in &values {
        b.set(*n, v);
    }
    b.set(39, response_code.as_bytes());
    if let Some(a) = auth_code {
        b.set(38, a.as_bytes());
    }
    b.encode()
}

/// The answer's frame header: a TPDU with source and destination swapped, so it routes
/// back to the sender; any other header is echoed as it came.
pub fn reply_header(request: &[u8]) -> Bytes {
    if request.len() == TPDU_LEN {
        Bytes::copy_from_slice(&[request[0], request[3], request[4], request[1], request[2]])
    } else {
        Bytes::copy_from_slice(request)
    }
}

/// Authorisation codes are a counter scrambled into six base-36 characters: unique for
/// 36^6 approvals and not obviously sequential, as real codes are not.
pub fn auth_code(counter: u64) -> String {
    const ALPHABET: &[u8; 36] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    const SPACE: u64 = 36u64.pow(6);
    // A prime multiplier shares no factor with 36^6, so this permutes the space.
    const SCRAMBLE: u64 = 1_000_003;
    let mut v = (counter % SPACE) * SCRAMBLE % SPACE;
    let mut out = [b'0'; 6];
    for c in out.iter_mut().rev() {
        *c = ALPHABET[(v % 36) as usize];
        v /= 36;
    }
    out.iter().map(|&c| char::from(c)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use codec::builtin;

    fn view(mti: &str, pc: Option<&str>, amount: Option<u64>, nmi: Option<u64>) -> RequestView {
        RequestView {
            mti: Mti::parse(mti).unwrap(),
            processing_code: pc.map(String::from),
            amount_minor: amount,
            network_code: nmi,
        }
    }

    const PLAIN: Behaviour = Behaviour {
        ignore_echo: false,
        refuse_sign_on: false,
    };

    // Proves the test-card rules: last two digits of DE4 decide purchases and pre-auths.
    #[test]
    fn purchases_by_last_two_digits() {
        for mti in ["0100", "0200", "0201"] {
            let d = |a| decide(&view(mti, Some("000000"), Some(a), None), &PLAIN);
            assert_eq!(d(1000), Decision::Authorise);
            assert_eq!(d(12_34), Decision::Authorise);
            assert_eq!(d(10_51), Decision::Decline("51"));
            assert_eq!(d(10_05), Decision::Decline("05"));
            assert_eq!(d(10_91), Decision::Withhold);
            assert_eq!(d(91), Decision::Withhold);
        }
        let no_amount = view("0200", Some("000000"), None, None);
        assert_eq!(decide(&no_amount, &PLAIN), Decision::Decline("13"));
    }

    // Proves refunds, completions and reversals (and their repeats) are always approved.
    #[test]
    fn refunds_completions_reversals_approved() {
        let refund = view("0200", Some("200000"), Some(10_51), None);
        assert_eq!(decide(&refund, &PLAIN), Decision::Accept);
        for mti in ["0220", "0221"] {
            assert_eq!(
                decide(&view(mti, Some("000000"), Some(10_51), None), &PLAIN),
                Decision::Accept
            );
        }
        for mti in ["0400", "0401"] {
            let d = decide(&view(mti, Some("000000"), Some(10_91), None), &PLAIN);
            assert_eq!(d, Decision::Reverse);
            assert_eq!(d.response_code(), Some("00"));
        }
    }

    // Proves processing codes the bank does not support are declined rather than ignored.
    #[test]
    fn unsupported_processing_code_declined() {
        let cash = view("0200", Some("010000"), Some(1000), None);
        assert_eq!(decide(&cash, &PLAIN), Decision::Decline("12"));
        let preauth_refund = view("0100", Some("200000"), Some(1000), None);
        assert_eq!(decide(&preauth_refund, &PLAIN), Decision::Decline("12"));
        let none = view("0200", None, Some(1000), None);
        assert_eq!(decide(&none, &PLAIN), Decision::Decline("12"));
    }

    // Proves sign-on, sign-off and echo are answered 00, and the fault switches bite.
    #[test]
    fn network_management() {
        let net = |c| view("0800", None, None, Some(c));
        for c in [1, 2, 301] {
            assert_eq!(decide(&net(c), &PLAIN), Decision::Network("00"));
        }
        assert_eq!(decide(&net(999), &PLAIN), Decision::Network("12"));
        let faulty = Behaviour {
            ignore_echo: true,
            refuse_sign_on: true,
        };
        assert_eq!(decide(&net(1), &faulty), Decision::Network("91"));
        assert!(matches!(decide(&net(301), &faulty), Decision::Ignore(_)));
        assert_eq!(decide(&net(2), &faulty), Decision::Network("00"));
    }

    // Proves responses and unknown classes are never answered.
    #[test]
    fn responses_ignored() {
        for mti in ["0210", "0810", "0410", "0600"] {
            let d = decide(&view(mti, Some("000000"), Some(1000), Some(1)), &PLAIN);
            assert!(matches!(d, Decision::Ignore(_)), "{mti}: {d:?}");
        }
    }

    // Proves the answer echoes the listed elements, adds 39 and 38, and drops the rest.
    #[test]
    fn response_echoes_elements() {
        let d = builtin::bank_bcd();
        let mut b = MessageBuilder::new(d, Mti::FINANCIAL_REQUEST);
        b.set_str(2, "4111111111111111")
            .set_str(3, "000000")
            .set_str(4, "000000001000")
            .set_str(7, "1126120000")
            .set_str(11, "000042")
            .set_str(32, "123456")
            .set_str(37, "000000000777")
            .set_str(41, "TERM0001")
            .set_str(42, "MERCHANT0000001")
            .set_str(49, "978");
        let req = d.decode(b.encode().unwrap()).unwrap();
        let resp = d
            .decode(build_response(d, &req, "00", Some("AB12CD")).unwrap())
            .unwrap();
        assert_eq!(resp.mti(), Mti::FINANCIAL_RESPONSE);
        let fields: Vec<u8> = resp.fields().collect();
        assert_eq!(fields, [3, 4, 7, 11, 37, 38, 39, 41, 42, 49]);
        assert_eq!(resp.get_str(38).unwrap(), "AB12CD");
        assert_eq!(resp.get_str(39).unwrap(), "00");
        assert_eq!(resp.get_str(37).unwrap(), "000000000777");
        assert_eq!(resp.get_u64(4), Some(1000));

        let mut n = MessageBuilder::new(d, Mti::NETWORK_REQUEST);
        n.set_str(7, "1126120000")
            .set_str(11, "000001")
            .set_str(32, "123456")
            .set_str(70, "301");
        let req = d.decode(n.encode().unwrap()).unwrap();
        let resp = d
            .decode(build_response(d, &req, "00", None).unwrap())
            .unwrap();
        assert_eq!(resp.mti(), Mti::NETWORK_RESPONSE);
        assert_eq!(resp.fields().collect::<Vec<_>>(), [7, 11, 32, 39, 70]);
        assert_eq!(resp.get_u64(70), Some(301));
    }

    // Proves the TPDU's source and destination are swapped and other headers echoed.
    #[test]
    fn tpdu_swapped() {
        assert_eq!(
            &reply_header(&[0x60, 0x00, 0x01, 0x80, 0x02])[..],
            &[0x60, 0x80, 0x02, 0x00, 0x01]
        );
        assert_eq!(&reply_header(&[1, 2, 3])[..], &[1, 2, 3]);
        assert!(reply_header(&[]).is_empty());
    }

    // Proves authorisation codes are six alphanumerics and distinct across many approvals.
    #[test]
    fn auth_codes_distinct() {
        let codes: std::collections::HashSet<String> = (1..50_000).map(auth_code).collect();
        assert_eq!(codes.len(), 49_999);
        assert!(
            codes
                .iter()
                .all(|c| c.len() == 6 && c.bytes().all(|b| b.is_ascii_alphanumeric()))
        );
    }
}
