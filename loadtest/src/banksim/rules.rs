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
    /// Unable to locate the original (an inquiry about something never taken).
    pub const NOT_FOUND: &str = "25";
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
    /// DE39 for a reversal naming an RRN this bank never saw, as a real bank answers one
    /// (`25`, "unable to locate record"); None answers `00` like any other.
    pub unknown_reversal_code: Option<[u8; 2]>,
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
    /// A status inquiry (0600): answered from the record, see [`inquiry_answer`].
    Inquire,
    /// Not something this bank answers; the reason is for the log.
    Ignore(&'static str),
}

impl Decision {
    /// The DE39 the answer carries, if there is an answer and it does not depend on the
    /// record (an inquiry's does: [`inquiry_answer`]).
    pub fn response_code(&self) -> Option<&'static str> {
        match self {
            Decision::Network(c) | Decision::Decline(c) => Some(c),
            Decision::Authorise | Decision::Accept | Decision::Reverse => Some(code::APPROVED),
            Decision::Withhold | Decision::Inquire | Decision::Ignore(_) => None,
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
        b"0600" => Decision::Inquire,
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

/// What the bank's record says of a transaction a status inquiry names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    Approved,
    Reversed,
    Declined,
}

impl Standing {
    /// The DE48 `ST` value (docs/bank-protocol.md, "Status inquiries").
    pub fn as_str(&self) -> &'static str {
        match self {
            Standing::Approved => "APPROVED",
            Standing::Reversed => "REVERSED",
            Standing::Declined => "DECLINED",
        }
    }
}

/// DE39 and DE48 of the 0610 answering an inquiry about a transaction that stands as
/// `standing` (None: never taken, including the withheld `91`s): `00` with `ST`, or `25`
/// without DE48. DE48 is TLV as in the merchant contract: tag, 3-digit length, value.
pub fn inquiry_answer(standing: Option<Standing>) -> (&'static str, Option<Vec<u8>>) {
    match standing {
        None => (code::NOT_FOUND, None),
        Some(s) => {
            let v = s.as_str();
            (
                code::APPROVED,
                Some(format!("ST{:03}{v}", v.len()).into_bytes()),
            )
        }
    }
}

/// Elements a 0610 echoes (docs/bank-protocol.md): 7, 11 and 37.
const ECHO_STATUS: [u8; 3] = [7, 11, 37];

/// The 0610 answering the inquiry `req`, with DE39 and, when given, DE48.
pub fn build_status_response(
    dialect: &Dialect,
    req: &Message,
    response_code: &str,
    de48: Option<&[u8]>,
) -> Result<Bytes, EncodeError> {
    let values: Vec<(u8, Cow<'_, [u8]>)> = ECHO_STATUS
        .iter()
        .filter_map(|&n| req.get(n).map(|v| (n, v)))
        .collect();
    let mut b = MessageBuilder::new(dialect, req.mti().response());
    for (n, v) in &values {
        b.set(*n, v);
    }
    b.set(39, response_code.as_bytes());
    if let Some(d) = de48 {
        b.set(48, d);
    }
    b.encode()
}

/// A reversal advice the bank starts: 0420 (or its repeat 0421 when `repeat`) with DE7,
/// DE11, DE32 when known and DE37 naming the transaction the bank reversed.
pub fn build_reversal_advice(
    dialect: &Dialect,
    repeat: bool,
    de7: &str,
    stan: &str,
    acquirer_id: Option<&str>,
    rrn: &str,
) -> Result<Bytes, EncodeError> {
    let advice = Mti::from_digits(*b"0420").expect("digits");
    let mti = if repeat { advice.repeat() } else { advice };
    let mut b = MessageBuilder::new(dialect, mti);
    b.set_str(7, de7).set_str(11, stan).set_str(37, rrn);
    if let Some(a) = acquirer_id {
        b.set_str(32, a);
    }
    b.encode()
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
        unknown_reversal_code: None,
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
            unknown_reversal_code: None,
        };
        assert_eq!(decide(&net(1), &faulty), Decision::Network("91"));
        assert!(matches!(decide(&net(301), &faulty), Decision::Ignore(_)));
        assert_eq!(decide(&net(2), &faulty), Decision::Network("00"));
    }

    // Proves responses and unknown classes are never answered.
    #[test]
    fn responses_ignored() {
        for mti in ["0210", "0810", "0410", "0610", "0500"] {
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

    // Proves a 0600 (and its repeat) is an inquiry, answered from the record: 00 with ST
    // for what the bank took (TLV: tag, 3-digit length, value), 25 without DE48 otherwise.
    #[test]
    fn inquiries() {
        for mti in ["0600", "0601"] {
            let d = decide(&view(mti, None, None, None), &PLAIN);
            assert_eq!(d, Decision::Inquire);
            assert_eq!(d.response_code(), None);
        }
        assert_eq!(inquiry_answer(None), ("25", None));
        let st = |s| inquiry_answer(Some(s));
        assert_eq!(
            st(Standing::Approved),
            ("00", Some(b"ST008APPROVED".to_vec()))
        );
        assert_eq!(
            st(Standing::Reversed),
            ("00", Some(b"ST008REVERSED".to_vec()))
        );
        assert_eq!(
            st(Standing::Declined),
            ("00", Some(b"ST008DECLINED".to_vec()))
        );
        let (_, de48) = st(Standing::Reversed);
        let de48 = de48.unwrap();
        assert_eq!(
            codec::tlv::find(&de48, b"ST").unwrap(),
            Some(&b"REVERSED"[..])
        );
    }

    // Proves the 0610 echoes 7, 11 and 37 (not 32 or 90) and carries 39 and 48.
    #[test]
    fn status_response_elements() {
        let d = builtin::bank_bcd();
        let de90 = format!("0200000007112612000000000123456{}", "0".repeat(11));
        let mut b = MessageBuilder::new(d, Mti::STATUS_REQUEST);
        b.set_str(7, "1126120000")
            .set_str(11, "000042")
            .set_str(32, "123456")
            .set_str(37, "000000000777")
            .set_str(90, &de90);
        let req = d.decode(b.encode().unwrap()).unwrap();
        let resp = d
            .decode(build_status_response(d, &req, "00", Some(b"ST008APPROVED")).unwrap())
            .unwrap();
        assert_eq!(resp.mti(), Mti::STATUS_RESPONSE);
        assert_eq!(resp.fields().collect::<Vec<_>>(), [7, 11, 37, 39, 48]);
        assert_eq!(resp.get_str(39).unwrap(), "00");
        assert_eq!(resp.raw(48).unwrap(), b"ST008APPROVED");
        let none = d
            .decode(build_status_response(d, &req, "25", None).unwrap())
            .unwrap();
        assert_eq!(none.fields().collect::<Vec<_>>(), [7, 11, 37, 39]);
    }

    // Proves a reversal advice is a 0420 (0421 as a repeat) with 7, 11, 37 and 32 when known.
    #[test]
    fn reversal_advice_elements() {
        let d = builtin::bank_bcd();
        let m = d
            .decode(
                build_reversal_advice(
                    d,
                    false,
                    "1126120000",
                    "900001",
                    Some("123450"),
                    "000000000777",
                )
                .unwrap(),
            )
            .unwrap();
        assert_eq!(m.mti().as_str(), "0420");
        assert!(m.mti().is_request());
        assert_eq!(m.fields().collect::<Vec<_>>(), [7, 11, 32, 37]);
        assert_eq!(m.get_str(11).unwrap(), "900001");
        assert_eq!(m.get_str(37).unwrap(), "000000000777");
        let r = d
            .decode(
                build_reversal_advice(d, true, "1126120000", "900001", None, "000000000777")
                    .unwrap(),
            )
            .unwrap();
        assert_eq!(r.mti().as_str(), "0421");
        assert_eq!(r.fields().collect::<Vec<_>>(), [7, 11, 37]);
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
